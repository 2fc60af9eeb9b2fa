"""One run of a job at a time, across processes: the lease in the state store (SQLite and PostgreSQL)."""

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from sync.dev.receiver import Receiver
from sync.run.runner import Runner, RunReport
from sync.store import Store
from sync.store.models import JobLease
from tests.conftest import Gate, LogWatch, RecordingSleep, Warehouse, make_job

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)


def seed(warehouse: Warehouse, users: int = 8) -> None:
    warehouse.set_profiles([{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(users)])
    warehouse.set_members("vip", [f"u{i}" for i in range(users)])


def test_a_live_lease_is_exclusive_and_an_expired_one_is_taken_over(store: Store, state_url: str) -> None:
    other = Store.open(state_url)  # a second process's connection
    try:
        assert store.acquire_lease("contacts", "a", NOW, TTL)
        assert not other.acquire_lease("contacts", "b", NOW + timedelta(seconds=30), TTL)
        assert store.renew_lease("contacts", "a", NOW + timedelta(seconds=40), TTL)
        assert not other.acquire_lease("contacts", "b", NOW + timedelta(seconds=61), TTL)  # renewed until +100 s
        assert other.acquire_lease("contacts", "b", NOW + timedelta(seconds=101), TTL)
        assert not store.renew_lease("contacts", "a", NOW + timedelta(seconds=102), TTL)  # a lost it
        lease = store.lease("contacts")
        assert lease is not None and lease.owner == "b"
        store.release_lease("contacts", "a")  # not a's to release
        assert store.lease("contacts") is not None
        other.release_lease("contacts", "b")
        assert store.lease("contacts") is None
        assert store.acquire_lease("other-job", "a", NOW, TTL) and other.acquire_lease("third", "b", NOW, TTL)
    finally:
        other.close()


def test_a_run_that_finds_the_job_busy_is_recorded_as_skipped(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    store.acquire_lease("contacts", "daemon-host:123:abc", datetime.now(UTC), TTL)
    report = Runner(store, sleep=sleep).run(
        make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    )
    assert (report.status, report.exit_code) == ("skipped", 4)
    assert report.error is not None and "daemon-host:123:abc" in report.error
    assert receiver.records == []
    run = store.run(report.run_id)
    assert run is not None and run.status == "skipped"
    assert store.lease("contacts") is not None  # the holder keeps it


def test_an_expired_lease_of_a_dead_process_is_taken_over_and_its_run_marked_interrupted(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    dead_run = store.start_run("contacts", "initial", False, long_ago)
    store.acquire_lease("contacts", "crashed:1:x", long_ago, TTL)
    report = Runner(store, sleep=sleep).run(
        make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    )
    assert (report.status, report.delivered) == ("succeeded", 8)
    dead = store.run(dead_run)
    assert dead is not None and dead.status == "interrupted" and dead.finished_at is not None
    assert store.lease("contacts") is None


def test_a_manual_run_during_a_running_sync_does_not_double_send(
    state_url: str, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse, 12)
    gate = Gate(after=3)
    daemon_store, manual_store = Store.open(state_url), Store.open(state_url)
    with Receiver() as receiver:
        receiver.faults.respond = gate
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=1)
        results: dict[str, RunReport] = {}
        daemon = threading.Thread(target=lambda: results.update(daemon=Runner(daemon_store, sleep=sleep).run(job)))
        daemon.start()
        try:
            assert gate.arrived.wait(20)
            manual = Runner(manual_store, sleep=sleep).run(job)
        finally:
            gate.open()
            daemon.join(30)
        bodies = receiver.accepted()
    daemon_store.close()
    manual_store.close()
    assert (manual.status, manual.exit_code) == ("skipped", 4)
    assert results["daemon"].status == "succeeded"
    assert sorted(b["user_id"] for b in bodies) == sorted(f"u{i}" for i in range(12))


def test_a_run_whose_lease_is_taken_over_stops_sending(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse, 10)
    gate = Gate(after=2)
    with Receiver() as receiver:
        receiver.faults.respond = gate
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=1)
        runner = Runner(store, sleep=sleep, lease_ttl=timedelta(milliseconds=300))
        results: dict[str, RunReport] = {}
        thread = threading.Thread(target=lambda: results.update(report=runner.run(job)))
        thread.start()
        with LogWatch("the job's lease was taken over") as noticed:
            try:
                assert gate.arrived.wait(20)
                with store.engine.begin() as connection:  # another process takes the job over
                    connection.execute(update(JobLease).values(owner="thief", expires_at=datetime.now(UTC) + TTL))
                assert noticed.seen.wait(20)  # the heartbeat (every 100 ms) notices
            finally:
                gate.open()  # the request in flight ends; nothing more is handed out
                thread.join(30)
    report = results["report"]
    assert report.status == "failed" and "the lease was lost" in (report.error or "")
    assert report.delivered == 3  # two before the gate, and the one in flight when the lease went
    lease = store.lease("contacts")
    assert lease is not None and lease.owner == "thief"  # the thief's lease is not released by the loser


def test_only_a_dead_process_of_this_host_counts_as_a_dead_holder() -> None:
    import os
    import socket
    import subprocess
    import sys

    from sync.run.lease import holder_is_dead

    host = socket.gethostname()
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    assert holder_is_dead(f"{host}:{exited.stdout.strip()}:abc")
    assert not holder_is_dead(f"{host}:{os.getpid()}:abc")  # ourselves
    assert not holder_is_dead(f"{host}:1:abc")  # alive (init)
    assert not holder_is_dead(f"another-host:{exited.stdout.strip()}:abc")  # cannot tell: wait for expiry
    assert not holder_is_dead("garbage")


def test_workers_writing_a_new_jobs_schedule_and_alerts_at_once_all_succeed(store: Store, state_url: str) -> None:
    """Workers started together plan the same new jobs at the same moment: each write is one upsert, never a
    read then an insert that a second worker's insert can beat."""
    stores = [Store.open(state_url) for _ in range(4)]
    jobs = [f"job{j}" for j in range(15)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def plan(worker: int, other: Store) -> None:
        try:
            for job in jobs:
                start.wait(10)
                other.update_schedule(job, NOW, next_run_at=NOW + timedelta(minutes=worker))
                other.set_alert_state(job, [f"failed-{worker}"], NOW, run_id=worker)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=plan, args=(w, s)) for w, s in enumerate(stores)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for other in stores:
            other.close()
    assert not errors, errors[0]
    for job in jobs:  # each row holds one worker's whole write
        schedule = store.schedule(job)
        assert schedule is not None and schedule.next_run_at is not None and not schedule.paused
        worker = int((schedule.next_run_at - NOW).total_seconds() // 60)
        assert 0 <= worker < len(stores)
        assert len(store.alert_state(job)) == 1
    store.update_schedule("job0", NOW, paused=True)  # a later write keeps what it does not name
    kept = store.schedule("job0")
    assert kept is not None and kept.paused and kept.next_run_at is not None
