"""Stopping a run: requests in flight finish within the grace period, everything acknowledged is recorded,
and the next run sends exactly the rest."""

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from sync.dev.receiver import Action, Receiver
from sync.run.runner import Runner, RunReport
from sync.store import Store
from tests.conftest import Gate, RecordingSleep, Warehouse, make_job

USERS = [f"u{i:03d}" for i in range(40)]


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in USERS])
    warehouse.set_members("vip", USERS)


def stop_after(count: int, stop: threading.Event) -> Any:
    seen = [0]
    lock = threading.Lock()

    def respond(body: Mapping[str, Any]) -> Action:
        with lock:
            seen[0] += 1
            if seen[0] == count:
                stop.set()
        return None

    return respond


def test_a_stop_request_ends_the_run_interrupted_with_every_answer_recorded(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    stop = threading.Event()
    receiver.faults.respond = stop_after(10, stop)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=3)
    report = Runner(store, sleep=sleep, stop=stop).run(job)
    assert (report.status, report.exit_code) == ("interrupted", 3)
    accepted = {b["user_id"] for b in receiver.accepted()}
    assert 10 <= len(accepted) < len(USERS)
    # Every answer the receiver gave is recorded: acknowledged state == what was accepted.
    assert {u for u in USERS if store.acknowledged("contacts", u)} == accepted
    assert report.delivered == len(accepted)

    again = Runner(store, sleep=sleep).run(job)
    assert (again.status, again.updates) == ("succeeded", len(USERS) - len(accepted))
    assert Counter(b["user_id"] for b in receiver.accepted()) == Counter(USERS)


def test_requests_still_in_flight_after_the_grace_period_are_abandoned_and_resent_later(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    stop, gate = threading.Event(), Gate(after=5)
    receiver.faults.respond = gate
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=2)
    runner = Runner(store, sleep=sleep, stop=stop, grace=timedelta(milliseconds=200))
    results: dict[str, RunReport] = {}
    thread = threading.Thread(target=lambda: results.update(report=runner.run(job)))
    thread.start()
    assert gate.arrived.wait(20)
    stop.set()
    thread.join(20)  # the grace period ends the run while the gate still holds its requests
    gate.open()
    report = results["report"]
    assert report.status == "interrupted" and report.delivered == 5
    pending = [r for r in store.updates_of(report.run_id) if r.status == "pending"]
    assert len(pending) == len(USERS) - 5
    again = Runner(store, sleep=sleep).run(job)
    assert again.delivered == len(USERS) - 5
    resent = {b["user_id"]: b["message_id"] for b in receiver.accepted()[-again.delivered :]}
    assert all(resent[r.user_id] == r.message_id for r in pending)


def test_sigterm_to_a_real_run_process_records_everything_acknowledged(
    tmp_path: Path, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    state = tmp_path / "state.db"
    config = tmp_path / "jobs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_url": f"sqlite:///{state}",
                "jobs": [
                    {
                        "name": "contacts",
                        "source": {"url": warehouse.url},
                        "audiences": [warehouse.audience("VIP", "vip")],
                        "destination": {"webhook_url": receiver.url, "max_connections": 2, "requests_per_second": 200},
                    }
                ],
            }
        )
    )
    reached = threading.Event()
    receiver.faults.respond = stop_after(8, reached)
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "run", "contacts", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"},
    )
    try:
        assert reached.wait(30)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 3, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["status"] == "interrupted"
    store = Store.open(f"sqlite:///{state}")
    try:
        accepted = {b["user_id"] for b in receiver.accepted()}
        assert {u for u in USERS if store.acknowledged("contacts", u)} == accepted
        assert summary["delivered"] == len(accepted) < len(USERS)
        assert store.lease("contacts") is None
    finally:
        store.close()
