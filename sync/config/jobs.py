"""A job and what it is made of (source, audiences and traits, destination, guard, schedule), the outline
the control commands read, alert targets, and the whole configuration."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from sync.config.destinations import DestinationConfig
from sync.config.values import (
    DEFAULT_STATE_URL,
    MAX_KEY,
    Duration,
    FrozenModel,
    JobName,
    SecretUrl,
    canonical_url,
    redact_url,
)
from sync.errors import ConfigError
from sync.keys import snake_case
from sync.redact import public_label

# Warehouses the warehouse engine runs on (backend names of SQLAlchemy URLs): PostgreSQL, DuckDB and Spark
# (hive://, a Spark cluster's Thrift server) are tested against real ones, the others compiled by their own
# dialects (sync.snapshot.pushdown); what each can do is decided in sync.snapshot.abilities.
WAREHOUSE_DIALECTS = ("postgresql", "duckdb", "snowflake", "bigquery", "redshift", "trino", "hive", "databricks")


_SCHEMA_NAME = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"


class SourceConfig(FrozenModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    url: str | None = None
    profiles: str | None = None  # a query against url
    profiles_query_file: str | None = None  # or that query in a .sql file, relative to jobs.yaml
    profiles_file: str | None = None  # or a CSV / Parquet file with the profile columns
    profiles_ref: str | None = Field(default=None, min_length=1)  # or a dbt model, through dbt.manifest
    # Where the diff runs: ``local`` (in this process, over every row read out) or ``warehouse`` (inside
    # the warehouse, reading out only the subjects that changed; sync.snapshot.warehouse).
    engine: Literal["local", "warehouse"] = "local"
    # The warehouse schema (BigQuery: dataset) the warehouse engine keeps its tables in.
    schema_: str = Field(default="audience_sync", alias="schema", pattern=_SCHEMA_NAME)
    # Statements run on every connection to the warehouse before anything else, as its owner wants the
    # session: SET work_mem / statement_timeout, ALTER SESSION SET QUERY_TAG, USE WAREHOUSE …
    session: tuple[str, ...] = Field(default=(), max_length=20)

    @field_validator("url")
    @classmethod
    def _canonical(cls, url: str | None) -> str | None:
        return canonical_url(url) if url else url

    @field_validator("session")
    @classmethod
    def _statements(cls, session: tuple[str, ...]) -> tuple[str, ...]:
        for position, statement in enumerate(session):
            if not statement.strip():
                raise ValueError(f"statement {position} is blank")
        return session

    def redacted_url(self) -> str:
        return redact_url(self.url) if self.url else "(none)"


class ComputationConfig(FrozenModel):
    """An audience (``query``/``file`` yields member ``user_id`` rows) or a trait (``user_id, value`` rows)."""

    name: str = Field(min_length=1)
    key: str | None = None
    # Engage's computation_id (``aud_…`` / ``tra_…``), to keep the one a Segment workspace already knows;
    # a stable one is derived from the job and the key otherwise.
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$", max_length=MAX_KEY)
    query: str | None = None
    query_file: str | None = None  # the query in a .sql file, relative to jobs.yaml (read when the file loads)
    ref: str | None = Field(default=None, min_length=1)  # or a dbt model, through dbt.manifest (its relation)
    file: str | None = None  # or a CSV / Parquet data file

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: str | None) -> str | None:
        if key is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_]*", key):
            raise ValueError("a key is lower-case letters, digits and underscores, e.g. vip_customers")
        return key

    @property
    def resolved_key(self) -> str:
        return self.key or snake_case(self.name)


class GuardConfig(FrozenModel):
    """The mass-change guard (see ``sync.plan.guard``); ``run --force`` overrides it for one run."""

    enabled: bool = True
    exit_share: float = Field(
        default=0.5, gt=0, le=1, allow_inf_nan=False
    )  # more than this share of an audience exiting stops the run
    min_members: int = Field(default=100, ge=1)  # ... for audiences of at least this many acknowledged members
    block_empty: bool = True  # an audience whose snapshot comes back empty where it had members stops the run


class ScheduleConfig(FrozenModel):
    """Either ``every`` (+ ``jitter``), counted from the end of the last run, or a ``cron`` expression."""

    every: Duration = timedelta(hours=2)
    jitter: Duration = timedelta(hours=1)
    cron: str | None = None
    timezone: str = "UTC"
    enabled: bool = True
    # A query against source.url returning one value (a watermark, such as max(updated_at)): a scheduled run
    # whose watermark equals the one of the last run that succeeded is skipped, unless that run is older than
    # ``at_least``.
    when_changed: str | None = Field(default=None, min_length=1)
    at_least: Duration | None = None

    @field_validator("every")
    @classmethod
    def _positive(cls, every: timedelta) -> timedelta:
        if every.total_seconds() <= 0:
            raise ValueError("must be longer than zero")
        return every

    @field_validator("at_least")
    @classmethod
    def _positive_at_least(cls, at_least: timedelta | None) -> timedelta | None:
        if at_least is not None and at_least.total_seconds() <= 0:
            raise ValueError("must be longer than zero")
        return at_least

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (use an IANA name such as Europe/Berlin)") from None
        return zone

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is not None:
            try:
                CronTrigger.from_crontab(cron, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"not a valid cron expression: {exc}") from None
        return cron


class WritebackConfig(FrozenModel):
    """The sync log in the warehouse (sync.writeback): each run's row and changes appended to ``runs`` and
    ``changes`` tables in ``schema`` of ``url`` (the job's ``source.url`` when not given)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    url: str | None = None
    schema_: str = Field(default="audience_sync_log", alias="schema", pattern=_SCHEMA_NAME)

    @field_validator("url")
    @classmethod
    def _canonical(cls, url: str | None) -> str | None:
        return canonical_url(url) if url else url


class LineageConfig(FrozenModel):
    """Where OpenLineage events go (sync.lineage): an OpenLineage HTTP endpoint such as Marquez's."""

    url: str = Field(pattern=r"^https?://[^\s/]+")
    namespace: str = Field(default="audience-sync", min_length=1, max_length=200)
    endpoint: str = "api/v1/lineage"
    api_key: SecretStr | None = None
    timeout: Duration = timedelta(seconds=5)


class DbtConfig(FrozenModel):
    """The dbt project whose models ``ref`` names: its compiled ``manifest.json``, relative to jobs.yaml."""

    manifest: str = Field(min_length=1)


# Segment lets a destination take at most 50 mappings; enrichment adds at most as many traits here.
MAX_ENRICHED = 50
EnrichedColumn = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=MAX_KEY)]


