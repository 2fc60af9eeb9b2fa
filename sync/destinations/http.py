"""The delivery engine every HTTP destination shares: connections, the rate limit, retries with backoff and
``Retry-After``, status classification, the breaker for an unreachable endpoint, and what it reports while
it sends.

A destination brings only a ``Target``: where to post, with which headers, and how its updates become
requests (one update per request, or many packed into a batch). The engine sends each request, retries it
as its failures allow, and answers for every update the request carried: a request's answer is the answer
for all of them, so an update is acknowledged only when every call it rendered to was accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from sync.clock import Clock, Sleep, utc_now
from sync.config import HttpDestinationConfig
from sync.destinations.base import Capabilities, DeliveryResult, Outgoing, SendWindow
from sync.destinations.breaker import Breaker
from sync.destinations.outcomes import Outcome, classify, retry_after_seconds
from sync.destinations.transport import connect_cause
from sync.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from sync.redact import redact

log = logging.getLogger(__name__)

# The longest Retry-After honoured within a run; a longer wait leaves the update for the next run.
MAX_RETRY_AFTER_S = 300.0
# After a 429 the pace is halved (at most once a second, never below the floor) and, once answers come back
# without one, raised again by a tenth of the configured pace each second: additive increase, multiplicative
# decrease, as TCP does, so that a destination allowing less than configured is not asked again and again.
SLOW_DOWN_FACTOR = 0.5
RECOVER_SHARE = 0.1
MIN_REQUESTS_PER_SECOND = 0.5
PACE_STEP_S = 1.0
# How much of an error response body is kept as the reason.
_REASON_CHARS = 300


@dataclass(frozen=True)
class Request:
    """One HTTP request: the updates it carries and its body, or why it is not sent (``refused``)."""

    messages: tuple[Outgoing, ...]
    body: bytes = b""
    sent_at: datetime | None = None
    refused: str | None = None


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False) writes it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # what orjson does not take (integers beyond 64 bits)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_all(values: list[dict[str, Any]]) -> list[bytes]:
    """Each value as ``encode_json`` writes it; orjson in one pass unless one of them needs the fallback."""
    try:
        return [orjson.dumps(value) for value in values]
    except orjson.JSONEncodeError:
        return [encode_json(value) for value in values]


class Target(Protocol):
    """What an HTTP destination adds to the engine."""

    capabilities: Capabilities
    label: str  # without secrets: "the ChartMogul webhook at https://hooks.example.com"
    url: str
    headers: Mapping[str, str]
    secrets: list[str]  # texts an error answer may echo that must never be stored or printed

    def requests(self, messages: Iterator[Outgoing], clock: Clock) -> Iterator[Request]:
        """The requests ``messages`` make, each built when it is taken (``sentAt`` is then)."""
        ...


class _WaitsTooLong(stop_base):
    """Stop when the destination asks for a longer pause than a run waits; the next run retries."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return isinstance(error, RetriableDeliveryError) and (error.retry_after or 0.0) > MAX_RETRY_AFTER_S


