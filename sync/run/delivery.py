"""Delivery within a run: updates rendered to calls, sent through the job's destination, answers recorded.

One ``Delivery`` lives for a whole run and owns one event loop, so the HTTP connections, the rate limit and
the breaker last from the first batch to the last. Answers are recorded in a worker thread as they arrive;
the acknowledged state advances in the transaction that records a 2xx.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import httpx

from sync.calls import CallSpec, render
from sync.clock import Clock, Sleep
from sync.config import JobConfig
from sync.destinations.base import DeliveryResult, Destination, Outgoing, SendWindow
from sync.destinations.breaker import Breaker
from sync.destinations.factory import build_destination
from sync.destinations.outcomes import WEBHOOK_REFUSED, is_rejection
from sync.destinations.transport import ClientFactory
from sync.errors import SyncError
from sync.model import Update
from sync.plan.updates import tally
from sync.scheduler.metrics import Metrics
from sync.store import Store
from sync.text import plural

if TYPE_CHECKING:
    from sync.run.report import RunReport

log = logging.getLogger(__name__)

# How many refusals of the destination itself (401/403) before anything was delivered stop a run early.
REFUSALS_TO_STOP = 3
# Updates sent but not yet recorded, per connection and per call a request carries: those in flight and those
# answered during one commit. A process killed at any moment sends at most this many again on the next run.
WINDOW_PER_CONNECTION = 4
# Progress and trouble are logged this often while a run sends.
PROGRESS_INTERVAL_S = 10.0


class Progress(Protocol):
    """What a progress display is told: the phase a run is in, and how many updates were answered."""

    def phase(self, name: str) -> None: ...

    def update(self, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class Pace:
    """The runner's settings delivery follows: time, patience after a stop, how often it reports."""

    clock: Clock
    sleep: Sleep
    client_factory: ClientFactory
    grace: timedelta
    progress_interval: float
    progress: Progress | None
    metrics: Metrics | None
    owner: str | None


