"""`schedule.when_changed`: a scheduled run whose watermark query returns what it returned for the last run that
succeeded is recorded as skipped, with the reason; `at_least` forces a run anyway; a run started by hand always
goes; a watermark query that fails runs the job and warns."""

import logging
import sqlite3
from datetime import datetime, timedelta
from typing import Any

import pytest

from sync.clock import utc_now
from sync.config import JobConfig
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.report import RunOptions
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config

SCHEDULED = RunOptions(trigger="scheduled")
WATERMARK = "SELECT max(user_id) FROM members"


def watched(warehouse: Warehouse, url: str, **schedule: Any) -> JobConfig:
    raw = job_dict(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    raw["schedule"] = {"when_changed": WATERMARK, **schedule}
    return make_config("sqlite://", [raw]).jobs[0]


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now


def test_a_scheduled_run_is_skipped_while_the_watermark_stays(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse.set_members("vip", ["u1", "u2"])
    clock = Clock()
    with Receiver() as receiver:
        job = watched(warehouse, receiver.url, at_least="24h")
        runner = Runner(store, sleep=sleep, clock=clock)
        first = runner.run(job, SCHEDULED)
        assert first.status == "succeeded" and store.run(first.run_id).watermark == '"u2"'  # type: ignore[union-attr]
        clock.now += timedelta(hours=2)
        with caplog.at_level(logging.INFO, logger="sync.run.runner"):
            skipped = runner.run(job, SCHEDULED)
        assert skipped.status == "skipped"
        assert skipped.error == (
            f'the data has not changed since run {first.run_id} (schedule.when_changed returned "u2" again)'
        )
        assert any("run skipped: the data has not changed" in r.getMessage() for r in caplog.records)
        assert store.last_run(job.name).id == first.run_id  # type: ignore[union-attr]  # skipped runs do not count
        assert runner.run(job).status == "succeeded"  # by hand: always
        warehouse.set_members("vip", ["u1", "u2", "u3"])
        changed = runner.run(job, SCHEDULED)
        assert changed.status == "succeeded" and changed.delivered == 1
        clock.now += timedelta(hours=25)  # at_least: a day without a run is too long, changed or not
        assert runner.run(job, SCHEDULED).status == "succeeded"
        assert len(receiver.accepted()) == 3


def test_a_failing_watermark_query_runs_the_job_and_warns(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse.set_members("vip", ["u1"])
    with Receiver() as receiver:
        job = watched(warehouse, receiver.url)
        broken = job.model_copy(
            update={"schedule": job.schedule.model_copy(update={"when_changed": "SELECT max(x) FROM nowhere"})}
        )
        runner = Runner(store, sleep=sleep)
        assert runner.run(job, SCHEDULED).status == "succeeded"
        with caplog.at_level(logging.WARNING, logger="sync.run.runner"):
            again = runner.run(broken, SCHEDULED)
        assert again.status == "succeeded"  # nothing to send, but it ran
        assert any("schedule.when_changed failed; running the job anyway" in r.getMessage() for r in caplog.records)
        with sqlite3.connect(warehouse.path) as db:
            db.execute("CREATE TABLE two (v)")
            db.execute("INSERT INTO two VALUES (1), (2)")
        many = job.model_copy(
            update={"schedule": job.schedule.model_copy(update={"when_changed": "SELECT v FROM two"})}
        )
        assert runner.run(many, SCHEDULED).status == "succeeded"
        assert any("must return one row of one value" in r.getMessage() for r in caplog.records)


def test_when_changed_needs_a_warehouse_and_at_least_needs_when_changed(warehouse: Warehouse) -> None:
    raw = job_dict(warehouse, "http://127.0.0.1:9/hook", audiences=[warehouse.audience("VIP", "vip")])
    raw["schedule"] = {"at_least": "24h"}
    with pytest.raises(ConfigError, match="schedule.at_least: forces a run when when_changed would skip it"):
        make_config("sqlite://", [raw])
    raw["schedule"] = {"when_changed": WATERMARK, "at_least": "0s"}
    with pytest.raises(ConfigError, match="schedule.at_least"):
        make_config("sqlite://", [raw])
