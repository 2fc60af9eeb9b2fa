"""OpenLineage events for each run (``lineage:`` in jobs.yaml, or OPENLINEAGE_URL), sent through the official
``openlineage-python`` client (``audience-sync[lineage]``): START when a run begins, then COMPLETE, FAIL or ABORT.

Inputs are the warehouse tables the job's queries read (parsed in the warehouse's dialect, named by
OpenLineage's naming conventions from the URL's host, port and database, never its credentials) and its source
files; the output is the destination (its host, and Segment's space; never a webhook path, key or write key).
Facets: ``jobType`` (BATCH), ``outputStatistics`` (rows: updates delivered), ``columnLineage`` (each audience or
trait key from the columns of its query), ``errorMessage`` on failure, and ``parent`` when an orchestrator
passes one (``OPENLINEAGE_PARENT_ID`` = ``namespace/name/run-uuid``, or ``api.run(..., parent=...)``).

Lineage that cannot be delivered is a warning, never a failed sync; dry runs send none.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sync.config import JobConfig, LineageConfig
from sync.config.destinations import ChartMogulApiConfig, SegmentConfig
from sync.redact import public_label
from sync.tables import ColumnSource, Reads, TableName, job_reads

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/audience-sync/audience-sync"
PARENT_ENV = "OPENLINEAGE_PARENT_ID"
# Run statuses as OpenLineage's event types.
EVENT_TYPES = {"succeeded": "COMPLETE", "partial": "COMPLETE", "failed": "FAIL", "blocked": "FAIL"}
# Each warehouse's default schema, for a table a query names without one.
_DEFAULT_SCHEMAS = {"postgresql": "public", "redshift": "public", "duckdb": "main", "sqlite": "main"}


@dataclass(frozen=True)
class ParentRun:
    """The orchestrator's run that started this one (OpenLineage's ``parent`` facet)."""

    namespace: str
    name: str
    run_id: str

    @classmethod
    def parse(cls, text: str) -> ParentRun | None:
        """``namespace/name/run-uuid`` (what OPENLINEAGE_PARENT_ID holds); None when it is not that."""
        namespace, _, rest = text.strip().partition("/")
        name, _, run_id = rest.rpartition("/")
        try:
            uuid.UUID(run_id)
        except ValueError:
            return None
        return cls(namespace, name, run_id) if namespace and name else None


def run_uuid(installation: str, run_id: int) -> str:
    """The run's OpenLineage id: the same for its START and its end, and for nobody else's run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"audience-sync:{installation}:{run_id}"))


@dataclass(frozen=True)
class Dataset:
    namespace: str
    name: str


