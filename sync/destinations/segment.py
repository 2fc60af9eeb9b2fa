"""Segment's HTTP Tracking API ``/v1/batch`` (or any service that speaks it): calls packed into batches.

``POST {"batch": [calls…]}`` with HTTP basic auth, the write key as the user and an empty password. A batch
is cut at 2,500 calls or 475,000 bytes, whichever comes first (config.SEGMENT_*); all the calls of one update
travel in the same batch, so a batch's answer acknowledges whole updates. A call over 32 KB, or an update
whose calls do not fit one batch, is refused before sending (Segment answers 400 for the whole batch).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from datetime import datetime

from sync.clock import Clock, iso
from sync.config import (
    SEGMENT_MAX_CALL_BYTES,
    SEGMENT_MAX_CALLS,
    SEGMENT_MAX_CONNECTIONS,
    SEGMENT_MAX_REQUEST_BYTES,
    SEGMENT_REQUESTS_PER_SECOND,
    SegmentConfig,
)
from sync.destinations.base import Capabilities, Outgoing
from sync.destinations.http import Request, encode_all, encode_json
from sync.redact import public_label

CAPABILITIES = Capabilities(
    call_types=frozenset({"identify", "track", "group"}),
    calls_per_request=SEGMENT_MAX_CALLS,
    bytes_per_request=SEGMENT_MAX_REQUEST_BYTES,
    bytes_per_call=SEGMENT_MAX_CALL_BYTES,
    requests_per_second=SEGMENT_REQUESTS_PER_SECOND,
    max_connections=SEGMENT_MAX_CONNECTIONS,
)

_OPEN, _CLOSE = b'{"batch":[', b"]}"


class SegmentBatch:
    """The target: updates packed into ``/v1/batch`` requests."""

    def __init__(self, settings: SegmentConfig) -> None:
        self.capabilities = CAPABILITIES
        key = settings.write_key.get_secret_value()
        token = base64.b64encode(f"{key}:".encode()).decode()
        self.url = settings.endpoint
        self.headers: Mapping[str, str] = {"Authorization": f"Basic {token}"}
        self.secrets = sorted({key, token, f"{key}:"}, key=len, reverse=True)
        self.label = f"the Segment endpoint at {public_label(self.url)}"

    def requests(self, messages: Iterator[Outgoing], clock: Clock) -> Iterator[Request]:
        limits = self.capabilities
        room = limits.bytes_per_request - len(_OPEN) - len(_CLOSE)
        packed: list[Outgoing] = []
        encoded: list[bytes] = []
        size = calls = 0
        sent_at = clock()  # when this batch is built and sent; each batch's calls carry their own
        stamp = iso(sent_at)
        for message in messages:
            own = _encoded(message, stamp)
            own_size, own_calls = len(own) + 1, len(message.calls)  # with its comma
            refused = None if own_size <= limits.bytes_per_call else _refusal(message, own_size, room, limits)
            if refused is not None:
                yield Request((message,), refused=refused)
                continue
            if packed and (size + own_size > room or calls + own_calls > limits.calls_per_request):
                yield _batch(packed, encoded, sent_at)
                packed, encoded, size, calls = [], [], 0, 0
                sent_at = clock()
                stamp = iso(sent_at)
                own = _encoded(message, stamp)  # the same size: a timestamp is always as long
            packed.append(message)
            if own:  # an update with no calls adds nothing to the body
                encoded.append(own)
            size += own_size
            calls += own_calls
        if packed:
            yield _batch(packed, encoded, sent_at)


def _encoded(message: Outgoing, stamp: str) -> bytes:
    """The message's calls as JSON, comma-separated, stamped with the moment their batch is sent (the calls
    were built for this delivery: stamping them in place saves a copy of each). Encoded as one list: one
    encoder call for all of them."""
    for call in message.calls:
        call["sentAt"] = stamp
    return encode_json(list(message.calls))[1:-1]


def _refusal(message: Outgoing, size: int, room: int, limits: Capabilities) -> str | None:
    """Why an update's calls (``size`` bytes together) cannot be sent at all, if they cannot."""
    largest = max(map(len, encode_all(list(message.calls))), default=0)
    if largest > limits.bytes_per_call:
        return f"rejected before sending: a call is {largest} bytes, over Segment's {limits.bytes_per_call}-byte limit"
    calls = message.calls
    if len(calls) > limits.calls_per_request or size > room:
        return (
            f"rejected before sending: the update's {len(calls)} calls do not fit one batch "
            f"({limits.calls_per_request} calls, {limits.bytes_per_request} bytes)"
        )
    return None


def _batch(messages: list[Outgoing], calls: list[bytes], sent_at: datetime) -> Request:
    return Request(tuple(messages), _OPEN + b",".join(calls) + _CLOSE, sent_at)
