"""OpenLineage: START and COMPLETE / FAIL events per run, through the official client, to a loopback endpoint
that answers as Marquez's ``POST /api/v1/lineage`` does; each event validated against the OpenLineage JSON
schema (the spec's own files, in tests/data/openlineage-spec); no secret in any event; lineage that cannot be
delivered is a warning and never fails the sync."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from sqlalchemy.engine import make_url

from sync import api
from sync.config import parse_config
from sync.dev.receiver import Receiver
from sync.lineage import PARENT_ENV, run_uuid
from tests.warehouses import postgres_warehouse, vip_and_plan_job

pytestmark = pytest.mark.postgres

SPEC = Path(__file__).parent / "data" / "openlineage-spec"
SECRET = "hook-secret-51d2"


class Marquez:
    """A loopback stand-in for Marquez's lineage API: ``POST /api/v1/lineage`` takes one event as JSON and
    answers 201; ``status`` makes it answer something else."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 201
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/api/v1/lineage":
                    self.send_response(404)
                elif owner.status == 201:
                    owner.events.append(json.loads(body))
                    owner.headers.append(dict(self.headers))
                    self.send_response(201)
                else:
                    self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Marquez:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def marquez() -> Iterator[Marquez]:
    with Marquez() as running:
        yield running


def _schemas() -> tuple[Draft202012Validator, dict[str, Draft202012Validator]]:
    """A validator of the core event, and one per facet key (a facet file's top-level ``properties`` names it)."""
    core = json.loads((SPEC / "OpenLineage.json").read_text())
    facets = [json.loads(path.read_text()) for path in sorted((SPEC / "facets").glob("*.json"))]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in [core, *facets]
    )
    by_key = {key: Draft202012Validator(schema, registry=registry) for schema in facets for key in schema["properties"]}
    return Draft202012Validator(core, registry=registry), by_key


CORE, FACETS = _schemas()


def validate(event: dict[str, Any]) -> None:
    CORE.validate(event)
    groups = [event["run"].get("facets"), event["job"].get("facets")]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        groups += [dataset.get("facets"), dataset.get("outputFacets"), dataset.get("inputFacets")]
    for group in groups:
        for key, facet in (group or {}).items():
            assert key in FACETS, f"no schema for the facet {key}"
            FACETS[key].validate({key: facet})


def lineage_config(postgres_url: str, receiver: Receiver, lineage: dict[str, Any], tmp_path: Path) -> Any:
    warehouse = postgres_warehouse(postgres_url)
    warehouse.set_members("vip", ["u1", "u2"])
    warehouse.set_trait("plan", {"u1": 3.0})
    raw = vip_and_plan_job(warehouse, f"{receiver.url}?token={SECRET}")
    return parse_config(
        {"state_url": f"sqlite:///{tmp_path / 'state.db'}", "lineage": lineage, "jobs": [raw]}, {}, tmp_path
    )


