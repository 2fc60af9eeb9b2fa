"""Track events, as Engage sends them for audiences and computed traits. Pure.

An audience change is ``Audience Entered`` or ``Audience Exited`` with ``properties.audience_key`` and the key
with its new ``true`` / ``false``; a computed trait's change is ``Trait Computed`` with
``properties.trait_key`` and the key with its new value (Segment docs, "Using Engage data"). The user's email
travels in ``context.traits.email``, and ``context.personas`` names the computation as on identify calls.
Engage lets each destination rename the three events; so do ``event_names``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sync.calls.identify import computation_context, enriched
from sync.clock import iso
from sync.model import Update

# Engage's default event names, by what happened.
DEFAULT_EVENT_NAMES = {
    "audience_entered": "Audience Entered",
    "audience_exited": "Audience Exited",
    "trait_computed": "Trait Computed",
}


def computation_tracks(
    update: Update,
    message_ids: Sequence[str],
    space_id: str | None,
    integrations: Mapping[str, Any],
    ids: Mapping[str, str],
    names: Mapping[str, str],
    timestamp: datetime,
    sent_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """One track event per changed computation, with the messageId given for it."""
    stamp, sent = iso(timestamp), iso(sent_at or timestamp)
    email = update.profile.get("email")
    extra = enriched(update.profile)
    anonymous_id = update.profile.get("anonymous_id")
    calls = []
    for change, message_id in zip(update.changes, message_ids, strict=True):
        if change.kind == "audience":
            what = "audience_entered" if change.new is True else "audience_exited"
            properties = {"audience_key": change.key, change.key: change.new}
        else:
            what = "trait_computed"
            properties = {"trait_key": change.key, change.key: change.new}
        context: dict[str, Any] = dict(computation_context(change.kind, change.key, ids.get(change.key), space_id))
        if email or extra:
            context["traits"] = {"email": email, **extra} if email else dict(extra)
        call: dict[str, Any] = {
            "type": "track",
            "event": names.get(what) or DEFAULT_EVENT_NAMES[what],
            "messageId": message_id,
            "timestamp": stamp,
            "sentAt": sent,
            "userId": update.user_id,
        }
        if anonymous_id:
            call["anonymousId"] = anonymous_id
        call["properties"] = properties
        call["context"] = context
        call["integrations"] = integrations
        calls.append(call)
    return calls
