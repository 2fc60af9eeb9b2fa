"""The ChartMogul destination against a real HTTP server on 127.0.0.1 that fails on purpose."""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from sync.config import ChartMogulWebhookConfig
from sync.destinations.base import DeliveryResult, Outgoing, SendWindow
from sync.destinations.factory import build_destination
from sync.dev.receiver import Action, Faults, Receiver
from tests.conftest import RecordingSleep


def settings(url: str, **overrides: Any) -> ChartMogulWebhookConfig:
    values: dict[str, Any] = {
        "webhook_url": url,
        "backoff_initial": "100ms",
        "backoff_max": "1s",
        "timeout": "2s",
        "max_attempts": 4,
        "requests_per_second": 1000,
        **overrides,
    }
    return ChartMogulWebhookConfig.model_validate(values)


def outgoing(n: int) -> list[Outgoing]:
    return [
        Outgoing(
            f"u{i}",
            f"as-{i}",
            (
                {
                    "type": "identify",
                    "messageId": f"as-{i}",
                    "userId": f"u{i}",
                    "timestamp": "2026-11-22T06:00:00.000Z",
                    "traits": {"vip": True},
                    "context": {
                        "personas": {"computations": [{"computation_class": "audience", "computation_key": "vip"}]}
                    },
                },
            ),
        )
        for i in range(n)
    ]


def deliver(
    receiver: Receiver,
    messages: list[Outgoing],
    sleep: RecordingSleep,
    *,
    sent: list[float] | None = None,
    stall: float = 0.0,
    **overrides: Any,
) -> dict[str, DeliveryResult]:
    """Send ``messages`` to ``receiver``.

    ``sent`` collects the moment each request leaves the client (httpx's request hook, right after the rate
    limiter lets it go). ``stall`` holds up the event loop for that many seconds in every 2 × ``stall``, as a
    busy loop does: timers then fire late.
    """

    async def record(request: httpx.Request) -> None:
        if sent is not None:
            sent.append(time.monotonic())

    async def hold_up() -> None:
        while True:
            await asyncio.sleep(stall)
            time.sleep(stall)  # blocks the loop on purpose

    async def go() -> dict[str, DeliveryResult]:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
            destination = build_destination(settings(receiver.url, **overrides), client, sleep=sleep)
            holding = asyncio.create_task(hold_up()) if stall else None
            try:
                return {r.user_id: r async for ready in destination.send(messages) for r in ready}
            finally:
                if holding is not None:
                    holding.cancel()

    return asyncio.run(go())


def never_faster_than(sent: list[float], rate: float) -> None:
    """At most two requests back to back, then one per 1/rate: any k + 1 sends span at least (k - 1)/rate.

    Less 10 ms: the hook reads the clock a moment after the limiter lets a request go, and a loaded machine
    stretches that moment (by up to 4 ms here with both cores busy). A third request let through at once would
    still show: three sends within a few milliseconds, against the 1/rate - 10 ms allowed.
    """
    for k in range(2, len(sent)):
        shortest = min(later - earlier for earlier, later in zip(sent, sent[k:], strict=False))
        assert shortest >= (k - 1) / rate - 0.010, f"{k + 1} requests within {shortest:.4f} s"


def failing_first(n: int, action: Action) -> Any:
    """A hook answering ``action`` to the first ``n`` requests of each message, then letting it through."""
    seen: Counter[str] = Counter()

    def respond(body: Mapping[str, Any]) -> Action:
        seen[body["message_id"]] += 1
        return action if seen[body["message_id"]] <= n else None

    return respond


def attempts_by_message(receiver: Receiver) -> Counter[str]:
    return Counter(r.body["message_id"] for r in receiver.records)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 423])
def test_transient_statuses_are_retried_until_delivered(
    faulty_receiver: Receiver, sleep: RecordingSleep, status: int
) -> None:
    faulty_receiver.faults.respond = failing_first(2, status)
    results = deliver(faulty_receiver, outgoing(5), sleep)
    assert all(r.delivered and r.attempts == 3 and r.http_status == 200 for r in results.values())
    assert attempts_by_message(faulty_receiver) == {f"as-{i}": 3 for i in range(5)}
    # Exponential backoff with jitter, inside the configured bounds.
    assert len(sleep.delays) == 10 and all(0.05 <= d <= 1.0 for d in sleep.delays)


def test_429_honours_retry_after(faulty_receiver: Receiver, sleep: RecordingSleep) -> None:
    faulty_receiver.faults.respond = failing_first(1, (429, {"Retry-After": "7"}))
    results = deliver(faulty_receiver, outgoing(3), sleep)
    assert all(r.delivered and r.attempts == 2 for r in results.values())
    # Each refused request waits its Retry-After; the others wait out what is left of it (this test's sleep
    # passes no time, so what is left is nearly all of it).
    assert sleep.delays.count(7.0) == 3 and all(6.5 <= d <= 7.0 for d in sleep.delays)


def test_a_retry_after_longer_than_a_run_waits_leaves_the_update_for_the_next_run(
    faulty_receiver: Receiver, sleep: RecordingSleep
) -> None:
    faulty_receiver.faults.respond = failing_first(1, (503, {"Retry-After": "3600"}))
    result = deliver(faulty_receiver, outgoing(1), sleep)["u0"]
    assert not result.delivered and result.retriable and result.http_status == 503 and result.attempts == 1
    assert sleep.delays == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501])
