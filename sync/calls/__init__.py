"""Rendering: one ``Update`` becomes the Segment-spec calls a job's destination asks for. Pure.

Planning decides *what* changed for a subject (one ``Update``); rendering decides *how* that is said. The
``CallSpec`` is everything rendering needs besides the update; a run keeps it, so that ``messages`` shows a
past run's calls exactly as they were sent, whatever the configuration says today.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sync.calls.group import coalesced_group, computation_groups
from sync.calls.identify import coalesced_identify, computation_identifies
from sync.calls.track import computation_tracks
from sync.model import PROFILE_KIND, Update

Mode = Literal["per_user", "per_computation"]
Events = Literal["identify", "track", "both"]

# Segment: a messageId is unique and shorter than 100 characters ("as-" and 40 hex digits).
CALL_ID_PREFIX = "as-"
# Track events' ids hash the update's id with this added, so that they never equal its identify calls' ids.
TRACK_SUFFIX = ":track"


@dataclass(frozen=True)
class CallSpec:
    """How a job's updates become calls.

    ``salt`` makes messageIds unique to one installation (its state store): two installations syncing the
    same job name and users (staging and production) into one Segment workspace, which deduplicates by
    messageId across all its sources, never collide. Empty: the call's messageId is the update's.
    """

    mode: Mode = "per_user"
    space_id: str | None = None
    integrations: Mapping[str, Any] = field(default_factory=dict)
    ids: Mapping[str, str] = field(default_factory=dict)  # computation key → computation_id
    salt: str = ""
    events: Events = "identify"  # Engage's "Send Identify" / "Send Track" / both
    subject: Literal["user", "account"] = "user"  # accounts: group calls
    event_names: Mapping[str, str] = field(default_factory=dict)  # renamed track events (calls.track)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, before: CallSpec) -> CallSpec:
        """A run's spec as stored; ``before`` for runs recorded before specs were kept."""
        if not text:
            return before
        values = json.loads(text)
        return cls(
            mode=values["mode"],
            space_id=values.get("space_id"),
            integrations=values.get("integrations", {}),
            ids=values.get("ids", {}),
            salt=values.get("salt", ""),
            events=values.get("events", "identify"),
            subject=values.get("subject", "user"),
            event_names=values.get("event_names", {}),
        )


def call_id(salt: str, message_id: str) -> str:
    """The messageId of an update's one call: the update's own, or salted with the installation's id. The same
    for every retry of the same update, as the update's own id is."""
    if not salt:
        return message_id
    return CALL_ID_PREFIX + _salted(salt, message_id, 20)


def call_ids(salt: str, message_id: str, keys: Sequence[str]) -> list[str]:
    """The messageIds of an update's calls, one per computation key: the salted update id (36 hex digits) and
    the key's place among the update's keys in sorted order. An update's keys are fixed by its id (the id
    hashes them), so every retry gives each call the same id."""
    stem = CALL_ID_PREFIX + _salted(salt, message_id, 18) + "-"
    place = {key: stem + format(index, "x") for index, key in enumerate(sorted(keys))}
    return [place[key] for key in keys]


def _salted(salt: str, message_id: str, size: int) -> str:
    """``message_id`` hashed with the installation's id as the key (BLAKE2b, ``size`` bytes as hex)."""
    hasher = _keyed(salt, size).copy()
    hasher.update(message_id.encode())
    return str(hasher.hexdigest())


@lru_cache(maxsize=16)
def _keyed(salt: str, size: int) -> Any:
    """BLAKE2b keyed with the installation's id, its key block already taken in: each id copies it."""
    return hashlib.blake2b(digest_size=size, key=salt.encode()[:64])


def render(
    update: Update, spec: CallSpec, *, timestamp: datetime, sent_at: datetime | None = None
) -> tuple[dict[str, Any], ...]:
    """The calls ``update`` becomes under ``spec``; all of them must be accepted to acknowledge it.

    Changed profile fields (``send_profile_changes``) are no computations: the calls carry the profile as
    always, and an update that changed nothing else is one call with the profile alone."""
    calls: list[dict[str, Any]] = []
    changed = [change for change in update.changes if change.kind != PROFILE_KIND]
    if len(changed) != len(update.changes):
        update = replace(update, changes=tuple(changed))
        spec = spec if changed else replace(spec, mode="per_user", events="identify")
    keys = [change.key for change in update.changes]
    if spec.subject == "account":
        if spec.mode == "per_user":
            message_id = call_id(spec.salt, update.message_id)
            return (coalesced_group(update, message_id, spec.space_id, spec.integrations, timestamp, sent_at),)
        ids = call_ids(spec.salt, update.message_id, keys)
        return tuple(computation_groups(update, ids, spec.space_id, spec.integrations, spec.ids, timestamp, sent_at))
    if spec.events != "track":
        if spec.mode == "per_user":
            message_id = call_id(spec.salt, update.message_id)
            calls.append(coalesced_identify(update, message_id, spec.space_id, spec.integrations, timestamp, sent_at))
        else:
            ids = call_ids(spec.salt, update.message_id, keys)
            calls += computation_identifies(update, ids, spec.space_id, spec.integrations, spec.ids, timestamp, sent_at)
    if spec.events != "identify":  # one event per change, whatever the identify shape
        ids = call_ids(spec.salt, update.message_id + TRACK_SUFFIX, keys)
        names = spec.event_names
        calls += computation_tracks(update, ids, spec.space_id, spec.integrations, spec.ids, names, timestamp, sent_at)
    return tuple(calls)
