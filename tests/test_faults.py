"""Faults injected into real parts: nothing is lost, nothing is sent twice but what was in flight."""

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync.dev.receiver import Action, Faults, Receiver
from sync.run.delivery import WINDOW_PER_CONNECTION
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import POSTGRES_URL, RecordingSleep, Warehouse, _postgres_or_skip, kill_run_when, make_job

USERS = [f"u{i:04d}" for i in range(200)]


def seed(warehouse: Warehouse, users: list[str] = USERS) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in users])
    warehouse.set_members("vip", users)


def message_ids(receiver: Receiver, accepted_only: bool = True) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = defaultdict(set)
    for record in receiver.records:
        if not accepted_only or 200 <= record.status < 300:
            ids[record.body["user_id"]].add(record.body["message_id"])
    return ids


def test_a_faulty_destination_loses_nothing(store: Store, sleep: RecordingSleep, warehouse: Warehouse) -> None:
    seed(warehouse)
    faults = Faults(error_rate=0.3, error_statuses=(500, 502, 503, 429), retry_after=2, drop_rate=0.05, seed=11)
    with Receiver(faults=faults) as receiver:
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_attempts=2)
        runner = Runner(store, sleep=sleep)
        reports = []
        for _ in range(8):  # bounded: each run delivers most of what is left
            reports.append(runner.run(job))
            acknowledged = {u for u in USERS if store.acknowledged("contacts", u)}
            accepted = {b["user_id"] for b in receiver.accepted()}
            assert acknowledged <= accepted  # no acknowledgement the destination did not give
            last = {r.user_id: r.status for r in store.updates_of(reports[-1].run_id)}
            # every user is acknowledged, or visibly waiting in the last run: none silently dropped
            assert all(u in acknowledged or last.get(u) in ("failed", "pending") for u in USERS)
            if reports[-1].exit_code == 0:
                break
    assert reports[0].exit_code == 3 and reports[0].failed > 0
    assert reports[-1].exit_code == 0 and acknowledged == set(USERS)
    assert all(len(ids) == 1 for ids in message_ids(receiver, accepted_only=False).values())
    assert 2.0 in sleep.delays  # Retry-After honoured


def test_a_process_killed_mid_run_loses_nothing_and_duplicates_only_what_was_in_flight(
    tmp_path: Path, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    seed(warehouse)
    state = tmp_path / "state.db"
    config = tmp_path / "jobs.yaml"
    reached = threading.Event()
    counted = [0]

    def count(body: Mapping[str, Any]) -> Action:
        counted[0] += 1
        if counted[0] == 60:
            reached.set()
        return None

    with Receiver(faults=Faults(respond=count, delay=0.005)) as receiver:
        config.write_text(
            yaml.safe_dump(
                {
                    "state_url": f"sqlite:///{state}",
                    "jobs": [
                        {
                            "name": "contacts",
                            "source": {"url": warehouse.url},
                            "audiences": [warehouse.audience("VIP", "vip")],
                            "destination": {
                                "webhook_url": receiver.url,
                                "max_connections": 4,
                                "requests_per_second": 1000,
                            },
                        }
                    ],
                }
            )
        )
        kill_run_when(config, reached)
        first_run_ids = message_ids(receiver)
        store = Store.open(f"sqlite:///{state}")
        try:
            planned = {r.user_id: r.message_id for r in store.updates_of(1)}
            report = Runner(store, sleep=sleep).run(
                make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
            )
            killed = store.run(1)
            assert killed is not None and killed.status == "interrupted"
        finally:
            store.close()
    assert report.status == "succeeded"
    delivered = message_ids(receiver)
    assert set(delivered) == set(planned) == set(USERS)  # the receiver's record matches the diff: nothing lost
    assert all(ids == {planned[u]} for u, ids in delivered.items())  # a resend carries the first messageId
    duplicates = [b["user_id"] for b in receiver.accepted()].__len__() - len(USERS)
    assert duplicates == report.delivered - (len(USERS) - len(first_run_ids))
    assert duplicates <= WINDOW_PER_CONNECTION * 4  # in flight (4 connections) or answered during the last commit


@pytest.fixture
def fault_database() -> Iterator[tuple[str, Any]]:
    """A PostgreSQL database of its own that the test can make unreachable, and an admin connection."""
    _postgres_or_skip()
    name = f"as_fault_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False), admin
    with admin.connect() as connection:
        connection.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        connection.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        connection.execute(text(f"DROP DATABASE {name}"))
    admin.dispose()


@pytest.mark.postgres
def test_a_state_store_lost_mid_run_fails_the_run_cleanly_and_the_next_run_resumes(
    fault_database: tuple[str, Any], warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    url, admin = fault_database
    name = make_url(url).database
    seed(warehouse)
    cut = threading.Event()
    counted = [0]

    def cut_the_store(body: Mapping[str, Any]) -> Action:
        counted[0] += 1
        if counted[0] == 50:
            with admin.connect() as connection:
                connection.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                connection.execute(
                    text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )
            cut.set()
        return None

    with Receiver(faults=Faults(respond=cut_the_store)) as receiver:
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=2)
        store = Store.open(url)
        runner = Runner(store, sleep=sleep, lease_ttl=timedelta(seconds=60))
        first = runner.run(job)
        assert cut.is_set()
        assert first.status == "failed" and first.error is not None and "the state store failed" in first.error
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        acknowledged = {u for u in USERS if store.acknowledged("contacts", u)}
        assert 0 < len(acknowledged) < len(USERS)
        assert acknowledged <= {b["user_id"] for b in receiver.accepted()}
        second = runner.run(job)  # the same process: it takes back the lease it could not release
        store.close()
    assert second.status == "succeeded"
    assert second.delivered == len(USERS) - len(acknowledged)
    assert set(message_ids(receiver)) == set(USERS)
    assert all(len(ids) == 1 for ids in message_ids(receiver).values())


def test_an_unreachable_warehouse_fails_the_run_without_its_password(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse, USERS[:5])
    runner = Runner(store, sleep=sleep)
    assert runner.run(make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])).delivered == 5
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    down = job.model_copy(
        update={
            "source": job.source.model_copy(update={"url": "postgresql+psycopg://reader:hunter2@127.0.0.1:1/warehouse"})
        }
    )
    report = runner.run(down)
    assert (report.status, report.exit_code) == ("failed", 1)
    assert report.error is not None and "cannot connect to the warehouse" in report.error
    assert "reader:***@127.0.0.1:1/warehouse" in report.error and "hunter2" not in report.error
    assert store.state_size("contacts") == 5 and len(receiver.records) == 5
