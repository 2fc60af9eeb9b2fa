"""Where a job sends: a union on ``type``, each type with its own settings and its documented limits beside
them (with where each limit comes from)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    model_validator,
)

from sync.config.values import (
    CHARTMOGUL_MAX_CONNECTIONS,
    CHARTMOGUL_REQUESTS_PER_SECOND,
    DEFAULT_TIMEOUT_S,
    Duration,
    FrozenModel,
    PublicUrl,
    SecretUrl,
)


class HttpDestinationConfig(FrozenModel):
    """What every HTTP destination takes: its pace, its patience and when an update is given up."""

    requests_per_second: float = Field(default=CHARTMOGUL_REQUESTS_PER_SECOND, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=CHARTMOGUL_MAX_CONNECTIONS, ge=1, le=1000)
    timeout: Duration = timedelta(seconds=DEFAULT_TIMEOUT_S)
    # Attempts per request within one run; what is still failing waits for the next run.
    max_attempts: int = Field(default=5, ge=1, le=50)
    # Runs in which the destination rejects the same update (400, 404, 422…) before it is parked as dead.
    dead_after: int = Field(default=5, ge=1, le=1000)
    backoff_initial: Duration = timedelta(seconds=1)
    backoff_max: Duration = timedelta(seconds=60)


def _identify_only(what: str) -> Callable[[Any], str]:
    """The check of an ``events`` setting for a destination that takes identify calls only: anything else is
    refused by name, pointing at the destination that takes track events."""

    def check(value: Any) -> str:
        if value != "identify":
            raise ValueError(f"{what} takes identify calls only; track events go to a `type: segment` destination")
        return "identify"

    return check


WebhookEvents = Annotated[str, BeforeValidator(_identify_only("the ChartMogul webhook (Send Contact)"))]
ApiEvents = Annotated[str, BeforeValidator(_identify_only("the ChartMogul API destination (custom attributes)"))]


class EventNames(FrozenModel):
    """Engage's track event names, renamed as a destination of Engage may rename them."""

    audience_entered: str = Field(default="Audience Entered", min_length=1, max_length=200)
    audience_exited: str = Field(default="Audience Exited", min_length=1, max_length=200)
    trait_computed: str = Field(default="Trait Computed", min_length=1, max_length=200)


# The fields of the two ChartMogul (Actions) actions a mapping may set (their published fields; nested object
# fields with a dot), and how many mappings Segment lets one destination instance have.
SEND_CONTACT_FIELDS = (
    "message_id", "timestamp", "sent_at", "user_id", "anonymous_id", "email", "first_name", "last_name", "name",
    "title", "phone", "linked_in", "twitter", "company.id", "company.name",
)  # fmt: skip
SEND_CUSTOMER_FIELDS = (
    "message_id", "timestamp", "sent_at", "user_id", "group_id", "name", "description", "email", "website",
    "created_at", "address.street", "address.city", "address.state", "address.postal_code", "address.country",
)  # fmt: skip
MAX_MAPPINGS = 50
_PATH = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


class MappingsConfig(FrozenModel):
    """Segment's "build your own mappings": per action, body fields read from another path of the call
    (``$.traits.first_name``) or set to a literal; the fields not mapped keep the action's defaults."""

    send_contact: dict[str, str] = Field(default_factory=dict)
    send_customer: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> MappingsConfig:
        problems = []
        for action, fields, given in (
            ("send_contact", SEND_CONTACT_FIELDS, self.send_contact),
            ("send_customer", SEND_CUSTOMER_FIELDS, self.send_customer),
        ):
            for name, value in given.items():
                if name not in fields:
                    problems.append(f"{action}.{name}: not a field of the action; its fields: {', '.join(fields)}")
                if value.startswith("$") and not _PATH.match(value):
                    problems.append(f"{action}.{name}: {value!r} is not a path like $.traits.first_name")
        count = len(self.send_contact) + len(self.send_customer)
        if count > MAX_MAPPINGS:
            problems.append(f"{count} mappings, over the {MAX_MAPPINGS} a destination instance may have")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ChartMogulWebhookConfig(HttpDestinationConfig):
    """ChartMogul (Actions) "Send Contact": one identify call per POST to the webhook URL (no batching).

    The rate and connection defaults are ChartMogul's API limits (40 requests/s, 20 connections per
    account); whether the webhook shares them is undocumented, so both are settings.
    """

    type: Literal["chartmogul"] = "chartmogul"
    webhook_url: SecretUrl
    calls: Literal["per_user"] = "per_user"  # one coalesced identify per user: the body has one custom_attributes
    events: WebhookEvents = "identify"
    mappings: MappingsConfig = MappingsConfig()


