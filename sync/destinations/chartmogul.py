"""The ChartMogul (Actions) webhook: each identify call becomes a "Send Contact" body and each group call a
"Send Customer" body (``send_customer_body``), one POST each.

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
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sync.calls.group import GROUP_STANDARD_TRAITS
from sync.calls.identify import STANDARD_TRAITS, enriched_traits
from sync.clock import Clock, iso
from sync.config import ChartMogulWebhookConfig, MappingsConfig
from sync.config.values import CHARTMOGUL_MAX_CONNECTIONS, CHARTMOGUL_REQUESTS_PER_SECOND
from sync.destinations.base import Capabilities, Outgoing
from sync.destinations.http import Request, encode_json
from sync.errors import PermanentDeliveryError
from sync.redact import public_label, secret_parts

# Segment: one call may be at most 32 KB; the action posts one call per request.
MAX_BODY_BYTES = 32 * 1024

CAPABILITIES = Capabilities(
    call_types=frozenset({"identify", "group"}),
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


def is_uri_reference(value: object) -> bool:
    """A URI reference (absolute or relative), as the action's ``uri-reference`` format takes: no spaces."""
    return isinstance(value, str) and bool(value) and not any(c.isspace() for c in value)


def is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# Where each body field is read from by default: the published action's default mapping (a path in the call),
# with audience-sync's exceptions (README): the spec's firstName/lastName after the action's own names.
SEND_CONTACT_DEFAULTS: dict[str, tuple[str, ...]] = {
    "message_id": ("$.messageId",),
    "timestamp": ("$.timestamp",),
    "sent_at": ("$.sentAt",),
    "user_id": ("$.userId",),
    "anonymous_id": ("$.anonymousId",),
    "email": ("$.traits.email",),
    "first_name": ("$.traits.first_name", "$.traits.firstName"),
    "last_name": ("$.traits.last_name", "$.traits.lastName"),
    "name": ("$.traits.name",),
    "title": ("$.traits.title",),
    "phone": ("$.traits.phone",),
    "linked_in": ("$.traits.linkedIn",),
    "twitter": ("$.traits.twitter",),
    "company.id": ("$.traits.company.id",),
    "company.name": ("$.traits.company.name",),
}
SEND_CUSTOMER_DEFAULTS: dict[str, tuple[str, ...]] = {
    "message_id": ("$.messageId",),
    "timestamp": ("$.timestamp",),
    "sent_at": ("$.sentAt",),
    "user_id": ("$.userId",),
    "group_id": ("$.groupId",),
    "name": ("$.traits.name",),
    "description": ("$.traits.description",),
    "email": ("$.traits.email",),
    "website": ("$.traits.website",),
    "created_at": ("$.traits.createdAt",),
    "address.street": ("$.traits.address.street",),
    "address.city": ("$.traits.address.city",),
    "address.state": ("$.traits.address.state",),
    "address.postal_code": ("$.traits.address.postalCode",),
    "address.country": ("$.traits.address.country",),
}
# The fields each action refuses the whole event for when malformed; here the field is left out instead.
_CHECKS: dict[str, Callable[[object], bool]] = {
    "email": is_email,
    "linked_in": is_uri,
    "website": is_uri_reference,
    "created_at": is_datetime,
}


def field_values(
    call: Mapping[str, Any], defaults: Mapping[str, tuple[str, ...]], mappings: Mapping[str, str]
) -> dict[str, Any]:
    """Each body field's value: from its mapping (a ``$.`` path in the call, or a literal) or its defaults (the
    first path with a value); absent and empty values and malformed checked ones left out."""
    values: dict[str, Any] = {}
    for name, paths in defaults.items():
        given = mappings.get(name)
        if given is not None:
            value = read_path(call, given) if given.startswith("$") else given
        else:
            value = next((v for p in paths if (v := read_path(call, p)) is not None and v != ""), None)
        if value is None or value == "":
            continue
        check = _CHECKS.get(name)
        if check is None or check(value):
            values[name] = value
    return values