class Delivery:
    """Sends a run's updates, batch by batch, on one event loop; ``close()`` ends it."""

    def __init__(
        self,
        store: Store,
        job: JobConfig,
        report: RunReport,
        spec: CallSpec,
        pace: Pace,
        stop: threading.Event,
        lost: threading.Event,
        breaker: Breaker,
    ) -> None:
        self.store, self.job, self.report, self.spec, self.pace = store, job, report, spec, pace
        self.stop, self.lost, self.breaker = stop, lost, breaker
        self._loop = asyncio.Runner()
        self._client: httpx.AsyncClient | None = None
        self._destination: Destination | None = None
        self._refusals = _Refusals()

    def send(self, updates: Sequence[Update], now: datetime) -> None:
        """Deliver ``updates`` and record every answer; SyncError when the run must stop (an unreachable or
        refusing destination, a sender that crashed)."""
        self._loop.run(self._deliver(updates, now))

    def close(self) -> None:
        if self._client is not None:
            self._loop.run(self._client.aclose())
        self._loop.close()

    async def _open(self) -> Destination:
        if self._destination is None:
            settings = self.job.destination
            self._client = self.pace.client_factory(settings.max_connections)
            self._destination = build_destination(
                settings, self._client, sleep=self.pace.sleep, clock=self.pace.clock, breaker=self.breaker
            )
            remote = self._destination.capabilities.remote_ids
            if remote is not None:
                self._destination.attribute_types.update(self.store.remote_attributes(self.job.name, remote.scope))
        return self._destination

    async def _deliver(self, updates: Sequence[Update], now: datetime) -> None:
        destination = await self._open()
        job, report = self.job, self.report
        report.destination = destination.label
        per_request = destination.capabilities.calls_per_request
        window = SendWindow(WINDOW_PER_CONNECTION * job.destination.max_connections * per_request)
        by_user = {u.user_id: u for u in updates}
        remote = destination.capabilities.remote_ids
        recorder = _Recorder(self.store, job, report, by_user, window, self.pace, self._refusals)
        recorder.scope = remote.scope if remote is not None else None
        recorder.total = report.updates

        def halted() -> bool:
            return self.stop.is_set() or self.lost.is_set() or self._refusals.abort is not None or self.breaker.opened

        remote_ids = (
            self.store.remote_ids(job.name, remote.scope, list(by_user), now - remote.rematch_after)
            if remote is not None
            else {}
        )
        messages = self._outgoing(updates, now, halted, remote_ids)
        consumer = asyncio.create_task(recorder.consume(destination.send(messages, window)))
        watchdog = asyncio.create_task(self._watchdog(consumer, halted))
        monitor = asyncio.create_task(self._monitor(destination, recorder))
        try:
            await consumer
        except asyncio.CancelledError:
            log.warning(
                "requests still in flight were abandoned after the grace period",
                extra={"job": job.name, "run_id": report.run_id},
            )
        finally:
            watchdog.cancel()
            monitor.cancel()
            await recorder.drain()  # answers that arrived before a stop or a failure are recorded too
            self._log_progress(destination, recorder)
            report.throttled += destination.throttled
            destination.throttled = 0
            if self.pace.metrics is not None:
                self.pace.metrics.waited(job.name, destination.limit_wait_s)
                destination.limit_wait_s = 0.0
        if destination.crashed is not None:
            error = destination.crashed
            raise SyncError(
                f"job {job.name!r}: delivery failed unexpectedly ({type(error).__name__}: {error}); "
                "the updates not delivered stay pending for the next run"
            )
        if self.breaker.opened:
            raise SyncError(f"job {job.name!r}: {unreachable(destination.label, self.breaker)}")
        if self._refusals.abort:
            raise SyncError(f"job {job.name!r}: {self._refusals.abort}")

    def _outgoing(
        self, updates: Sequence[Update], now: datetime, halted: Callable[[], bool], remote_ids: dict[str, str]
    ) -> Iterator[Outgoing]:
        for update in updates:
            if halted():
                return
            calls = render(update, self.spec, timestamp=now)
            yield Outgoing(update.user_id, update.message_id, calls, remote_ids.get(update.user_id))

    async def _monitor(self, destination: Destination, recorder: _Recorder) -> None:
        """Every ``progress_interval``: progress at INFO (unless a bar shows it), trouble at WARNING."""
        while True:
            await asyncio.sleep(self.pace.progress_interval)
            self._log_progress(destination, recorder)

    def _log_progress(self, destination: Destination, recorder: _Recorder) -> None:
        report = recorder.report
        where = {"job": report.job, "run_id": report.run_id}
        if destination.trouble:
            reasons = ", ".join(f"{reason} ×{count}" for reason, count in destination.trouble.most_common())
            log.warning(
                "the destination is failing requests; retrying",
                extra={
                    **where,
                    "event": "delivery_trouble",
                    "attempts": destination.trouble.total(),
                    "reasons": reasons,
                },
            )
            destination.trouble.clear()
        if self.pace.progress is None:
            done = report.answered
            log.info(
                "delivery progress",
                extra={
                    **where,
                    "done": done,
                    "total": recorder.total or len(recorder.by_user),
                    "delivered": report.delivered,
                    "failed": report.failed,
                    "unmatched": report.unmatched,
                },
            )

    async def _watchdog(self, consumer: asyncio.Task[None], halted: Callable[[], bool]) -> None:
        """On a stop request: hand out no more updates; after the grace period, abandon what is in flight."""
        while not halted():
            await asyncio.sleep(0.05)
        log.info("sending stopped: finishing requests in flight", extra={"grace_s": self.pace.grace.total_seconds()})
        await asyncio.sleep(self.pace.grace.total_seconds())
        consumer.cancel()


class _Refusals:
    """A destination answering 401/403 to the first requests of a run refuses the run itself (a revoked
    webhook, a wrong write key): stop instead of failing every update."""

    def __init__(self) -> None:
        self._requests: set[tuple[object, object]] = set()  # refused requests, by the two moments they share
        self._updates = 0
        self._delivered = 0
        self._status: int | None = None

    def watch(self, result: DeliveryResult) -> None:
        self._delivered += result.delivered
        if result.http_status in WEBHOOK_REFUSED and not self._delivered:
            self._updates += 1
            self._status = result.http_status
            self._requests.add((result.sent_at, result.finished_at))

    @property
    def abort(self) -> str | None:
        """Why the run stops, once three updates were refused before any was delivered; it counts the refused
        requests too, since one batch carries many updates."""
        if self._updates < REFUSALS_TO_STOP:
            return None
        requests = len(self._requests)
        what = "request" if requests == 1 else f"{requests} requests"
        return (
            f"the destination refused the first {what} ({plural(self._updates, 'update')}) with HTTP {self._status}; "
            "its URL or key may be revoked or wrong. Nothing else was sent; the updates stay pending for the next run"
        )