class JobConfig(FrozenModel):
    name: JobName
    # What the job syncs: users (identify and track calls) or accounts (group calls, by group_id).
    subject: Literal["user", "account"] = "user"
    space_id: str | None = Field(default=None, max_length=MAX_KEY)
    source: SourceConfig = SourceConfig()
    audiences: tuple[ComputationConfig, ...] = ()
    traits: tuple[ComputationConfig, ...] = ()
    destination: DestinationConfig
    schedule: ScheduleConfig = ScheduleConfig()
    guard: GuardConfig = GuardConfig()
    audit_retention_days: int = Field(default=30, ge=1)  # per-update audit rows older than this are pruned
    # Engage's trait enrichment: extra profile columns that travel as traits on every call of the subject.
    enrich: tuple[EnrichedColumn, ...] = Field(default=(), max_length=MAX_ENRICHED)
    # A change of a profile field or an enriched column alone is a reason to send (Engage: it is not).
    send_profile_changes: bool = False
    writeback: WritebackConfig | None = None
    # The top level's ``lineage`` (or OPENLINEAGE_URL), copied into each job when the configuration loads.
    lineage: LineageConfig | None = None

    def audience_keys(self) -> list[str]:
        return [audience.resolved_key for audience in self.audiences]

    def trait_keys(self) -> list[str]:
        return [trait.resolved_key for trait in self.traits]

    def definition(self) -> dict[str, Any]:
        """The job as configured, for the audit trail: every setting, secrets left out (a secret URL shows
        its scheme and host only, a key shows that it is set, a warehouse URL hides its password)."""
        shown = _public(self.model_dump(mode="python", by_alias=True, exclude_defaults=False))
        if self.source.url:
            shown["source"]["url"] = self.source.redacted_url()
        if self.writeback is not None and self.writeback.url:
            shown["writeback"]["url"] = redact_url(self.writeback.url)
        if self.lineage is not None:
            shown["lineage"]["url"] = public_label(self.lineage.url)
        return cast(dict[str, Any], shown)


def _public(value: Any) -> Any:
    """``value`` as JSON-ready data with every secret replaced by what may be said of it."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return public_label(secret) if "://" in secret else "(set)"
    if isinstance(value, dict):
        return {str(k): _public(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, Path):
        return str(value)
    return value


class JobOutline(BaseModel):
    """What the control and audit commands need of a job: its name, schedule and retention, not its secrets."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: JobName
    schedule: ScheduleConfig = ScheduleConfig()
    audit_retention_days: int = Field(default=30, ge=1)


class Outline(FrozenModel):
    state_url: str
    jobs: tuple[JobOutline, ...] = ()

    def job(self, name: str) -> JobOutline:
        return _named(self.jobs, name)


# What an alert can be about (README, Operations).
ALERT_CONDITIONS = ("failed", "unreachable", "blocked", "failed_share", "failing", "user_count_change")


class NotifyConfig(FrozenModel):
    """Where alerts go: a generic JSON webhook, or a Slack-compatible incoming webhook (``{"text": ...}``)."""

    type: Literal["webhook", "slack"]
    url: SecretUrl  # as secret as a destination's webhook URL
    jobs: tuple[str, ...] = ()  # only these jobs; all when empty
    on: tuple[Literal["failed", "unreachable", "blocked", "failed_share", "failing", "user_count_change"], ...] = (
        ALERT_CONDITIONS  # type: ignore[assignment]
    )
    failed_share: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)  # of a run's answered updates
    user_count_change: float = Field(default=0.5, gt=0, le=100, allow_inf_nan=False)  # vs the last 5 runs' median
    timeout: Duration = timedelta(seconds=5)


_Job = TypeVar("_Job", JobConfig, JobOutline)


class Config(FrozenModel):
    state_url: str = DEFAULT_STATE_URL
    jobs: tuple[JobConfig, ...] = ()
    notify: tuple[NotifyConfig, ...] = ()
    lineage: LineageConfig | None = None
    dbt: DbtConfig | None = None
    base_dir: Path = Path(".")

    def job(self, name: str) -> JobConfig:
        return _named(self.jobs, name)


def _named(jobs: tuple[_Job, ...], name: str) -> _Job:
    """The job called ``name``; a ConfigError listing the jobs there are otherwise."""
    for job in jobs:
        if job.name == name:
            return job
    known = ", ".join(job.name for job in jobs) or "none"
    raise ConfigError([f"no job named {name!r} in the configuration (jobs: {known})"])
