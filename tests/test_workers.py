"""Several `schedule` daemons on one PostgreSQL state store share the jobs: each job runs on one worker at a
time, every job keeps running, and a killed worker's jobs go on on the others."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from sync.dev.receiver import Receiver
from sync.store import Store
from tests.conftest import Warehouse

JOBS = [f"job{j}" for j in range(6)]
MEMBERS = 3


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` every 0.2 s for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A worker process, its log lines (stderr) written to ``log``."""
    with log.open("wb") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


@pytest.mark.postgres
def test_three_workers_share_six_jobs_and_survive_a_killed_one(
    tmp_path: Path, warehouse: Warehouse, postgres_url: str
) -> None:
    users = {job: [f"{job}-u{i}" for i in range(MEMBERS)] for job in JOBS}
    warehouse.set_profiles([{"user_id": u} for members in users.values() for u in members])
    for job in JOBS:
        warehouse.set_members(job, users[job])
    with Receiver() as receiver:
        jobs = [
            {
                "name": job,
                "source": {"url": warehouse.url},
                "audiences": [warehouse.audience("VIP", job)],
                "destination": {"webhook_url": receiver.url, "requests_per_second": 1000},
                "schedule": {"every": "1s", "jitter": "0s"},
            }
            for job in JOBS
        ]
        config = tmp_path / "jobs.yaml"
        config.write_text(yaml.safe_dump({"state_url": postgres_url, "jobs": jobs}))
        env = {k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}
        command = [sys.executable, "-m", "sync", "--config", str(config), "schedule"]
        logs = [tmp_path / f"worker{w}.log" for w in range(3)]
        workers = [start(command, env, log) for log in logs]
        store = Store.open(postgres_url)
        try:

            def succeeded_since(moment: datetime, count: int) -> bool:
                return all(
                    sum(1 for r in store.runs(job) if r.status == "succeeded" and r.started_at >= moment) >= count
                    for job in JOBS
                )

            started = datetime.now(UTC)
            assert _wait(lambda: succeeded_since(started, 2), 60), "every job syncs, then runs again"
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            killed = datetime.now(UTC)
            for job in JOBS:  # one member leaves each audience: one exit per job, from whichever worker runs it
                warehouse.set_members(job, users[job][1:])

            def exits() -> int:
                return sum(1 for b in receiver.accepted() if b["custom_attributes"].get("vip") is False)

            went_on = _wait(lambda: exits() == len(JOBS) and succeeded_since(killed, 3), 60)
            progress = {
                job: [(r.id, r.status, r.error) for r in store.runs(job) if r.started_at >= killed] for job in JOBS
            }
            assert went_on, f"the jobs go on: {exits()} exits sent, runs since the kill: {progress}"
        finally:
            for worker in workers[1:]:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(30)
                finally:
                    worker.kill()
        try:
            for job in JOBS:  # one worker at a time: no two runs of a job overlap
                runs = sorted(
                    (r for r in store.runs(job) if r.status != "skipped" and r.finished_at is not None),
                    key=lambda r: r.started_at,
                )
                for earlier, later in zip(runs, runs[1:], strict=False):
                    assert earlier.finished_at is not None and earlier.finished_at <= later.started_at, job
        finally:
            store.close()
    sent = Counter((b["user_id"], b["custom_attributes"].get("vip")) for b in receiver.accepted())
    for job in JOBS:  # every member once, every exit once: no double sends
        assert all(sent[(user, True)] == 1 for user in users[job]), (job, sent)
        assert sent[(users[job][0], False)] == 1, (job, sent)
    for worker, log in zip(workers[1:], logs[1:], strict=True):  # a stopped worker exits cleanly
        assert worker.returncode == 0, log.read_text()[-3000:]