class _Recorder:
    """Records delivery results as they arrive, in a worker thread so that sending goes on meanwhile.

    Commits follow one another without pause; each takes every answer that arrived since the previous one
    started, so an answer waits for at most one commit before it is durable. Each commit gives its answers'
    slots in the send window back, so no more than the window's size is ever answered and unrecorded.
    """

    def __init__(
        self,
        store: Store,
        job: JobConfig,
        report: RunReport,
        by_user: dict[str, Update],
        window: SendWindow,
        pace: Pace,
        refusals: _Refusals,
    ) -> None:
        self.store, self.job, self.report, self.by_user = store, job.name, report, by_user
        self.window, self.pace, self.refusals = window, pace, refusals
        self.dead_after = job.destination.dead_after
        self.total = 0
        self.scope: str | None = None  # where the destination's record ids are kept, if it finds records
        self._pending: list[DeliveryResult] = []
        self._writing: asyncio.Task[None] | None = None

    async def consume(self, results: AsyncGenerator[list[DeliveryResult]]) -> None:
        async with aclosing(results) as closing:  # closing ends the destination's workers on cancellation
            async for ready in closing:
                self._pending.extend(ready)
                for result in ready:
                    self.refusals.watch(result)
                self._write()
        await self.drain()

    async def drain(self) -> None:
        """Wait for the commits under way and record whatever is still waiting; raises what a commit raised."""
        while self._writing is not None or self._pending:
            await self._write()

    def _write(self) -> asyncio.Task[None]:
        """The chain of commits under way, started when there is none."""
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_pending())
        return self._writing

    async def _write_pending(self) -> None:
        """Commit what waits, then what arrived meanwhile, until nothing waits.

        The chain does not depend on new answers arriving to go on: with the window full, none would.
        A failed commit closes the window, so that nothing more is sent, and stays the task's outcome.
        """
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.record, batch)
            except BaseException:
                self.window.close()
                raise
            self.window.give_back(len(batch))
        self._writing = None

    def record(self, ready: list[DeliveryResult]) -> None:
        pairs = [(self.by_user[r.user_id], r) for r in ready]
        recorded = self.store.record_results(
            self.job, self.report.run_id, pairs, self.dead_after, self.pace.owner, scope=self.scope
        )
        if not recorded:
            log.warning(
                "answers recorded without advancing the state: the job's lease was taken over",
                extra={"job": self.job, "run_id": self.report.run_id, "answers": len(ready)},
            )
        tally([self.by_user[r.user_id] for r in ready if r.delivered], self.report.key_counts, "delivered_")
        if self.pace.metrics is not None:
            self.pace.metrics.results(self.job, ready)
        for result in ready:
            self.report.delivered += result.delivered
            self.report.unmatched += result.unmatched
            if not result.delivered and not result.unmatched:
                self.report.failed += 1
                self.report.rejected += is_rejection(result)
                self.report.reasons[_reason_of(result)] += 1
        if self.pace.progress:
            self.pace.progress.update(self.report.answered, self.total or len(self.by_user))


def _reason_of(result: DeliveryResult) -> str:
    """A failed update's reason in a few words, for a run's tally of causes."""
    return (result.error or "no answer").splitlines()[0][:120]


def unreachable(label: str, breaker: Breaker) -> str:
    seconds = breaker.clock() - (breaker.since or breaker.clock())
    return (
        f"{label} is unreachable: {breaker.in_a_row} attempts in a row got no answer over {seconds:.0f} s "
        f"(last: {breaker.last_reason}). The run stopped; the updates not delivered stay pending for the next "
        "run. Check that the host is up and reachable from this machine (DNS, firewall, proxy) and that the "
        "URL and credentials in the environment are right"
    )