def test_a_run_sends_start_and_complete_events_that_the_spec_accepts(
    postgres_url: str, marquez: Marquez, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = str(uuid.uuid4())
    monkeypatch.setenv(PARENT_ENV, f"airflow/nightly.sync_contacts/{parent}")
    with Receiver() as receiver:
        config = lineage_config(postgres_url, receiver, {"url": marquez.url, "namespace": "prod"}, tmp_path)
        result = api.run(config, "contacts")
    assert result.ok and result.counts["delivered"] == 2
    assert [e["eventType"] for e in marquez.events] == ["START", "COMPLETE"]
    for event in marquez.events:
        validate(event)
    start, complete = marquez.events
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert uuid.UUID(complete["run"]["runId"])
    assert complete["job"] == {**complete["job"], "namespace": "prod", "name": "contacts"}
    assert complete["job"]["facets"]["jobType"]["processingType"] == "BATCH"
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == parent
    parent_job = complete["run"]["facets"]["parent"]["job"]
    assert (parent_job["namespace"], parent_job["name"]) == ("airflow", "nightly.sync_contacts")
    url = make_url(postgres_url)
    schema = str(url.query["options"]).split("search_path=")[1]
    namespace = f"postgres://{url.host}:{url.port or 5432}"
    assert sorted((d["namespace"], d["name"]) for d in complete["inputs"]) == [
        (namespace, f"{url.database}.{schema}.members"),
        (namespace, f"{url.database}.{schema}.trait_plan"),
    ]  # the queries name no schema: the URL's search_path says which
    (output,) = complete["outputs"]
    assert (output["namespace"], output["name"]) == (receiver.url.rsplit("/", 1)[0], "contacts")
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 2
    fields = output["facets"]["columnLineage"]["fields"]
    assert [(f["namespace"], f["name"], f["field"]) for f in fields["vip"]["inputFields"]] == [
        (namespace, f"{url.database}.{schema}.members", "user_id")
    ]
    assert fields["plan"]["inputFields"][0]["field"] == "value"
    sent = json.dumps(marquez.events)
    assert SECRET not in sent and "token=" not in sent and "postgres@" not in sent


def test_a_failed_run_sends_fail_with_its_error(postgres_url: str, marquez: Marquez, tmp_path: Path) -> None:
    with Receiver() as receiver:
        config = lineage_config(postgres_url, receiver, {"url": marquez.url}, tmp_path)
    # the receiver is gone: every delivery fails
    job = config.jobs[0]
    job = job.model_copy(update={"destination": job.destination.model_copy(update={"max_attempts": 1})})
    result = api.run(config.model_copy(update={"jobs": (job,)}), "contacts")
    assert not result.ok
    assert [e["eventType"] for e in marquez.events] == ["START", "FAIL"]
    for event in marquez.events:
        validate(event)
    failure = marquez.events[1]["run"]["facets"]["errorMessage"]
    assert failure["programmingLanguage"] == "python" and failure["message"] == result.error
    assert SECRET not in json.dumps(marquez.events)
    assert marquez.events[1]["run"]["runId"] == run_uuid(_installation(config), result.run_id)


def _installation(config: Any) -> str:
    from sync.store import Store

    store = Store.open(config.state_url)
    try:
        return store.installation_id()
    finally:
        store.close()


@pytest.mark.parametrize("trouble", ["down", 500])
def test_lineage_that_cannot_be_delivered_is_a_warning(
    postgres_url: str, marquez: Marquez, tmp_path: Path, caplog: pytest.LogCaptureFixture, trouble: Any
) -> None:
    url = "http://127.0.0.1:9" if trouble == "down" else marquez.url
    marquez.status = 500 if trouble == 500 else 201
    with Receiver() as receiver:
        config = lineage_config(postgres_url, receiver, {"url": url, "api_key": "ol-key-77", "timeout": "2s"}, tmp_path)
        begun = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="sync.lineage"):
            result = api.run(config, "contacts")
        took = time.monotonic() - begun
    assert result.ok and result.counts["delivered"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "sync.lineage" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("could not send the run's OpenLineage" in w for w in warnings)
    assert "ol-key-77" not in caplog.text
    assert took < 20


def test_the_api_key_is_sent_as_a_bearer_token_and_the_environment_configures_lineage(
    postgres_url: str, marquez: Marquez, tmp_path: Path
) -> None:
    env = {"OPENLINEAGE_URL": marquez.url, "OPENLINEAGE_NAMESPACE": "from-env", "OPENLINEAGE_API_KEY": "ol-key-9"}
    config = parse_config(
        {"jobs": [{"name": "j", "audiences": [{"name": "A", "file": __file__}],
                   "destination": {"type": "chartmogul", "webhook_url": "https://example.com/h"}}]},
        env, tmp_path,
    )  # fmt: skip
    lineage = config.jobs[0].lineage
    assert lineage is not None and lineage.url == marquez.url and lineage.namespace == "from-env"
    with Receiver() as receiver:
        config = lineage_config(postgres_url, receiver, {"url": marquez.url, "api_key": "ol-key-9"}, tmp_path)
        assert api.run(config, "contacts").ok
    assert marquez.headers[0]["Authorization"] == "Bearer ol-key-9"
    assert "ol-key-9" not in json.dumps(config.jobs[0].definition())


def test_a_dry_run_sends_no_lineage(postgres_url: str, marquez: Marquez, tmp_path: Path) -> None:
    with Receiver() as receiver:
        config = lineage_config(postgres_url, receiver, {"url": marquez.url}, tmp_path)
        assert api.run(config, "contacts", dry_run=True).ok
    assert marquez.events == []
