"""The daemon, in-process with short cadences, and the real `audience-sync schedule` process."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from sync.audit.status import status_rows
from sync.config import Config, JobConfig
from sync.dev.receiver import Action, Receiver
from sync.run.runner import Runner, RunOptions, RunReport
from sync.scheduler.daemon import Daemon
from sync.store import Store
from sync.store.models import Run
from tests.conftest import LogWatch, RecordingSleep, Warehouse, job_dict, make_config

USERS = [f"u{i}" for i in range(6)]


class RecordingRunner(Runner):
    """A real runner that also hands each report to the test as the run ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reports: queue.Queue[RunReport] = queue.Queue()

    def run(self, job: JobConfig, options: RunOptions | None = None) -> RunReport:
        report = super().run(job, options or RunOptions())
        self.reports.put(report)
        return report


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in USERS])
    warehouse.set_members("vip", USERS[:4])


def config_for(store: Store, warehouse: Warehouse, receiver: Receiver, **schedule: Any) -> Config:
    job = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    job["schedule"] = schedule
    return make_config(store.engine.url.render_as_string(hide_password=False), [job])


@pytest.fixture
def daemon_parts(store: Store, sleep: RecordingSleep) -> tuple[Store, RecordingRunner, threading.Event]:
    stop = threading.Event()
    return store, RecordingRunner(store, sleep=sleep, stop=stop), stop


