"""Group calls, as Engage sends them for account audiences and account traits. Pure.

An account's update becomes a Segment-spec group call: ``groupId`` the account, ``userId`` the user the job's
profiles give it (the published ChartMogul Send Customer action requires one), ``traits`` the changed keys
with their values and the account's fields under Segment's names (``name``, ``description``, ``email``,
``website``, ``createdAt``, ``address {street, city, state, postalCode, country}``) plus the job's enriched
columns; ``context.personas`` as on identify calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sync.calls.identify import coalesced_call, computation_calls
from sync.model import ACCOUNT_TRAITS, ADDRESS_TRAITS, MEMBER_FIELD, Update

# The traits of a group call that are the account's standard fields.
GROUP_STANDARD_TRAITS = frozenset({*ACCOUNT_TRAITS.values(), "address"})
_ACCOUNT_FIELDS = frozenset({*ACCOUNT_TRAITS, *ADDRESS_TRAITS, MEMBER_FIELD})


def account_traits(profile: Mapping[str, str]) -> dict[str, Any]:
    """An account's profile as group traits: its fields under Segment's names, its address as one object, and
    the job's enriched columns under their own names."""
    traits: dict[str, Any] = {ACCOUNT_TRAITS[k]: v for k, v in profile.items() if k in ACCOUNT_TRAITS}
    address = {ADDRESS_TRAITS[k]: v for k, v in profile.items() if k in ADDRESS_TRAITS}
    if address:
        traits["address"] = address
    traits.update({k: v for k, v in profile.items() if k not in _ACCOUNT_FIELDS})
    return traits


def coalesced_group(
    update: Update,
    message_id: str,
    space_id: str | None,
    integrations: Mapping[str, Any],
    timestamp: datetime,
    sent_at: datetime | None = None,
) -> dict[str, Any]:
    """One group call carrying every changed key of the account."""
    profile = account_traits(update.profile)
    return coalesced_call(_base, profile, update, message_id, space_id, integrations, timestamp, sent_at)


def computation_groups(
    update: Update,
    message_ids: Sequence[str],
    space_id: str | None,
    integrations: Mapping[str, Any],
    ids: Mapping[str, str],
    timestamp: datetime,
    sent_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """One group call per changed computation, as Engage sends them: that computation's key and value, and
    the account's name when known."""
    name = update.profile.get("name")
    extra = {"name": name} if name else {}
    return computation_calls(_base, extra, update, message_ids, space_id, integrations, ids, timestamp, sent_at)


def _base(update: Update, message_id: str, timestamp: str, sent_at: str) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "group",
        "messageId": message_id,
        "timestamp": timestamp,
        "sentAt": sent_at,
        "groupId": update.user_id,
    }
    member = update.profile.get(MEMBER_FIELD)
    if member:
        call["userId"] = member
    return call