def warehouse_namespace(url: str) -> tuple[str, str, str]:
    """A warehouse URL as OpenLineage's dataset namespace (scheme, host and port; no user, password or query),
    with its database and default schema, the parts a table a query names without them takes."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "unknown", "", ""
    backend = parsed.get_backend_name()
    database = parsed.database or ""
    schema = _DEFAULT_SCHEMAS.get(backend, "")
    options = str(parsed.query.get("options", ""))
    if backend == "postgresql" and "search_path=" in options:  # the schema a bare table name means
        schema = options.split("search_path=", 1)[1].split()[0].split(",")[0].strip('"')
    if backend in ("sqlite", "duckdb"):
        return "file", "", ""  # a local file: its path is the name
    host = parsed.host or "localhost"
    scheme = {"postgresql": "postgres", "mariadb": "mysql"}.get(backend, backend)
    if backend == "snowflake":
        return f"snowflake://{host.removesuffix('.snowflakecomputing.com')}", database.split("/")[0], schema
    if backend == "bigquery":
        return "bigquery", host, schema
    port = f":{parsed.port}" if parsed.port else {"postgres": ":5432", "mysql": ":3306"}.get(scheme, "")
    if backend == "trino":
        return f"trino://{host}{port}", database.split("/")[0], database.split("/")[1] if "/" in database else ""
    return f"{scheme}://{host}{port}", database, schema


def input_dataset(url: str, table: TableName) -> Dataset:
    namespace, database, schema = warehouse_namespace(url)
    if namespace == "file":
        path = make_url(url).database or ""
        return Dataset("file", f"{path}/{table.qualified()}" if path else table.qualified())
    if namespace.startswith("mysql"):
        return Dataset(namespace, ".".join(p for p in (table.schema or database, table.name) if p))
    parts = (table.catalog or database, table.schema or schema, table.name)
    return Dataset(namespace, ".".join(p for p in parts if p))


def output_dataset(job: JobConfig) -> Dataset:
    """The destination as a dataset: its host and what it writes; never its secret path, key or write key."""
    destination = job.destination
    if isinstance(destination, ChartMogulApiConfig):
        return Dataset(public_label(destination.base_url), f"{destination.target}s")
    if isinstance(destination, SegmentConfig):
        return Dataset(public_label(destination.endpoint), job.space_id or "batch")
    url = destination.webhook_url.get_secret_value()
    return Dataset(public_label(url), "customers" if job.subject == "account" else "contacts")


class Lineage:
    """The events of one run of one job, sent as the run goes; every failure to send is a warning."""

    def __init__(self, job: JobConfig, config: LineageConfig, parent: ParentRun | None = None) -> None:
        self.job = job
        self.config = config
        self.parent = parent
        self._client: Any = None
        self._run: str | None = None

    @cached_property
    def _reads(self) -> Reads:
        """What the job reads, parsed once for the run's events."""
        return job_reads(self.job)

    def start(self, installation: str, run_id: int, at: datetime) -> None:
        self._run = run_uuid(installation, run_id)
        self._emit("START", at)

    def finish(self, status: str, error: str | None, delivered: int, at: datetime) -> None:
        if self._run is not None:
            self._emit(EVENT_TYPES.get(status, "ABORT"), at, error, delivered)

    def _emit(self, kind: str, at: datetime, error: str | None = None, delivered: int | None = None) -> None:
        try:
            self._emitter().emit(self._event(kind, at, error, delivered))
        except ImportError:
            log.warning(
                "lineage is configured but openlineage-python is not installed: pip install 'audience-sync[lineage]'",
                extra={"job": self.job.name},
            )
        except Exception as exc:  # the client's transport, a refused connection, an answer of 4xx/5xx
            log.warning(
                "could not send the run's OpenLineage %s event to %s: %s",
                kind,
                public_label(self.config.url),
                _reason(exc),
                extra={"event": "lineage_failed", "job": self.job.name},
            )

    def _emitter(self) -> Any:
        if self._client is None:
            from openlineage.client import OpenLineageClient
            from openlineage.client.transport.http import (
                ApiKeyTokenProvider,
                HttpConfig,
                HttpTransport,
                TokenProvider,
            )

            key = self.config.api_key
            http = HttpConfig(
                url=self.config.url,
                endpoint=self.config.endpoint,
                timeout=self.config.timeout.total_seconds(),
                auth=ApiKeyTokenProvider({"api_key": key.get_secret_value()}) if key else TokenProvider({}),
                retry={"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.2, "status_forcelist": [502, 503]},
            )
            self._client = OpenLineageClient(transport=HttpTransport(http))
        return self._client

    def _event(self, kind: str, at: datetime, error: str | None, delivered: int | None) -> Any:
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import column_lineage_dataset as columns
        from openlineage.client.facet_v2 import (
            error_message_run,
            job_type_job,
            output_statistics_output_dataset,
            parent_run,
        )

        facets: dict[str, Any] = {}
        if kind == "FAIL" and error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="python")
        if self.parent is not None:
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=self.parent.run_id),
                job=parent_run.Job(namespace=self.parent.namespace, name=self.parent.name),
            )
        outputs_facets: dict[str, Any] = {}
        if delivered is not None:
            outputs_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=delivered
            )

        reads = self._reads
        url = self.job.source.url or ""
        inputs = [input_dataset(url, table) for table in reads.tables]
        inputs += [Dataset("file", path) for path in reads.files]
        output = output_dataset(self.job)
        fields = {
            key: columns.Fields(
                inputFields=[_input_field(url, source) for source in sources],
                transformationType="INDIRECT" if sources else None,
            )
            for key, sources in reads.columns.items()
            if sources
        }
        dataset_facets: dict[str, Any] = (
            {"columnLineage": columns.ColumnLineageDatasetFacet(fields=fields)} if fields else {}
        )
        return RunEvent(
            eventType=getattr(RunState, kind),
            eventTime=at.isoformat(),
            run=Run(runId=self._run or "", facets=facets),
            job=Job(
                namespace=self.config.namespace,
                name=self.job.name,
                facets={
                    "jobType": job_type_job.JobTypeJobFacet(
                        processingType="BATCH", integration="AUDIENCE_SYNC", jobType="JOB"
                    )
                },
            ),
            inputs=[InputDataset(namespace=d.namespace, name=d.name) for d in dict.fromkeys(inputs)],
            outputs=[
                OutputDataset(
                    namespace=output.namespace,
                    name=output.name,
                    facets=dataset_facets,
                    outputFacets=outputs_facets,
                )
            ],
            producer=PRODUCER,
        )


def _input_field(url: str, source: ColumnSource) -> Any:
    from openlineage.client.facet_v2 import column_lineage_dataset

    dataset = input_dataset(url, source.table)
    return column_lineage_dataset.InputField(namespace=dataset.namespace, name=dataset.name, field=source.column)


def parent_from_env() -> ParentRun | None:
    text = os.environ.get(PARENT_ENV)
    return ParentRun.parse(text) if text else None


def _reason(exc: BaseException) -> str:
    """The error's first line, without any URL path or query that could carry a key."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first[:200]}"