def test_the_initial_sync_runs_at_start_then_the_cadence_counts_from_the_end_of_the_last_run(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    seed(warehouse)
    daemon = Daemon(config_for(store, warehouse, receiver, every="1s", jitter="0s"), store, stop=stop, runner=runner)
    started = datetime.now(UTC)
    daemon.start()
    try:
        first = runner.reports.get(timeout=20)
        warehouse.set_members("vip", USERS[:3])
        second = runner.reports.get(timeout=20)
    finally:
        daemon.shutdown()
    assert (first.kind, first.status, first.delivered) == ("initial", "succeeded", 4)
    assert second.kind == "incremental"
    run1, run2 = store.run(first.run_id), store.run(second.run_id)
    assert run1 is not None and run2 is not None and run1.finished_at is not None
    assert run1.started_at - started < timedelta(seconds=5)
    assert run2.started_at >= run1.finished_at + timedelta(seconds=0.99)


def test_after_downtime_an_overdue_job_runs_once_and_then_waits_its_cadence(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    seed(warehouse)
    config = config_for(store, warehouse, receiver)  # every 2h, jitter 1h
    initial = runner.run(config.jobs[0])
    runner.reports.get_nowait()
    with store.engine.begin() as connection:  # the scheduler was down for ten hours
        connection.execute(
            update(Run).where(Run.id == initial.run_id).values(finished_at=datetime.now(UTC) - timedelta(hours=10))
        )
    daemon = Daemon(config, store, stop=stop, runner=runner)
    with LogWatch("next run planned") as planning:
        daemon.start()
        try:
            caught_up = runner.reports.get(timeout=20)
            assert planning.wait_for(2)  # at start (now, overdue), then after the run
            planned = store.schedule("contacts")
        finally:
            daemon.shutdown()
    assert caught_up.kind == "incremental" and runner.reports.empty()
    run = store.run(caught_up.run_id)
    assert run is not None and run.finished_at is not None and planned is not None and planned.next_run_at
    assert run.finished_at + timedelta(hours=2) <= planned.next_run_at <= run.finished_at + timedelta(hours=3)


def test_a_paused_job_is_not_run(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    seed(warehouse)
    store.update_schedule("contacts", datetime.now(UTC), paused=True)
    daemon = Daemon(config_for(store, warehouse, receiver), store, stop=stop, runner=runner)
    with LogWatch("job is paused") as paused:
        daemon.start()
        try:
            assert paused.seen.wait(20)
        finally:
            daemon.shutdown()
    assert store.runs("contacts") == [] and receiver.records == []
    planned = store.schedule("contacts")
    assert planned is not None and planned.next_run_at is not None
    assert planned.next_run_at - datetime.now(UTC) <= timedelta(minutes=1)  # looked at again soon


def test_skip_next_skips_one_run(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    seed(warehouse)
    store.update_schedule("contacts", datetime.now(UTC), skip_next=True)
    daemon = Daemon(config_for(store, warehouse, receiver, every="1s", jitter="0s"), store, stop=stop, runner=runner)
    with LogWatch("run skipped by the operator") as skipped:
        daemon.start()
        try:
            assert skipped.seen.wait(20)
            after_skip = runner.reports.get(timeout=20)  # the following run happens as usual
        finally:
            daemon.shutdown()
    assert after_skip.kind == "initial"
    control = store.schedule("contacts")
    assert control is not None and not control.skip_next


def test_a_manual_run_since_planning_moves_the_next_scheduled_run(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    seed(warehouse)
    config = config_for(store, warehouse, receiver, every="2h", jitter="0s")
    daemon = Daemon(config, store, stop=stop, runner=runner)
    manual = runner.run(config.jobs[0])  # by hand, just now
    with LogWatch("a run finished since this one was planned") as moved:
        daemon._fire("contacts")  # the daemon's slot comes up right after
    assert moved.seen.is_set()
    assert [r.id for r in store.runs("contacts")] == [manual.run_id]
    run, planned = store.run(manual.run_id), store.schedule("contacts")
    assert run is not None and run.finished_at and planned is not None
    assert planned.next_run_at == run.finished_at + timedelta(hours=2)


def test_a_job_failing_three_times_in_a_row_says_so_loudly(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse, receiver: Receiver
) -> None:
    store, runner, stop = daemon_parts
    job = job_dict(warehouse, receiver.url, audiences=[{"name": "VIP", "query": "SELECT user_id FROM missing"}])
    job["schedule"] = {"every": "100ms", "jitter": "0s"}
    config = make_config(store.engine.url.render_as_string(hide_password=False), [job])
    daemon = Daemon(config, store, stop=stop, runner=runner)
    with LogWatch("job has failed or been blocked 3 times in a row") as loud:
        daemon.start()
        try:
            assert loud.seen.wait(20)
        finally:
            daemon.shutdown()
    assert loud.records[0].levelname == "ERROR"
    # A job that never completed keeps its cadence between failed attempts instead of retrying in a loop.
    runs = sorted(store.runs("contacts"), key=lambda r: r.id)
    assert all(
        later.started_at - earlier.finished_at >= timedelta(milliseconds=95)
        for earlier, later in zip(runs, runs[1:], strict=False)
        if earlier.finished_at
    )
    status = status_rows(store, config, datetime.now(UTC))[0]
    assert status["failing"] and status["consecutive_failures"] >= 3
    assert status["last_run"]["status"] == "failed"


def test_a_slow_job_does_not_delay_another(
    daemon_parts: tuple[Store, RecordingRunner, threading.Event], warehouse: Warehouse
) -> None:
    store, runner, stop = daemon_parts
    warehouse.set_members("slow", ["s1", "s2"])
    warehouse.set_members("fast", ["f1", "f2"])
    release, held = threading.Event(), threading.Event()

    def hold_slow(body: Mapping[str, Any]) -> Action:
        if body["user_id"].startswith("s"):
            held.set()
            release.wait(20)
        return None

    with Receiver() as receiver:
        receiver.faults.respond = hold_slow
        jobs = [
            job_dict(
                warehouse, receiver.url, name=name, profiles=False, audiences=[warehouse.audience(name.title(), name)]
            )
            for name in ("slow", "fast")
        ]
        config = make_config(store.engine.url.render_as_string(hide_password=False), jobs)
        daemon = Daemon(config, store, stop=stop, runner=runner)
        daemon.start()
        try:
            assert held.wait(20)
            fast = runner.reports.get(timeout=20)
            assert (fast.job, fast.status) == ("fast", "succeeded")
        finally:
            release.set()
            daemon.shutdown()


def test_the_real_schedule_process_syncs_then_stops_cleanly_on_sigterm(
    tmp_path: Path, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    state = tmp_path / "state.db"
    config = tmp_path / "jobs.yaml"
    job = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    job["schedule"] = {"every": "1s", "jitter": "0s"}
    config.write_text(yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [job]}))
    initial_done, incremental_seen = threading.Event(), threading.Event()

    def watch(body: Mapping[str, Any]) -> Action:
        if body["user_id"] == "u3" and body["custom_attributes"].get("vip") is False:
            incremental_seen.set()
        return None

    receiver.faults.respond = watch
    env = {k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "--log-format", "json", "schedule"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        store = Store.open(f"sqlite:///{state}")
        try:
            for _ in range(400):  # bounded: the initial sync of four users takes well under a second
                if store.last_run("contacts", ("succeeded",)) is not None:
                    initial_done.set()
                    break
                initial_done.wait(0.05)
            assert initial_done.is_set()
            warehouse.set_members("vip", USERS[:3])
            assert incremental_seen.wait(20)
        finally:
            store.close()
        running = json.loads(_status(config, env))
        assert running["scheduler"]["alive"] is True and running["scheduler"]["pid"] == process.pid
        assert running["next_run_at"] is not None
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stopped = json.loads(_status(config, env))
    assert stopped["scheduler"] is None and stopped["next_run_at"] is None  # no run will happen
    said = subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), "status"], capture_output=True, text=True, env=env
    )
    assert said.stdout.startswith("no scheduler is running")
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    finished = [e for e in events if e.get("event") == "run_finished"]
    assert finished[0]["kind"] == "initial" and finished[0]["delivered"] == 4
    assert any(e["kind"] == "incremental" and e["exited"] == 1 for e in finished)
    assert events[-1]["event"] == "scheduler_stopped"
    bodies = receiver.accepted()
    assert sorted(b["user_id"] for b in bodies) == ["u0", "u1", "u2", "u3", "u3"]
    check = Store.open(f"sqlite:///{state}")
    try:
        assert all(r.status != "running" for r in check.runs("contacts"))
        assert check.lease("contacts") is None
    finally:
        check.close()


def _status(config: Path, env: Mapping[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=60,
        check=True,
    ).stdout