def test_permanent_statuses_are_not_retried_and_keep_the_reason(
    faulty_receiver: Receiver, sleep: RecordingSleep, status: int
) -> None:
    faulty_receiver.faults.respond = lambda body: status
    result = deliver(faulty_receiver, outgoing(1), sleep)["u0"]
    assert not result.delivered and not result.retriable
    assert result.http_status == status and result.attempts == 1
    assert result.error == f'HTTP {status}: {{"error": "injected {status}"}}'
    assert len(faulty_receiver.records) == 1 and sleep.delays == []


def test_dropped_connections_are_retried(faulty_receiver: Receiver, sleep: RecordingSleep) -> None:
    faulty_receiver.faults.respond = failing_first(1, "drop")
    results = deliver(faulty_receiver, outgoing(4), sleep)
    assert all(r.delivered and r.attempts == 2 for r in results.values())


def test_slow_answers_past_the_timeout_are_retried_then_given_up(sleep: RecordingSleep) -> None:
    with Receiver(faults=Faults(delay=0.5)) as slow:
        result = deliver(slow, outgoing(1), sleep, timeout="100ms", max_attempts=2)["u0"]
    assert not result.delivered and result.retriable and result.attempts == 2
    assert result.error is not None and result.error.startswith("timed out")


def test_exhausted_retries_report_the_last_status(faulty_receiver: Receiver, sleep: RecordingSleep) -> None:
    faulty_receiver.faults.respond = lambda body: 500
    result = deliver(faulty_receiver, outgoing(1), sleep, max_attempts=3)["u0"]
    assert not result.delivered and result.retriable and result.attempts == 3 and result.http_status == 500
    assert len(faulty_receiver.records) == 3


def test_a_refused_connection_is_retriable_and_never_names_the_url(sleep: RecordingSleep) -> None:
    with Receiver() as gone:
        url = gone.url

    async def go() -> DeliveryResult:
        async with httpx.AsyncClient() as client:
            destination = build_destination(settings(url, max_attempts=2), client, sleep=sleep)
            return [r async for ready in destination.send(outgoing(1)) for r in ready][0]

    result = asyncio.run(go())
    assert not result.delivered and result.retriable and result.attempts == 2
    assert result.error == "connection error: the connection was refused (nothing listens on that port) (ConnectError)"


def test_the_body_posted_is_the_send_contact_body_with_sent_at(receiver: Receiver, sleep: RecordingSleep) -> None:
    results = deliver(receiver, outgoing(2), sleep)
    bodies = sorted(receiver.accepted(), key=lambda b: b["user_id"])
    assert [b["message_id"] for b in bodies] == ["as-0", "as-1"]
    assert bodies[0]["type"] == "Send Contact" and bodies[0]["custom_attributes"] == {"vip": True}
    assert bodies[0]["sent_at"].endswith("Z") and results["u0"].sent_at is not None


def test_the_rate_limit_spaces_requests(receiver: Receiver, sleep: RecordingSleep) -> None:
    sent: list[float] = []
    deliver(receiver, outgoing(21), sleep, sent=sent, requests_per_second=50)
    assert len(sent) == len(receiver.records) == 21
    never_faster_than(sent, 50)


def test_the_rate_holds_while_the_event_loop_is_held_up(receiver: Receiver, sleep: RecordingSleep) -> None:
    """Answers are recorded in a thread beside the senders, so the loop's timers fire late: that must not cost
    requests. A bucket of one lost every late wake-up: 31.4-31.5 requests/s of 40 here, with the loop held up
    for 15 ms in every 30."""
    sent: list[float] = []
    deliver(receiver, outgoing(81), sleep, sent=sent, stall=0.015, requests_per_second=40, max_connections=8)
    assert len(sent) == len(receiver.records) == 81
    never_faster_than(sent, 40)
    # 81 requests, two at once, then one every 25 ms: 1.975 s at the full rate. At least 95 % of it.
    assert 80 / (sent[-1] - sent[0]) >= 0.95 * 40


def test_concurrency_is_bounded_by_max_connections(sleep: RecordingSleep) -> None:
    in_flight, peak, lock = [0], [0], threading.Lock()

    def respond(body: Mapping[str, Any]) -> Action:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        threading.Event().wait(0.02)
        with lock:
            in_flight[0] -= 1
        return None

    with Receiver(faults=Faults(respond=respond)) as counting:
        results = deliver(counting, outgoing(30), sleep, max_connections=3)
    assert len(results) == 30 and all(r.delivered for r in results.values())
    assert 1 <= peak[0] <= 3


def test_a_send_window_holds_sending_until_slots_come_back_and_stops_senders_when_closed(
    receiver: Receiver, sleep: RecordingSleep
) -> None:
    async def go() -> tuple[int, int, int]:
        window = SendWindow(3)
        async with httpx.AsyncClient() as client:
            destination = build_destination(settings(receiver.url, max_connections=2), client, sleep=sleep)
            results = destination.send(outgoing(10), window)
            first = await results.__anext__()
            while len(first) < 3:  # the answers to the three messages the window lets out
                first += await results.__anext__()
            await asyncio.sleep(0.2)
            held = len(receiver.records)  # nothing more was sent while no slot came back
            window.give_back(2)
            more = await results.__anext__()
            while len(first) + len(more) < 5:
                more += await results.__anext__()
            await asyncio.sleep(0.2)
            after_two = len(receiver.records)
            window.close()
            rest = [r async for ready in results for r in ready]
            return held, after_two, len(first) + len(more) + len(rest)

    held, after_two, answered = asyncio.run(go())
    assert held == 3
    assert after_two == 5
    assert answered == 5 == len(receiver.records)  # closing stopped the senders waiting for a slot
