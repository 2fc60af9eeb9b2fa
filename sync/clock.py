"""Time: the clock and sleep a run is given (tests pass their own), and how moments are written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import lru_cache

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=256)  # a run stamps every call with the same timestamp
def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as Segment writes timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