def read_path(call: Mapping[str, Any], path: str) -> Any:
    """The value at a ``$.a.b`` path of the call; None where the path leads nowhere."""
    value: Any = call
    for part in path.split(".")[1:]:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``company.id`` and the like as nested objects."""
    body: dict[str, Any] = {}
    for name, value in values.items():
        if "." in name:
            outer, inner = name.split(".", 1)
            body.setdefault(outer, {})[inner] = value
        else:
            body[name] = value
    return body


def _custom_attributes(call: Mapping[str, Any], standard: frozenset[str]) -> dict[str, Any]:
    traits: Mapping[str, Any] = call.get("traits") or {}
    computations = (call.get("context") or {}).get("personas", {}).get("computations", [])
    keys = [c["computation_key"] for c in computations]
    attributes = {key: traits.get(key) for key in keys}
    attributes.update(enriched_traits(traits, keys, standard))  # the job's enriched profile columns
    return attributes


def send_contact_body(call: Mapping[str, Any], mappings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The "Send Contact" body for an identify call; absent values are left out, never sent as null. A company
    goes only with its ``id`` (the action refuses one without)."""
    body: dict[str, Any] = {"type": "Send Contact", **_nest(field_values(call, SEND_CONTACT_DEFAULTS, mappings or {}))}
    company = body.get("company")
    if company is not None and not company.get("id"):
        del body["company"]
    attributes = _custom_attributes(call, STANDARD_TRAITS)
    if attributes:
        body["custom_attributes"] = attributes
    return body


def send_customer_body(call: Mapping[str, Any], mappings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The "Send Customer" body for a group call, as the published action's default mapping makes it, with
    the update's audience and trait keys (and enriched columns) in ``custom_attributes``. Where the action
    refuses the event for one bad field (an email that is not an address, a created_at that is not a time),
    the field is left out; ``address`` is sent only when the account has one (the action sends ``{}``)."""
    body = {"type": "Send Customer", **_nest(field_values(call, SEND_CUSTOMER_DEFAULTS, mappings or {}))}
    attributes = _custom_attributes(call, GROUP_STANDARD_TRAITS)
    if attributes:
        body["custom_attributes"] = attributes
    return body


def encode_body(call: Mapping[str, Any], mappings: MappingsConfig | None = None) -> bytes:
    """The JSON request body; raises PermanentDeliveryError when the upstream action would reject it."""
    mappings = mappings or MappingsConfig()
    if call.get("type") == "group":
        return _encoded(_customer(call, mappings.send_customer))
    body = send_contact_body(call, mappings.send_contact)
    if not body.get("user_id") and not body.get("anonymous_id"):
        raise PermanentDeliveryError("rejected before sending: user_id or anonymous_id must be present")
    if set(body) <= {"type", "message_id", "timestamp", "sent_at", "user_id", "anonymous_id"}:
        raise PermanentDeliveryError("rejected before sending: the body carries nothing but identifiers")
    return _encoded(body)


def _customer(call: Mapping[str, Any], mappings: Mapping[str, str]) -> dict[str, Any]:
    body = send_customer_body(call, mappings)
    if not body.get("group_id"):
        raise PermanentDeliveryError("rejected before sending: Send Customer needs a group_id")
    if not body.get("user_id"):
        raise PermanentDeliveryError(
            "rejected before sending: Send Customer needs a user_id (the published action requires one); "
            "give the account's user in the profiles query's user_id column"
        )
    return body


def _encoded(body: Mapping[str, Any]) -> bytes:
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
        self.mappings = settings.mappings

    def requests(self, messages: Iterator[Outgoing], clock: Clock) -> Iterator[Request]:
        for message in messages:
            sent_at = clock()
            try:
                body = encode_body({**message.calls[0], "sentAt": iso(sent_at)}, self.mappings)
            except PermanentDeliveryError as exc:
                yield Request((message,), refused=exc.reason)
                continue
            yield Request((message,), body, sent_at)