class _BreakerOpen(stop_base):
    """Stop retrying once the destination is taken to be unreachable."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._breaker.opened


class HttpDestination:
    """Delivers a target's requests with bounded concurrency, a rate limit and retries.

    The ``client`` is any ``httpx.AsyncClient``; ``sleep`` and ``clock`` are injectable so that tests
    control backoff time.
    """

    def __init__(
        self,
        target: Target,
        client: httpx.AsyncClient,
        settings: HttpDestinationConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.target = target
        self.capabilities = target.capabilities
        self.label = target.label
        self.breaker = breaker or Breaker()
        self.crashed: BaseException | None = None
        self.trouble: Counter[str] = Counter()
        self.limit_wait_s = 0.0
        self.attribute_types: dict[str, str] = {}
        self._client = client
        self._settings = settings
        self._headers = {"Content-Type": "application/json", **target.headers}
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        # One request per 1/rate seconds, at most two back to back. A bucket of one lost every late wake-up (the
        # event loop shares the interpreter with the thread recording answers): 31 requests/s of 40 with the loop
        # held up for 15 ms in every 30; with room for two, the next request makes up for a late one
        # (tests/test_delivery.py).
        self._limiter = AsyncLimiter(2, 2.0 / settings.requests_per_second)
        self.pace = settings.requests_per_second  # requests per second now: lower than configured after 429s
        self.throttled = 0  # 429 answers since last read
        self._paced_at = time.monotonic()
        self._resume_at = 0.0  # no request starts before this (monotonic): a Retry-After, for every request

    async def send(
        self, batch: Iterable[Outgoing], window: SendWindow | None = None
    ) -> AsyncGenerator[list[DeliveryResult]]:
        """Deliver every update of ``batch``; yield the results as they finish, each time all that are ready.

        Yielding what is ready (rather than waiting for a fixed count) lets the caller record answers as soon
        as they arrive, and in larger groups when they arrive faster than it records them. With a ``window``,
        each request waits for a slot per update in it before it is sent; the caller gives slots back.
        """
        requests = self.target.requests(iter(batch), self._clock)
        connections = self._settings.max_connections
        results: asyncio.Queue[list[DeliveryResult] | None] = asyncio.Queue(maxsize=4 * connections)
        workers = [asyncio.create_task(self._worker(requests, results, window)) for _ in range(connections)]
        running = len(workers)
        try:
            while running:
                ready = [await results.get()]
                while not results.empty():
                    ready.append(results.get_nowait())
                running -= sum(r is None for r in ready)
                done = [result for answered in ready if answered is not None for result in answered]
                if done:
                    yield done
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(
        self,
        requests: Iterator[Request],
        results: asyncio.Queue[list[DeliveryResult] | None],
        window: SendWindow | None,
    ) -> None:
        try:
            while (request := next(requests, None)) is not None:
                if window is not None and not await window.take(len(request.messages)):
                    return
                await results.put(await self.deliver(request))
        except Exception as exc:  # a bug, not a delivery failure: the run must fail loudly, not end "succeeded"
            self.crashed = self.crashed or exc
            if window is not None:
                window.close()
        finally:
            await results.put(None)

    async def deliver(self, request: Request) -> list[DeliveryResult]:
        """One request, retried as its failures allow; never raises for a delivery failure."""
        try:
            if request.refused is not None:
                raise PermanentDeliveryError(request.refused)
            response, attempts = await self.exchange("POST", self.target.url, request.body)
        except DeliveryError as exc:
            return self._failed(request, exc, exc.attempts or 0)
        finished = self._clock()
        return [
            DeliveryResult(m.user_id, m.message_id, True, attempts, request.sent_at, finished, response.status_code)
            for m in request.messages
        ]

    def _failed(self, request: Request, exc: DeliveryError, attempts: int) -> list[DeliveryResult]:
        """Every update of ``request`` answered with ``exc`` after ``attempts`` (0: never sent)."""
        finished = self._clock()
        sent_at = request.sent_at if attempts else None
        retriable = isinstance(exc, RetriableDeliveryError)
        return [
            DeliveryResult(
                m.user_id, m.message_id, False, attempts, sent_at, finished, exc.http_status, exc.reason, retriable
            )
            for m in request.messages
        ]

    async def exchange(
        self, method: str, url: str, body: bytes | None = None, *, expect: frozenset[int] = frozenset()
    ) -> tuple[httpx.Response, int]:
        """One HTTP exchange, retried as its failures allow: the answer (2xx, or a status in ``expect`` that
        the caller reads itself) and the attempts it took. DeliveryError (with its attempts) otherwise."""
        try:
            return await self._attempt(method, url, body, expect), 1
        except RetriableDeliveryError as first:  # the retry machinery only for the few that need it
            return await self._retry(method, url, body, expect, first)
        except DeliveryError as error:
            error.attempts = error.attempts or 1
            raise

    async def _attempt(self, method: str, url: str, body: bytes | None, expect: frozenset[int]) -> httpx.Response:
        if self.breaker.opened:
            raise RetriableDeliveryError(f"not sent: {self.label} is unreachable")
        waited = time.monotonic()
        for _ in range(2):  # again when a 429 came back while this request waited for its turn
            await self._wait_if_asked()
            async with self._limiter:
                pass
            if self._resume_at <= time.monotonic():
                break
        self.limit_wait_s += time.monotonic() - waited
        timeout = self._settings.timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, not each read: a trickle ends too
                response = await self._client.request(method, url, content=body, headers=self._headers, timeout=timeout)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self._unanswered(f"timed out after {timeout:g} s", exc) from exc
        except httpx.ConnectError as exc:
            raise self._unanswered(f"connection error: {connect_cause(exc)}", exc) from exc
        except httpx.HTTPError as exc:
            raise self._unanswered("connection error", exc) from exc
        self.breaker.answered()
        outcome = classify(response.status_code)
        if outcome is Outcome.OK or response.status_code in expect:
            self._recover()
            return response
        reason = self._reason(response)
        if outcome is Outcome.RETRY:
            self.trouble[f"HTTP {response.status_code}"] += 1
            retry_after = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
            if response.status_code == 429:
                self._slow_down(retry_after)
            raise RetriableDeliveryError(reason, http_status=response.status_code, retry_after=retry_after)
        raise PermanentDeliveryError(reason, http_status=response.status_code)

    async def _wait_if_asked(self) -> None:
        """Wait out a Retry-After the destination gave any request."""
        wait = self._resume_at - time.monotonic()
        if wait > 0:
            await self._sleep(wait)

    def _slow_down(self, retry_after: float | None) -> None:
        """A 429: every request waits out ``Retry-After``, and the pace is halved (once per step)."""
        self.throttled += 1
        now = time.monotonic()
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER_S:
            self._resume_at = max(self._resume_at, now + retry_after)
        if now - self._paced_at < min(PACE_STEP_S, 4 / self.pace) and self.pace < self._settings.requests_per_second:
            return  # already slowed down for this burst: the requests sent before it answer 429 too
        slower = max(MIN_REQUESTS_PER_SECOND, self.pace * SLOW_DOWN_FACTOR)
        if slower < self.pace:
            self._set_pace(slower, now)
            log.warning(
                "the destination is rate limiting (HTTP 429): slowing to %.3g requests/s",
                slower,
                extra={"event": "rate_limited", "destination": self.label, "requests_per_second": slower},
            )

    def _recover(self) -> None:
        """An answer without a 429: the pace goes back up, a tenth of the configured pace per step."""
        ceiling = self._settings.requests_per_second
        if self.pace >= ceiling:
            return
        now = time.monotonic()
        if now - self._paced_at < PACE_STEP_S or now < self._resume_at:
            return
        self._set_pace(min(ceiling, self.pace + ceiling * RECOVER_SHARE), now)
        if self.pace >= ceiling:
            log.info(
                "the destination takes the configured pace again: %.3g requests/s",
                ceiling,
                extra={"event": "rate_recovered", "destination": self.label},
            )

    def _set_pace(self, pace: float, now: float) -> None:
        self.pace, self._paced_at = pace, now
        self._limiter = AsyncLimiter(2, 2.0 / pace)

    def _unanswered(self, kind: str, error: Exception) -> RetriableDeliveryError:
        """An attempt with no HTTP answer: counted as trouble and by the breaker."""
        reason = f"{kind} ({type(error).__name__})"
        self.trouble[kind] += 1
        self.breaker.unanswered(reason)
        return RetriableDeliveryError(reason)

    def _reason(self, response: httpx.Response) -> str:
        """The status and the start of the answer, with the target's secrets taken out: an error page may
        echo the request path or its credentials."""
        text = redact(response.text.strip(), self.target.secrets)[:_REASON_CHARS]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")

    async def _retry(
        self, method: str, url: str, body: bytes | None, expect: frozenset[int], first: RetriableDeliveryError
    ) -> tuple[httpx.Response, int]:
        """Attempts 2 … max_attempts after a retriable first failure; returns (answer, attempts)."""
        if self._settings.max_attempts < 2 or (first.retry_after or 0.0) > MAX_RETRY_AFTER_S or self.breaker.opened:
            first.attempts = 1
            raise first
        await self._sleep(self._wait_after(first, 1))
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetriableDeliveryError),
            stop=stop_after_attempt(self._settings.max_attempts - 1) | _WaitsTooLong() | _BreakerOpen(self.breaker),
            wait=lambda state: self._wait_after(
                state.outcome.exception() if state.outcome else None, state.attempt_number + 1
            ),
            sleep=self._sleep,
            reraise=True,
        )
        attempts = 1
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = 1 + attempt.retry_state.attempt_number
                    response = await self._attempt(method, url, body, expect)
        except DeliveryError as last:
            last.attempts = attempts
            raise
        return response, attempts

    def _wait_after(self, error: BaseException | None, failures: int) -> float:
        """Retry-After when the destination gave one, else exponential backoff with full jitter."""
        if isinstance(error, RetriableDeliveryError) and error.retry_after is not None:
            return error.retry_after
        initial = self._settings.backoff_initial.total_seconds()
        ceiling = min(self._settings.backoff_max.total_seconds(), initial * 2 ** (failures - 1))
        return self._rng.uniform(initial / 2, ceiling) if ceiling > initial / 2 else ceiling
