"""On a real distributed engine: a Spark cluster (a master and two workers of one core, its Thrift server;
scripts/spark.sh) reached through PyHive's ``hive://`` dialect. Both engines work there: the local engine reads
the rows out; the warehouse engine diffs inside Spark, keeps its copy of the acknowledged fingerprints in
Parquet tables by rewriting them (Spark's plain tables take no DELETE), and plans what the local engine plans,
through a kill between acknowledging and refreshing the copy. Bad input is an error naming the job."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from sync.dev.receiver import Receiver
from sync.run.report import RunOptions
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import SparkCluster, make_config
from tests.test_warehouse_engine import _killed_after_acknowledging, copy_rows, fingerprint, job_raw, seed, sent
from tests.warehouses import SparkWarehouse, spark_warehouse

pytestmark = pytest.mark.spark


@pytest.fixture
def wh(spark_cluster: SparkCluster) -> Iterator[SparkWarehouse]:
    database = f"t_{uuid.uuid4().hex[:10]}"
    warehouse = spark_warehouse(spark_cluster.url, database)
    yield warehouse
    engine = create_engine(spark_cluster.url)
    try:
        with engine.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {database} CASCADE"))
    finally:
        engine.dispose()


def spark_job(wh: SparkWarehouse, url: str, engine: str = "warehouse", **extra: Any) -> Any:
    raw = job_raw(wh, url, engine=engine, **extra)
    raw["source"]["schema"] = wh.schema
    return make_config("sqlite://", [raw]).jobs[0]


def test_both_engines_sync_from_spark(wh: SparkWarehouse, tmp_path: Path) -> None:
    seed(wh)
    stores = {e: Store.open(f"sqlite:///{tmp_path / f'{e}.db'}") for e in ("local", "warehouse")}
    try:
        with Receiver() as receiver:
            sends: dict[str, dict[str, Any]] = {}
            for engine, store in stores.items():
                before = len(receiver.accepted())
                report = Runner(store).run(spark_job(wh, receiver.url, engine))
                assert report.status == "succeeded", report.error
                sends[engine] = sent(receiver, before)
            assert sends["warehouse"] == sends["local"]
            assert sends["local"]["u1"] == {"vip": True, "ltv": 10.5}
            wh.set_members("vip", ["u1", "u3", "u6"])  # u2 exits, u6 enters
            for engine, store in stores.items():
                before = len(receiver.accepted())
                report = Runner(store).run(spark_job(wh, receiver.url, engine))
                assert report.status == "succeeded", report.error
                sends[engine] = sent(receiver, before)
            assert sends["warehouse"] == sends["local"] == {"u2": {"vip": False}, "u6": {"vip": True}}
        copy = copy_rows(wh)
        assert copy["u6"] == fingerprint(stores["warehouse"], "u6")  # the copy, rewritten, holds the new state
    finally:
        for store in stores.values():
            store.close()


def test_a_run_killed_between_acknowledging_and_writing_the_copy_misses_nothing(
    wh: SparkWarehouse, tmp_path: Path
) -> None:
    seed(wh)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with Receiver() as receiver:
        raw = job_raw(wh, receiver.url)
        raw["source"]["schema"] = wh.schema
        config_path = tmp_path / "jobs.yaml"
        config_path.write_text(yaml.safe_dump({"state_url": state, "jobs": [raw]}))
        job = make_config("sqlite://", [raw]).jobs[0]
        store = Store.open(state)
        assert Runner(store).run(job).status == "succeeded"
        wh.set_trait("ltv", {"u1": 20, "u4": 3})
        process = multiprocessing.get_context("spawn").Process(
            target=_killed_after_acknowledging, args=(str(config_path), "contacts")
        )
        process.start()
        process.join(300)
        assert process.exitcode == -signal.SIGKILL
        assert copy_rows(wh)["u1"] != fingerprint(store, "u1")  # the copy lags the state store
        wh.set_trait("ltv", {"u1": 10.5, "u4": 3})  # back to what the stale copy holds
        before = len(receiver.accepted())
        report = Runner(store).run(job)
        assert report.status == "succeeded", report.error
        assert sent(receiver, before) == {"u1": {"ltv": 10.5}}
        assert copy_rows(wh)["u1"] == fingerprint(store, "u1")
        store.close()


def test_a_spark_that_is_down_or_a_query_it_rejects_is_named(wh: SparkWarehouse, tmp_path: Path) -> None:
    seed(wh)
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        down = spark_job(wh, "http://127.0.0.1:9/hook")
        down = down.model_copy(update={"source": down.source.model_copy(update={"url": "hive://127.0.0.1:9/default"})})
        for engine in ("warehouse", "local"):
            job = down.model_copy(update={"source": down.source.model_copy(update={"engine": engine})})
            report = Runner(store).run(job)
            assert report.status == "failed" and "job 'contacts'" in (report.error or ""), report.error
            assert "Traceback" not in (report.error or "")
        rejected = spark_job(wh, "http://127.0.0.1:9/hook", audiences=[{"name": "VIP", "query": "SELEC nonsense"}])
        report = Runner(store).run(rejected)
        assert report.status == "failed" and "job 'contacts'" in (report.error or "")
        assert report.delivered == 0 and store.acknowledged("contacts", "u1") is None
    finally:
        store.close()


def test_the_engines_plan_the_same_on_spark(wh: SparkWarehouse, tmp_path: Path) -> None:
    """The property of tests/test_warehouse_engine.py, on fixed steps (each step costs Spark seconds)."""
    steps: list[dict[str, Any]] = [
        {"vip": {"u1", "u2"}, "ltv": {"u1": 1.5, "u3": None}, "profiles": {"u1", "u2", "u3"}},
        {"vip": {"u2", "u4"}, "ltv": {"u1": 2, "u4": 0.25}, "profiles": {"u2", "u4"}},
        {"vip": set(), "ltv": {"u4": 0.25}, "profiles": {"u4", "u5"}},
    ]
    stores = {e: Store.open(f"sqlite:///{tmp_path / f'{e}.db'}") for e in ("local", "warehouse")}
    try:
        with Receiver() as receiver:
            jobs = {e: spark_job(wh, receiver.url, e, guard={"enabled": False}) for e in stores}
            for number, step in enumerate(steps):
                wh.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in sorted(step["profiles"])])
                wh.set_members("vip", sorted(step["vip"]))
                wh.set_trait("ltv", step["ltv"])
                planned = {}
                for engine, store in stores.items():
                    report = Runner(store).run(jobs[engine], RunOptions(full=number == 1))
                    assert report.status == "succeeded", report.error
                    planned[engine] = sorted(
                        (c.user_id, c.key, repr(c.old), repr(c.new)) for c in store.changes_of(report.run_id)
                    )
                assert planned["warehouse"] == planned["local"], f"step {number}"
    finally:
        for store in stores.values():
            store.close()


def test_a_query_with_a_percent_sign_reads_out_as_written(wh: SparkWarehouse, tmp_path: Path) -> None:
    """A ``%`` in a query (LIKE) reaches Spark as the user wrote it, through every statement of the engine."""
    seed(wh)
    audiences = [{"name": "VIP", "query": "SELECT user_id FROM profiles WHERE email LIKE 'u1%' OR email LIKE '%5@%'"}]
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with Receiver() as receiver:
            report = Runner(store).run(spark_job(wh, receiver.url, audiences=audiences))
            assert report.status == "succeeded", report.error
            assert {u for u, keys in sent(receiver).items() if keys.get("vip")} == {"u1", "u5"}
    finally:
        store.close()


def test_a_worker_killed_mid_query_leaves_nothing_acknowledged_that_was_not_sent(
    wh: SparkWarehouse, spark_cluster: SparkCluster, tmp_path: Path
) -> None:
    """One of the two workers is killed while the warehouse engine's statements run: Spark runs its tasks
    again on the other; the run either succeeds or fails cleanly, and what is acknowledged is what was sent."""
    if spark_cluster.worker_pid(1) is None:
        pytest.skip("needs a cluster this session started (not AUDIENCE_SYNC_TEST_SPARK_URL)")
    users = [f"u{i:05d}" for i in range(3000)]
    wh.set_members("vip", users)
    wh.set_trait("ltv", {u: i % 7 for i, u in enumerate(users)})
    wh.set_profiles([])
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with Receiver() as receiver:
            job = spark_job(wh, receiver.url, guard={"enabled": False})
            outcome: dict[str, Any] = {}
            running = threading.Thread(target=lambda: outcome.update(report=Runner(store).run(job)))
            running.start()
            time.sleep(4)  # within the run's Spark statements (they take tens of seconds here)
            pid = spark_cluster.worker_pid(1)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            running.join(600)
            report = outcome["report"]
            delivered = {b["user_id"] for b in receiver.accepted()}
        assert report.status in ("succeeded", "failed"), report.error
        if report.status == "failed":
            assert "job 'contacts'" in (report.error or "") and "Traceback" not in (report.error or "")
        acknowledged = {u for u in users if store.acknowledged("contacts", u) is not None}
        assert acknowledged <= delivered  # nothing acknowledged that was not sent
        if report.status == "succeeded":
            assert acknowledged == delivered == set(users)
    finally:
        store.close()
        spark_cluster.start_worker(1)
