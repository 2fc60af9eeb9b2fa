"""The destination seam: ``send(batch)`` yields one ``DeliveryResult`` per ``Outgoing`` message, in lists of
the results that are ready together."""

from __future__ import annotations

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


class Destination(Protocol):
    def send(self, batch: Iterable[Outgoing]) -> AsyncGenerator[list[DeliveryResult]]: ...
