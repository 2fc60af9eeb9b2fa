"""How an HTTP answer is classified: delivered, worth retrying, or a permanent failure."""

from __future__ import annotations

import enum
from datetime import datetime
from email.utils import parsedate_to_datetime

from sync.destinations.base import DeliveryResult


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    FAIL = "fail"


# 408 Request Timeout, 423 Locked, 429 Too Many Requests: the same request may succeed later.
_RETRIABLE_4XX = frozenset({408, 423, 429})


def classify(status: int) -> Outcome:
    """2xx delivered; 408, 423, 429 and 5xx but 501 (Not Implemented) retried; anything else fails."""
    if 200 <= status < 300:
        return Outcome.OK
    if status in _RETRIABLE_4XX or (500 <= status < 600 and status != 501):
        return Outcome.RETRY
    return Outcome.FAIL


# 401 and 403 refuse the webhook itself, not the record: they never count against a user's update.
WEBHOOK_REFUSED = frozenset({401, 403})


def is_rejection(result: DeliveryResult) -> bool:
    """The destination (or our own pre-send checks) permanently refused this record. A subject the
    destination has no record for is not refused: later runs try it again."""
    return (
        not result.delivered
        and not result.retriable
        and not result.unmatched
        and result.http_status not in WEBHOOK_REFUSED
    )


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from ``now``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - now).total_seconds())
