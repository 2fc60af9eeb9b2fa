"""A run left alone speaks up and stops fast: an unreachable destination, a dying delivery worker, a slow
trickle of an answer, an error page that echoes the secret URL, blocked runs, a busy job in the daemon."""

import asyncio
import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sync.clock import utc_now
from sync.destinations.base import Outgoing
from sync.destinations.breaker import Breaker
from sync.destinations.factory import build_destination
from sync.destinations.transport import default_client
from sync.dev.receiver import Receiver
from sync.run.runner import Runner
from sync.scheduler.daemon import Daemon
from sync.store import Store
from tests.conftest import LogWatch, RecordingSleep, Warehouse, job_dict, make_config, make_job

USERS = [f"u{i}" for i in range(30)]


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in USERS])
    warehouse.set_members("vip", USERS)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quick_breaker() -> Breaker:
    return Breaker(failures=10, min_seconds=0.0)


def test_breaker_opens_only_after_enough_unanswered_attempts_over_enough_time() -> None:
    now = [0.0]
    breaker = Breaker(failures=3, min_seconds=10.0, clock=lambda: now[0])
    assert not breaker.unanswered("refused") and not breaker.unanswered("refused")
    breaker.answered()  # any HTTP answer resets the streak
    assert not breaker.unanswered("refused") and not breaker.unanswered("refused")
    assert not breaker.unanswered("refused")  # three in a row, but within no time at all: a blip
    now[0] = 10.0
    assert breaker.unanswered("timed out") and breaker.opened
    assert not breaker.unanswered("timed out")  # opens once


