"""The ChartMogul (Actions) webhook: each identify call becomes a "Send Contact" body, one POST each.

The body is what Segment's published ChartMogul action posts for the same identify call under its default
mapping, with one addition, ``custom_attributes``: the audience and trait keys of the update with their new
values. Where the published action would refuse the whole event for one bad field, the field is left out
instead and the rest is sent, so that a malformed profile value never holds back an audience change
(README, "The Send Contact body"):

- ``first_name`` / ``last_name``: the action reads ``traits.first_name`` / ``traits.last_name``; identify
  calls that follow Segment's spec say ``firstName`` / ``lastName``, which the action's default mapping drops.
  Both are read here, the action's name first.
- ``company``: the action refuses an event whose company has no ``id``; here the company is left out.
- ``email`` that is not an email address, ``linked_in`` that is not an absolute URI: the action refuses the
  event; here the field is left out. (An internationalised address such as ``zoë@example.com``, which the
  action's ASCII-only check refuses too, is kept: it is an address.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from sync.clock import Clock, iso
from sync.config import ChartMogulWebhookConfig
from sync.config.values import CHARTMOGUL_MAX_CONNECTIONS, CHARTMOGUL_REQUESTS_PER_SECOND
from sync.destinations.base import Capabilities, Outgoing
from sync.destinations.http import Request, encode_json
from sync.errors import PermanentDeliveryError
from sync.redact import public_label, secret_parts

# Segment: one call may be at most 32 KB; the action posts one call per request.
MAX_BODY_BYTES = 32 * 1024

CAPABILITIES = Capabilities(
    call_types=frozenset({"identify"}),
    calls_per_request=1,
    bytes_per_request=MAX_BODY_BYTES,
    bytes_per_call=MAX_BODY_BYTES,
    requests_per_second=CHARTMOGUL_REQUESTS_PER_SECOND,
    max_connections=CHARTMOGUL_MAX_CONNECTIONS,
)

# An address: one "@", something before it, a dotted domain after it, no spaces.
_EMAIL = re.compile(r"^[^\s@]+@[^\s@.]+(?:\.[^\s@.]+)+$")
# Its `linked_in` field has format "uri": an absolute URI, a scheme then something after the colon.
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$", re.IGNORECASE)


def is_email(value: object) -> bool:
    return isinstance(value, str) and _EMAIL.match(value) is not None


def is_uri(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(_SCHEME.match(parts.scheme)) and len(value) > len(parts.scheme) + 1


def send_contact_body(call: Mapping[str, Any]) -> dict[str, Any]:
    """The "Send Contact" body for an identify call; absent values are left out, never sent as null."""
    traits: Mapping[str, Any] = call.get("traits") or {}
    body: dict[str, Any] = {
        "type": "Send Contact",
        "message_id": call.get("messageId"),
        "timestamp": call.get("timestamp"),
        "sent_at": call.get("sentAt"),
    }
    email, linked_in = traits.get("email"), traits.get("linkedIn")
    fields = {
        "user_id": call.get("userId"),
        "anonymous_id": call.get("anonymousId"),
        "email": email if is_email(email) else None,
        "first_name": _first(traits, "first_name", "firstName"),
        "last_name": _first(traits, "last_name", "lastName"),
        "name": traits.get("name"),
        "title": traits.get("title"),
        "phone": traits.get("phone"),
        "linked_in": linked_in if is_uri(linked_in) else None,
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


def _first(traits: Mapping[str, Any], *names: str) -> Any:
    return next((traits[n] for n in names if traits.get(n) is not None and traits.get(n) != ""), None)


def encode_body(call: Mapping[str, Any]) -> bytes:
    """The JSON request body; raises PermanentDeliveryError when the upstream action would reject it."""
    body = send_contact_body(call)
    if not body.get("user_id") and not body.get("anonymous_id"):
        raise PermanentDeliveryError("rejected before sending: user_id or anonymous_id must be present")
    if set(body) <= {"type", "message_id", "timestamp", "sent_at", "user_id", "anonymous_id"}:
        raise PermanentDeliveryError("rejected before sending: the body carries nothing but identifiers")
    encoded = encode_json(body)
    if len(encoded) > MAX_BODY_BYTES:
        raise PermanentDeliveryError(
            f"rejected before sending: body is {len(encoded)} bytes, over the {MAX_BODY_BYTES}-byte limit"
        )
    return encoded


class ChartMogulWebhook:
    """The target: one Send Contact body per POST to the webhook URL."""

    def __init__(self, settings: ChartMogulWebhookConfig) -> None:
        self.capabilities = CAPABILITIES
        self.url = settings.webhook_url.get_secret_value()
        self.secrets = secret_parts(self.url)
        self.label = f"the ChartMogul webhook at {public_label(self.url)}"
        self.headers: Mapping[str, str] = {}

    def requests(self, messages: Iterator[Outgoing], clock: Clock) -> Iterator[Request]:
        for message in messages:
            sent_at = clock()
            try:
                body = encode_body({**message.calls[0], "sentAt": iso(sent_at)})
            except PermanentDeliveryError as exc:
                yield Request((message,), refused=exc.reason)
                continue
            yield Request((message,), body, sent_at)
