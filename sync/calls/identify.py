"""Identify calls, as Engage sends them for audiences and computed traits. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sync.clock import iso
from sync.model import PROFILE_TRAITS, KeyChange, Update

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Engage's computation ids: a prefix by class and 27 base-62 characters (a KSUID).
_ID_PREFIX = {"audience": "aud_", "trait": "tra_"}
_ID_CHARS = 27


def coalesced_identify(
    update: Update,
    message_id: str,
    space_id: str | None,
    integrations: Mapping[str, Any],
    timestamp: datetime,
    sent_at: datetime | None = None,
) -> dict[str, Any]:
    """One identify carrying every changed key of the update (best for a destination taking one call per
    request); ``context.personas`` lists each computation."""
    call = _base(update, message_id, iso(timestamp), iso(sent_at or timestamp))
    call["traits"] = {**{c.key: c.new for c in update.changes}, **standard_traits(update.profile)}
    call["context"] = {"personas": personas(update.changes, space_id)}
    call["integrations"] = dict(integrations)
    return call


def computation_identifies(
    update: Update,
    message_ids: Sequence[str],
    space_id: str | None,
    integrations: Mapping[str, Any],
    ids: Mapping[str, str],
    timestamp: datetime,
    sent_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The identify Engage sends for each changed computation (with the messageId given for it): its key and
    value, plus ``email`` when known (the identifier Engage adds by default), and that computation's
    ``context.personas``. (The calls share their unchanging parts: they are encoded, never changed.)"""
    stamp, sent = iso(timestamp), iso(sent_at or timestamp)
    email = update.profile.get("email")
    calls = []
    for change, message_id in zip(update.changes, message_ids, strict=True):
        call = _base(update, message_id, stamp, sent)
        call["traits"] = {change.key: change.new, "email": email} if email else {change.key: change.new}
        call["context"] = _personas(change.kind, change.key, ids.get(change.key), space_id)
        call["integrations"] = integrations
        calls.append(call)
    return calls


@lru_cache(maxsize=4096)
def _personas(kind: str, key: str, computation_id: str | None, space_id: str | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "computation_class": kind,
        "computation_id": computation_id or derived_id(kind, key),
        "computation_key": key,
    }
    if space_id:
        context["namespace"] = space_id
        context["space_id"] = space_id
    return {"personas": context}


def _base(update: Update, message_id: str, timestamp: str, sent_at: str) -> dict[str, Any]:
    """What every identify of the update starts with: its type, ids and times."""
    call: dict[str, Any] = {
        "type": "identify",
        "messageId": message_id,
        "timestamp": timestamp,
        "sentAt": sent_at,
        "userId": update.user_id,
    }
    anonymous_id = update.profile.get("anonymous_id")
    if anonymous_id:
        call["anonymousId"] = anonymous_id
    return call


@lru_cache(maxsize=4096)  # a run derives the same few ids for every call
def derived_id(kind: str, key: str) -> str:
    """A stable computation id for a key with no explicit ``id:``, shaped like Engage's (``aud_…``)."""
    number = int.from_bytes(hashlib.sha256(f"{kind}\x1f{key}".encode()).digest()[:21])
    chars = []
    for _ in range(_ID_CHARS):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return _ID_PREFIX.get(kind, "cmp_") + "".join(reversed(chars))


def standard_traits(profile: Mapping[str, str]) -> dict[str, Any]:
    traits: dict[str, Any] = {PROFILE_TRAITS[k]: v for k, v in profile.items() if k in PROFILE_TRAITS}
    company = {k: profile[f"company_{k}"] for k in ("id", "name") if profile.get(f"company_{k}")}
    if company:
        traits["company"] = company
    return traits


def personas(changes: Sequence[KeyChange], space_id: str | None) -> dict[str, Any]:
    """``context.personas``: Engage's fields for one computation; for several, the keys joined by commas."""
    classes = sorted({c.kind for c in changes})
    keys = [c.key for c in changes]
    context: dict[str, Any] = {
        "computation_class": classes[0] if len(classes) == 1 else ",".join(classes),
        "computation_key": ",".join(keys),
        "computations": [{"computation_class": c.kind, "computation_key": c.key} for c in changes],
    }
    if space_id:
        context["space_id"] = space_id
        context["namespace"] = space_id
    return context
