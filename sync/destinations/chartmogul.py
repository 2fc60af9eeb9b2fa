"""The ChartMogul (Actions) destination: identify calls become "Send Contact" bodies, one POST each.

The body is field for field what Segment's ChartMogul action posts for the same identify call, with
one addition, ``custom_attributes``: the audience and trait keys of the update with their new values.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from sync.config import DestinationConfig
from sync.destinations.base import DeliveryResult, Outgoing, SendWindow
from sync.destinations.breaker import Breaker
from sync.destinations.outcomes import Outcome, classify, retry_after_seconds
from sync.errors import DeliveryError, PermanentDeliveryError, RetriableDeliveryError
from sync.messages import iso
from sync.redact import public_label, redact, secret_parts

# Segment: one call may be at most 32 KB.
MAX_BODY_BYTES = 32 * 1024
# The longest Retry-After honoured within a run; a longer wait leaves the update for the next run.
MAX_RETRY_AFTER_S = 300.0
# How much of an error response body is kept as the reason.
_REASON_CHARS = 300

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def send_contact_body(call: Mapping[str, Any]) -> dict[str, Any]:
    """The "Send Contact" body for an identify call; absent values are left out, never sent as null."""
    traits: Mapping[str, Any] = call.get("traits") or {}
    body: dict[str, Any] = {
        "type": "Send Contact",
        "message_id": call.get("messageId"),
        "timestamp": call.get("timestamp"),
        "sent_at": call.get("sentAt"),
    }
    fields = {
        "user_id": call.get("userId"),
        "anonymous_id": call.get("anonymousId"),
        "email": traits.get("email"),
        "first_name": traits.get("firstName"),
        "last_name": traits.get("lastName"),
        "name": traits.get("name"),
        "title": traits.get("title"),
        "phone": traits.get("phone"),
        "linked_in": traits.get("linkedIn"),
        "twitter": traits.get("twitter"),
    }
    body.update({k: v for k, v in fields.items() if v is not None and v != ""})
    company = traits.get("company")
    if isinstance(company, Mapping) and company.get("id"):
        body["company"] = {k: company[k] for k in ("id", "name") if company.get(k) is not None}
    computations = (call.get("context") or {}).get("personas", {}).get("computations", [])
    attributes = {c["computation_key"]: traits.get(c["computation_key"]) for c in computations}
    if attributes:
        body["custom_attributes"] = attributes
    return body


def encode_body(call: Mapping[str, Any]) -> bytes:
    """The JSON request body; raises PermanentDeliveryError when the upstream action would reject it."""
    body = send_contact_body(call)
    if not body.get("user_id") and not body.get("anonymous_id"):
        raise PermanentDeliveryError("rejected before sending: user_id or anonymous_id must be present")
    if set(body) <= {"type", "message_id", "timestamp", "sent_at", "user_id", "anonymous_id"}:
        raise PermanentDeliveryError("rejected before sending: the body carries nothing but identifiers")
    try:  # compact UTF-8 JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False) writes it
        encoded = orjson.dumps(body)
    except orjson.JSONEncodeError:  # what orjson does not take (integers beyond 64 bits)
        encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > MAX_BODY_BYTES:
        raise PermanentDeliveryError(
            f"rejected before sending: body is {len(encoded)} bytes, over the {MAX_BODY_BYTES}-byte limit"
        )
    return encoded


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


class ChartMogulDestination:
    """Delivers identify calls to a ChartMogul webhook with bounded concurrency, a rate limit and retries.

    The ``client`` is any ``httpx.AsyncClient``; ``sleep`` and ``clock`` are injectable so that tests
    control backoff time.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: DestinationConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self._client = client
        self._url = settings.webhook_url.get_secret_value()
        self._secrets = secret_parts(self._url)
        self.label = f"the ChartMogul webhook at {public_label(self._url)}"
        self.breaker = breaker or Breaker()
        self.crashed: BaseException | None = None  # what ended a worker that should never have ended
        self.trouble: Counter[str] = Counter()  # failed attempts worth retrying, by reason, since last read
        self.limit_wait_s = 0.0  # time requests waited for the rate limit
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        # One request per 1/rate seconds, at most two back to back. A bucket of one lost every late wake-up (the
        # event loop shares the interpreter with the thread recording answers): 31 requests/s of 40 with the loop
        # held up for 15 ms in every 30; with room for two, the next request makes up for a late one
        # (tests/test_delivery.py).
        self._limiter = AsyncLimiter(2, 2.0 / settings.requests_per_second)

    async def send(
        self, batch: Iterable[Outgoing], window: SendWindow | None = None
    ) -> AsyncGenerator[list[DeliveryResult]]:
        """Deliver every message of ``batch``; yield the results as they finish, each time all that are ready.

        Yielding what is ready (rather than waiting for a fixed count) lets the caller record answers as soon
        as they arrive, and in larger groups when they arrive faster than it records them. With a ``window``,
        each message waits for a slot in it before it is sent; the caller gives slots back.
        """
        messages = iter(batch)
        results: asyncio.Queue[DeliveryResult | None] = asyncio.Queue(maxsize=4 * self._settings.max_connections)
        workers = [
            asyncio.create_task(self._worker(messages, results, window)) for _ in range(self._settings.max_connections)
        ]
        running = len(workers)
        try:
            while running:
                ready = [await results.get()]
                while not results.empty():
                    ready.append(results.get_nowait())
                running -= sum(r is None for r in ready)
                done = [r for r in ready if r is not None]
                if done:
                    yield done
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(
        self,
        messages: Iterator[Outgoing],
        results: asyncio.Queue[DeliveryResult | None],
        window: SendWindow | None,
    ) -> None:
        try:
            while window is None or await window.take():
                message = next(messages, None)
                if message is None:
                    if window is not None:
                        window.give_back(1)
                    return
                await results.put(await self.deliver(message))
        except Exception as exc:  # a bug, not a delivery failure: the run must fail loudly, not end "succeeded"
            self.crashed = self.crashed or exc
            if window is not None:
                window.close()
        finally:
            await results.put(None)

    async def deliver(self, message: Outgoing) -> DeliveryResult:
        """One message, retried as its failures allow; never raises for a delivery failure."""
        sent_at = self._clock()
        call = {**message.call, "sentAt": iso(sent_at)}
        attempts = 0
        try:
            body = encode_body(call)
            attempts = 1
            try:
                status = await self._post(body)
            except RetriableDeliveryError as first:  # the retry machinery only for the few that need it
                status, attempts = await self._retry(body, first)
        except DeliveryError as exc:
            attempts = exc.attempts or attempts
            return DeliveryResult(
                message.user_id,
                message.message_id,
                False,
                attempts,
                sent_at if attempts else None,
                self._clock(),
                exc.http_status,
                exc.reason,
                isinstance(exc, RetriableDeliveryError),
            )
        return DeliveryResult(message.user_id, message.message_id, True, attempts, sent_at, self._clock(), status)

    async def _post(self, body: bytes) -> int:
        if self.breaker.opened:
            raise RetriableDeliveryError(f"not sent: {self.label} is unreachable")
        waited = time.monotonic()
        async with self._limiter:
            pass
        self.limit_wait_s += time.monotonic() - waited
        timeout = self._settings.timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, not each read: a trickle ends too
                response = await self._client.post(
                    self._url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self._unanswered(f"timed out after {timeout:g} s", exc) from exc
        except httpx.HTTPError as exc:
            raise self._unanswered("connection error", exc) from exc
        self.breaker.answered()
        outcome = classify(response.status_code)
        if outcome is Outcome.OK:
            return response.status_code
        reason = self._reason(response)
        if outcome is Outcome.RETRY:
            self.trouble[f"HTTP {response.status_code}"] += 1
            raise RetriableDeliveryError(
                reason,
                http_status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After"), self._clock()),
            )
        raise PermanentDeliveryError(reason, http_status=response.status_code)

    def _unanswered(self, kind: str, error: Exception) -> RetriableDeliveryError:
        """An attempt with no HTTP answer: counted as trouble and by the breaker."""
        reason = f"{kind} ({type(error).__name__})"
        self.trouble[kind] += 1
        self.breaker.unanswered(reason)
        return RetriableDeliveryError(reason)

    def _reason(self, response: httpx.Response) -> str:
        """The status and the start of the answer, with the URL's secret parts (path, query, credentials)
        taken out: an error page may echo the request path."""
        text = redact(response.text.strip(), self._secrets)[:_REASON_CHARS]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")

    async def _retry(self, body: bytes, first: RetriableDeliveryError) -> tuple[int, int]:
        """Attempts 2 … max_attempts after a retriable first failure; returns (status, attempts)."""
        if self._settings.max_attempts < 2 or (first.retry_after or 0.0) > MAX_RETRY_AFTER_S or self.breaker.opened:
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
                    status = await self._post(body)
        except DeliveryError as last:
            last.attempts = attempts
            raise
        return status, attempts

    def _wait_after(self, error: BaseException | None, failures: int) -> float:
        """Retry-After when the destination gave one, else exponential backoff with full jitter."""
        if isinstance(error, RetriableDeliveryError) and error.retry_after is not None:
            return error.retry_after
        initial = self._settings.backoff_initial.total_seconds()
        ceiling = min(self._settings.backoff_max.total_seconds(), initial * 2 ** (failures - 1))
        return self._rng.uniform(initial / 2, ceiling) if ceiling > initial / 2 else ceiling
