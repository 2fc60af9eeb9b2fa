"""The destination seam.

A destination takes ``Outgoing`` updates (each the calls one update rendered to) and yields one
``DeliveryResult`` per update, in lists of the results that are ready together. What it can take and how it
likes to be fed are its ``Capabilities``: the runner sizes its send window from them and never asks which
destination it talks to.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sync.destinations.breaker import Breaker


@dataclass(frozen=True)
class Outgoing:
    """One update to deliver: the Segment-spec calls it rendered to, all accepted or none. The calls are built
    for this delivery; the destination stamps their ``sentAt``."""

    user_id: str
    message_id: str
    calls: tuple[dict[str, Any], ...]
    # the subject's record at the destination when found before; "" when it was found to have none lately
    remote_id: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """One update's answer. ``unmatched``: the destination has no record for the subject (not an error; not
    acknowledged; tried again by later runs). ``remote_id``: the record written, to keep for later runs;
    ``created``: the attributes the write created there, with their types; ``requests``: what was sent, when
    the calls alone do not say it."""

    user_id: str
    message_id: str
    delivered: bool
    attempts: int
    sent_at: datetime | None
    finished_at: datetime
    http_status: int | None = None
    error: str | None = None
    retriable: bool = False
    unmatched: bool = False
    remote_id: str | None = None
    created: tuple[tuple[str, str], ...] = ()
    # the requests made, where they depend on what the destination held: (method, path, body or None)
    requests: tuple[tuple[str, str, str | None], ...] = ()


@dataclass(frozen=True)
class RemoteIds:
    """A destination that finds each subject's record before writing keeps the ids it found under ``scope``;
    a subject found to have none is looked up again only ``rematch_after`` later."""

    scope: str
    rematch_after: timedelta


@dataclass(frozen=True)
class Capabilities:
    """What a destination takes and how: the call types it accepts; how many calls and bytes one request
    carries (one call per request: no batching); its default pace; whether an answer is for the whole request
    or per item; whether it finds each subject's record before writing, and under which scope it keeps the
    ids it found (``remote_ids``)."""

    call_types: frozenset[str]
    calls_per_request: int
    bytes_per_request: int
    bytes_per_call: int
    requests_per_second: float
    max_connections: int
    results: Literal["per_request", "per_item"] = "per_request"
    remote_ids: RemoteIds | None = None

    @property
    def batches(self) -> bool:
        return self.calls_per_request > 1


class SendWindow:
    """At most ``size`` updates sent and not yet recorded.

    A sender takes a slot for each update of a request before it sends it, and the recorder gives slots back
    once the answers are committed, so a process that dies at any moment leaves at most ``size`` answered but
    unrecorded updates: the only ones the next run sends again.
    """

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def take(self, count: int = 1) -> bool:
        """Wait for ``count`` slots; False once the window is closed (nothing more is to be sent)."""
        for taken in range(count):
            await self._slots.acquire()
            if self._closed:
                self.give_back(taken + 1)  # wakes the next sender waiting, which stops too
                return False
        return True

    def give_back(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def close(self) -> None:
        """Stop every sender at its next slot, including those waiting for one now."""
        self._closed = True
        self._slots.release()


class Destination(Protocol):
    """What a run uses of a destination: ``send``, what it can do, and what it has to say while it sends."""

    capabilities: Capabilities
    label: str  # names the destination without its secrets, for messages
    breaker: Breaker
    trouble: Counter[str]  # failed attempts worth retrying, by reason, since last read
    limit_wait_s: float  # time requests waited for the rate limit
    throttled: int  # 429 answers since last read
    crashed: BaseException | None  # what ended a sender that should never have ended
    attribute_types: dict[str, str]  # attributes created at the destination before: key → type

    def send(
        self, batch: Iterable[Outgoing], window: SendWindow | None = None
    ) -> AsyncGenerator[list[DeliveryResult]]: ...