def test_an_unreachable_destination_fails_the_run_fast_and_leaves_the_updates_pending(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    seed(warehouse)
    url = f"http://127.0.0.1:{closed_port()}/hook/s3cret-token"
    job = make_job(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    started = time.monotonic()
    with LogWatch("run finished") as finished:
        report = Runner(store, sleep=sleep, breaker=quick_breaker).run(job)
    assert time.monotonic() - started < 10
    assert report.status == "failed" and report.exit_code == 1
    assert report.error is not None and "unreachable" in report.error and "127.0.0.1" in report.error
    assert "s3cret" not in report.error and "firewall" in report.error
    assert report.delivered == 0 and report.updates == len(USERS)  # what was planned is counted
    assert finished.records[0].levelno == logging.ERROR
    assert store.pending_updates("contacts") == len(USERS)
    assert store.state_size("contacts") == 0


def test_a_destination_that_never_answers_trips_the_breaker_on_timeouts(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    seed(warehouse)
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        job = make_job(warehouse, url, audiences=[warehouse.audience("VIP", "vip")], timeout="200ms")
        report = Runner(store, sleep=sleep, breaker=quick_breaker).run(job)
    assert report.status == "failed" and "unreachable" in (report.error or "")
    assert "timed out" in (report.error or "")


def test_retries_are_logged_as_warnings_while_they_happen(
    store: Store, warehouse: Warehouse, faulty_receiver: Receiver, sleep: RecordingSleep
) -> None:
    seed(warehouse)
    faulty_receiver.faults.error_rate = 0.5
    job = make_job(warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    with LogWatch("the destination is failing requests") as trouble, LogWatch("delivery progress") as progress:
        report = Runner(store, sleep=sleep, progress_interval=0.05).run(job)
    assert report.delivered + report.failed == len(USERS)
    assert trouble.records and all(r.levelno == logging.WARNING for r in trouble.records)
    assert "HTTP 50" in trouble.records[0].__dict__["reasons"]
    assert progress.records[-1].__dict__["done"] == len(USERS)


def test_phases_are_logged_with_their_timings(store: Store, warehouse: Warehouse, receiver: Receiver) -> None:
    seed(warehouse)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    with LogWatch("") as everything:
        Runner(store).run(job)
    phases = [r.__dict__["phase"] for r in everything.records if r.__dict__.get("event") == "run_phase"]
    assert phases == ["querying", "planning", "sending", "recording"]
    queries = [r for r in everything.records if r.getMessage() == "query read"]
    assert queries and all(r.levelno == logging.DEBUG and r.__dict__["seconds"] >= 0 for r in queries)
    finished = [r for r in everything.records if r.getMessage() == "run finished"][0]
    assert "querying" in finished.__dict__["timings"] and "sending" in finished.__dict__["timings"]


def test_credentials_in_the_webhook_url_are_sent_as_basic_auth_and_kept_secret(
    store: Store, warehouse: Warehouse, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    seed(warehouse)
    url = receiver.url.replace("http://", "http://hookuser:p4ssw0rd-s3cret@")
    job = make_job(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    with caplog.at_level(logging.DEBUG, logger="sync"):  # httpx's own logger is held at WARNING (sync.logs)
        report = Runner(store).run(job)
    assert report.status == "succeeded" and report.delivered == len(USERS)
    expected = "Basic " + base64.b64encode(b"hookuser:p4ssw0rd-s3cret").decode()
    assert {r.authorization for r in receiver.records} == {expected}
    assert "p4ssw0rd" not in caplog.text


class _Broken(httpx.AsyncBaseTransport):
    """A transport with a bug: it raises what no HTTP client raises."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in the transport")


def test_a_delivery_worker_that_dies_fails_the_run_loudly(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    runner = Runner(store, client_factory=lambda _n: httpx.AsyncClient(transport=_Broken()))
    report = runner.run(job)
    assert report.status == "failed" and report.exit_code == 1
    assert "RuntimeError" in (report.error or "") and report.delivered == 0
    assert store.pending_updates("contacts") == len(USERS)
    assert Runner(store).run(job).delivered == len(USERS)  # nothing was lost


def test_an_error_page_echoing_the_secret_path_is_redacted_everywhere(
    store: Store, warehouse: Warehouse, faulty_receiver: Receiver, sleep: RecordingSleep
) -> None:
    seed(warehouse)
    faulty_receiver.faults.respond = lambda body: 404
    faulty_receiver.faults.error_body = "<html>Cannot POST {path}</html>"
    url = faulty_receiver.url.replace("/webhook", "/hook/T0KEN-abcdef123?sig=zz-s3cret-99")
    job = make_job(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    report = Runner(store, sleep=sleep).run(job)
    assert report.failed == len(USERS)
    errors = [row.error or "" for row in store.updates_of(report.run_id)]
    assert errors and all("Cannot POST" in e and "<redacted>" in e for e in errors)
    stored = " ".join(errors) + " ".join(f.error or "" for f in store.failed_updates("contacts"))
    assert "T0KEN" not in stored and "s3cret" not in stored and "abcdef123" not in stored


class _Trickle(threading.Thread):
    """Answers 200 with a body sent one byte every 0.3 s: every read is quick, the whole answer is slow."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]

    def run(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Type: application/json\r\n\r\n")
            for _ in range(20):
                try:
                    connection.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.3)


def test_the_timeout_bounds_the_whole_exchange_not_each_read(warehouse: Warehouse) -> None:
    trickle = _Trickle()
    trickle.start()
    job = make_job(
        warehouse,
        f"http://127.0.0.1:{trickle.port}/webhook",
        audiences=[warehouse.audience("VIP", "vip")],
        timeout="1s",
        max_attempts=1,
    )
    call = {"type": "identify", "userId": "u1", "messageId": "m1", "traits": {"email": "a@example.com"}}

    async def deliver() -> tuple[float, bool, str | None]:
        async with default_client(1) as client:
            destination = build_destination(job.destination, client)
            started = time.monotonic()
            request = next(destination.target.requests(iter([Outgoing("u1", "m1", (call,))]), utc_now))
            (result,) = await destination.deliver(request)
            return time.monotonic() - started, result.delivered, result.error

    took, delivered, error = asyncio.run(deliver())
    trickle.server.close()
    assert not delivered and "timed out" in (error or "")
    assert took < 2.0  # a per-read timeout would wait for the whole 6 s trickle


def test_blocked_runs_are_warnings_escalate_and_show_in_status(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    from sync.audit.status import job_status

    users = [f"u{i}" for i in range(200)]
    warehouse.set_members("vip", users)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    runner = Runner(store)
    assert runner.run(job).status == "succeeded"
    warehouse.set_members("vip", users[:20])  # 90 % would exit: the guard stops every run
    with LogWatch("run finished") as finished:
        reports = [runner.run(job) for _ in range(3)]
    assert [r.status for r in reports] == ["blocked"] * 3
    assert all(r.levelno == logging.WARNING for r in finished.records)
    status = job_status(store, job, datetime.now(UTC))
    assert status["consecutive_failures"] == 3 and status["failing"]
    assert status["consecutive_blocked"] == 3 and status["pending"] == 180


@pytest.fixture
def held(store: Store) -> Iterator[None]:
    assert store.acquire_lease("contacts", "elsewhere:1:abc", datetime.now(UTC), timedelta(minutes=5))
    yield
    store.release_lease("contacts", "elsewhere:1:abc")


def test_a_daemon_that_finds_its_job_busy_waits_and_records_no_skip(
    store: Store, warehouse: Warehouse, receiver: Receiver, held: None, tmp_path: Path
) -> None:
    seed(warehouse)
    config = make_config(
        "sqlite://",
        [
            job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
            | {"schedule": {"every": "1h"}}
        ],
    )
    daemon = Daemon(config, store, stop=threading.Event())
    before = datetime.now(UTC)
    for _ in range(5):
        daemon._fire("contacts")
    assert [run.status for run in store.runs("contacts")] == []
    planned = store.schedule("contacts")
    assert planned is not None and planned.next_run_at is not None
    assert planned.next_run_at >= before + timedelta(seconds=25)
    assert not receiver.records