# Segment's HTTP Tracking API (docs, "HTTP Tracking API"; analytics-python's consumer):
SEGMENT_ENDPOINT = "https://api.segment.io/v1/batch"
# a batch is at most 500 KB; analytics-python stops at 475,000 bytes, leaving room for what is added last;
SEGMENT_MAX_REQUEST_BYTES = 475_000
# at most 2,500 calls in a batch;
SEGMENT_MAX_CALLS = 2_500
# one call at most 32 KB (400 for the whole batch otherwise);
SEGMENT_MAX_CALL_BYTES = 32 * 1024
# keep well under ~1,000 requests/s per workspace (429 with Retry-After beyond): every request carries up to
# 2,500 calls, so 20 requests/s over 4 connections is tens of thousands of calls a second.
SEGMENT_REQUESTS_PER_SECOND = 20.0
SEGMENT_MAX_CONNECTIONS = 4


class SegmentConfig(HttpDestinationConfig):
    """Segment's HTTP Tracking API ``/v1/batch``, or any service that speaks it (RudderStack, Jitsu…)."""

    type: Literal["segment"]
    write_key: SecretStr = Field(min_length=1)  # sent as the basic-auth user; as secret as a webhook URL
    endpoint: PublicUrl = SEGMENT_ENDPOINT
    # per_computation: one identify per changed audience or trait, as Engage sends them; per_user coalesces.
    calls: Literal["per_computation", "per_user"] = "per_computation"
    integrations: dict[str, Any] = Field(default_factory=lambda: {"All": True})
    # Engage's "Send Identify" / "Send Track": identify calls, track events (Audience Entered / Exited, Trait
    # Computed), or both for every change.
    events: Literal["identify", "track", "both"] = "identify"
    event_names: EventNames = EventNames()
    requests_per_second: float = Field(default=SEGMENT_REQUESTS_PER_SECOND, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=SEGMENT_MAX_CONNECTIONS, ge=1, le=1000)


# ChartMogul's REST API (dev.chartmogul.com): its base URL; 40 requests/s and 20 parallel connections per
# account, lookups and writes alike (the defaults of HttpDestinationConfig).
CHARTMOGUL_API_URL = "https://api.chartmogul.com/v1"


class ChartMogulApiConfig(HttpDestinationConfig):
    """ChartMogul's REST API: typed custom attributes on the subject's ChartMogul contact or customer, found by
    its external id (the subject's ``user_id``) or its email."""

    type: Literal["chartmogul_api"]
    api_key: SecretStr = Field(min_length=1)  # sent as the basic-auth user; never printed, never stored
    target: Literal["contact", "customer"] = "contact"
    match: Literal["external_id", "email"] = "external_id"
    base_url: PublicUrl = CHARTMOGUL_API_URL
    source: str = Field(default="audience-sync", min_length=1, max_length=100)  # an attribute's "source"
    # A subject ChartMogul had no record for is looked up again this long after (0s: on every run).
    rematch_after: Duration = timedelta(hours=6)
    calls: Literal["per_user"] = "per_user"  # all of one subject's changed keys in one write
    events: ApiEvents = "identify"


# The destination types; pydantic names the one an error is about in its path, which _loc leaves out.
DESTINATION_TYPES = ("chartmogul", "chartmogul_api", "segment")


def _destination_type(raw: Any) -> str:
    """The tag of a destination: its ``type``, ``chartmogul`` when left out (the first destination)."""
    if isinstance(raw, Mapping):
        return str(raw.get("type", "chartmogul"))
    return str(getattr(raw, "type", "chartmogul"))


# Each destination type's settings, by the ``type`` that picks them in jobs.yaml.
DESTINATION_MODELS: dict[str, type[HttpDestinationConfig]] = {
    "chartmogul": ChartMogulWebhookConfig,
    "chartmogul_api": ChartMogulApiConfig,
    "segment": SegmentConfig,
}

DestinationConfig = Annotated[
    Annotated[ChartMogulWebhookConfig, Tag("chartmogul")]
    | Annotated[ChartMogulApiConfig, Tag("chartmogul_api")]
    | Annotated[SegmentConfig, Tag("segment")],
    Discriminator(
        _destination_type,
        custom_error_type="destination_type",
        custom_error_message=f"unknown destination type; use one of {', '.join(DESTINATION_TYPES)}",
    ),
]
