"""The sync log in the warehouse: each run's row and changes appended to ``<schema>.runs`` and ``.changes``
(created if missing), in PostgreSQL through COPY and in other warehouses through inserts; a retried write-back
never duplicates; one that fails is recorded and done by the next run, and never fails the sync."""

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import create_engine, text

from sync import api
from sync.audit.display import print_run_detail
from sync.audit.queries import CHANGE_FIELDS, run_detail
from sync.clock import utc_now
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.run.writeback import Tables, write_run
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config
from tests.warehouses import postgres_warehouse, vip_and_plan_job

pytestmark = pytest.mark.postgres

WEBHOOK_SECRET = "wh-secret-8c1f"


@pytest.fixture
def log_schema(postgres_url: str) -> Iterator[str]:
    """A schema name for the sync log, dropped after the test (the write-back creates it)."""
    name = f"log_{uuid.uuid4().hex[:10]}"
    yield name
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    engine.dispose()


def rows(url: str, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_each_run_and_its_changes_land_in_the_postgresql_warehouse(
    postgres_url: str, log_schema: str, state_url: str
) -> None:
    """On either state store: its run's changes are read through its driver's own cursor."""
    warehouse = postgres_warehouse(postgres_url)
    warehouse.set_members("vip", ["u1", "u2", "tab\there", "back\\slash\nline"])
    warehouse.set_trait("plan", {"u1": 3.5, "u2": 7.0})
    state = state_url
    with Receiver() as receiver:
        raw = vip_and_plan_job(warehouse, f"{receiver.url}?key={WEBHOOK_SECRET}")
        raw["writeback"] = {"schema": log_schema}
        config = make_config(state, [raw])
        first = api.run(config, "contacts")
        warehouse.set_members("vip", ["u1", "tab\there", "back\\slash\nline", "u3"])
        second = api.run(config, "contacts")
    assert first.ok and second.ok
    runs = rows(postgres_url, f"SELECT * FROM {log_schema}.runs ORDER BY run_id")
    assert [(r["run_id"], r["status"], r["delivered"]) for r in runs] == [
        (first.run_id, "succeeded", 4),
        (second.run_id, "succeeded", 2),
    ]
    assert runs[0]["users"] == first.counts["users"] and runs[0]["duration_s"] is not None
    written = rows(postgres_url, f"SELECT * FROM {log_schema}.changes ORDER BY run_id, user_id, key")
    expected = sorted(
        (c for run in (first, second) for c in api.changes(config, run.run_id)),
        key=lambda c: (c["run_id"], c["user_id"], c["key"]),
    )
    assert len(written) == len(expected) == 8
    for got, want in zip(written, expected, strict=True):
        assert {f: got[f] for f in ("run_id", "user_id", "key", "change", "message_id", "status", "http_status")} == {
            f: want[f] for f in ("run_id", "user_id", "key", "change", "message_id", "status", "http_status")
        }
        assert (json.loads(got["old"]) if got["old"] else None, json.loads(got["new"])) == (want["old"], want["new"])
        assert got["finished_at"].isoformat().replace("+00:00", "Z")[:19] == want["finished_at"][:19]
    assert {c["user_id"] for c in written} >= {"tab\there", "back\\slash\nline"}  # kept whole through COPY
    assert {c["job"] for c in written} == {"contacts"} and len({c["installation"] for c in written}) == 1
    everything = json.dumps(runs + written, default=str)
    assert WEBHOOK_SECRET not in everything and "?key=" not in everything
    store = Store.open(state)
    try:
        assert run_detail(store, second.run_id)["writeback"]["error"] is None
        assert store.unwritten_runs("contacts", 10) == []
    finally:
        store.close()
    assert set(CHANGE_FIELDS) - {"error"} <= set(written[0])


def test_a_retried_write_back_replaces_the_run_instead_of_adding_to_it(
    postgres_url: str, log_schema: str, tmp_path: Path, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    warehouse.set_members("vip", [f"u{i}" for i in range(30)])
    state = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with Receiver() as receiver:
            raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
            raw["writeback"] = {"url": postgres_url, "schema": log_schema}
            job = make_config("sqlite://", [raw]).jobs[0]
            report = Runner(state, sleep=sleep).run(job)
        run = state.run(report.run_id)
        assert run is not None and run.written_back is not None
        engine = create_engine(postgres_url)
        tables = Tables(log_schema, "postgresql")
        for _ in range(2):
            assert write_run(engine, tables, state, state.installation_id(), run, utc_now()) == 30
        engine.dispose()
    finally:
        state.close()
    assert rows(postgres_url, f"SELECT count(*) AS n FROM {log_schema}.changes")[0]["n"] == 30
    assert rows(postgres_url, f"SELECT count(*) AS n FROM {log_schema}.runs")[0]["n"] == 1


def test_a_failed_write_back_is_recorded_and_done_by_the_next_run(
    postgres_url: str,
    log_schema: str,
    tmp_path: Path,
    warehouse: Warehouse,
    sleep: RecordingSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    warehouse.set_members("vip", ["u1", "u2"])
    state = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with Receiver() as receiver:
            raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
            raw["writeback"] = {"url": "postgresql://postgres:hunter2@127.0.0.1:1/test", "schema": log_schema}
            down = make_config("sqlite://", [raw]).jobs[0]
            with caplog.at_level(logging.WARNING):
                first = Runner(state, sleep=sleep).run(down)
            assert first.status == "succeeded" and first.delivered == 2  # the sync is not the write-back's
            assert state.acknowledged("contacts", "u2") is not None
            detail = run_detail(state, first.run_id)["writeback"]
            assert detail["written_at"] is None and detail["error"]
            shown = Console(record=True, width=200)
            print_run_detail(shown, run_detail(state, first.run_id))
            assert "not written yet (the next run tries again): " in shown.export_text()
            assert "hunter2" not in detail["error"] and "hunter2" not in caplog.text
            assert any("could not write run" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
            raw["writeback"]["url"] = postgres_url
            warehouse.set_members("vip", ["u1"])
            second = Runner(state, sleep=sleep).run(make_config("sqlite://", [raw]).jobs[0])
        assert second.status == "succeeded"
        assert run_detail(state, first.run_id)["writeback"]["error"] is None
    finally:
        state.close()
    runs = rows(postgres_url, f"SELECT run_id FROM {log_schema}.runs ORDER BY run_id")
    assert [r["run_id"] for r in runs] == [first.run_id, second.run_id]
    changes = rows(postgres_url, f"SELECT run_id, change FROM {log_schema}.changes ORDER BY run_id, user_id")
    assert [(c["run_id"], c["change"]) for c in changes] == [
        (first.run_id, "entered"),
        (first.run_id, "entered"),
        (second.run_id, "exited"),
    ]


def test_a_sqlite_warehouse_gets_prefixed_tables(tmp_path: Path, warehouse: Warehouse, sleep: RecordingSleep) -> None:
    warehouse.set_members("vip", ["u1", "u2"])
    with Receiver() as receiver:
        raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
        raw["writeback"] = {}
        config = make_config(f"sqlite:///{tmp_path / 'state.db'}", [raw])
        assert api.run(config, "contacts").ok
    found = rows(warehouse.url, "SELECT user_id, change, new FROM audience_sync_log_changes ORDER BY user_id")
    assert found == [
        {"user_id": "u1", "change": "entered", "new": "true"},
        {"user_id": "u2", "change": "entered", "new": "true"},
    ]
    assert rows(warehouse.url, "SELECT status FROM audience_sync_log_runs") == [{"status": "succeeded"}]


def test_writeback_needs_a_warehouse() -> None:
    raw = {
        "name": "files",
        "audiences": [{"name": "VIP", "file": __file__}],
        "destination": {"type": "chartmogul", "webhook_url": "https://example.com/hook"},
        "writeback": {"schema": "log"},
    }
    with pytest.raises(ConfigError) as caught:
        make_config("sqlite://", [raw])
    assert "writeback.url: needs a warehouse URL" in str(caught.value)
    raw["writeback"] = {"url": "postgresql://u:topsecret@db/x", "schema": "bad schema"}
    with pytest.raises(ConfigError) as caught:
        make_config("sqlite://", [raw])
    assert "writeback.schema" in str(caught.value) and "topsecret" not in str(caught.value)
