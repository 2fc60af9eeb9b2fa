"""The destination seam: ``send(batch)`` yields one ``DeliveryResult`` per ``Outgoing`` message, in lists of
the results that are ready together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Outgoing:
    """One identify call to deliver; ``sentAt`` is filled in when it is first sent."""

    user_id: str
    message_id: str
    call: Mapping[str, Any]


@dataclass(frozen=True)
class DeliveryResult:
    user_id: str
    message_id: str
    delivered: bool
    attempts: int
    sent_at: datetime | None
    finished_at: datetime
    http_status: int | None = None
    error: str | None = None
    retriable: bool = False


class SendWindow:
    """At most ``size`` messages sent and not yet recorded.

    A sender takes a slot before each message and the recorder gives slots back once the answers are
    committed, so a process that dies at any moment leaves at most ``size`` answered but unrecorded
    messages: the only ones the next run sends again.
    """

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def take(self) -> bool:
        """Wait for a slot; False once the window is closed (nothing more is to be sent)."""
        await self._slots.acquire()
        if self._closed:
            self._slots.release()  # wakes the next sender waiting, which stops too
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
    def send(
        self, batch: Iterable[Outgoing], window: SendWindow | None = None
    ) -> AsyncGenerator[list[DeliveryResult]]: ...
