"""Identify calls, as Engage sends them for audiences and computed traits. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sync.clock import iso
from sync.model import PROFILE_COLUMNS, PROFILE_TRAITS, KeyChange, Update

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Engage's computation ids: a prefix by class and 27 base-62 characters (a KSUID).
_ID_PREFIX = {"audience": "aud_", "trait": "tra_"}
_ID_CHARS = 27


# What a call of one kind starts with: its type, ids and times (update, messageId, timestamp, sentAt).
Base = Callable[[Update, str, str, str], dict[str, Any]]


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
    profile = standard_traits(update.profile)
    return coalesced_call(_base, profile, update, message_id, space_id, integrations, timestamp, sent_at)


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
    value, plus ``email`` when known (the identifier Engage adds by default) and the enriched columns, and
    that computation's ``context.personas``."""
    email = update.profile.get("email")
    extra = {"email": email, **enriched(update.profile)} if email else enriched(update.profile)
    return computation_calls(_base, extra, update, message_ids, space_id, integrations, ids, timestamp, sent_at)


def coalesced_call(
    base: Base,
    profile: Mapping[str, Any],
    update: Update,
    message_id: str,
    space_id: str | None,
    integrations: Mapping[str, Any],
    timestamp: datetime,
    sent_at: datetime | None,
) -> dict[str, Any]:
    """One call of ``base``'s kind with every changed key and the subject's ``profile`` traits."""
    call = base(update, message_id, iso(timestamp), iso(sent_at or timestamp))
    call["traits"] = {**{c.key: c.new for c in update.changes}, **profile}
    call["context"] = {"personas": personas(update.changes, space_id)}
    call["integrations"] = dict(integrations)
    return call


def computation_calls(
    base: Base,
    extra: Mapping[str, Any],
    update: Update,
    message_ids: Sequence[str],
    space_id: str | None,
    integrations: Mapping[str, Any],
    ids: Mapping[str, str],
    timestamp: datetime,
    sent_at: datetime | None,
) -> list[dict[str, Any]]:
    """One call of ``base``'s kind per changed computation: its key and value and the ``extra`` traits. (The
    calls share their unchanging parts: they are encoded, never changed.)"""
    start = base(update, "", iso(timestamp), iso(sent_at or timestamp))  # each call a copy, its own id set
    calls = []
    for change, message_id in zip(update.changes, message_ids, strict=True):
        call = start.copy()
        call["messageId"] = message_id
        call["traits"] = {change.key: change.new, **extra}
        call["context"] = computation_context(change.kind, change.key, ids.get(change.key), space_id)
        call["integrations"] = integrations
        calls.append(call)
    return calls


@lru_cache(maxsize=4096)
def computation_context(kind: str, key: str, computation_id: str | None, space_id: str | None) -> dict[str, Any]:
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
    """The profile as identify traits: the standard fields under Segment's names, the company, and the
    columns the job enriches its calls with, under their own names."""
    traits: dict[str, Any] = {PROFILE_TRAITS[k]: v for k, v in profile.items() if k in PROFILE_TRAITS}
    company = {k: profile[f"company_{k}"] for k in ("id", "name") if profile.get(f"company_{k}")}
    if company:
        traits["company"] = company
    traits.update(enriched(profile))
    return traits


# The trait names of the standard profile fields and the company, as identify calls carry them (with the
# published ChartMogul action's own names for the two it reads differently).
STANDARD_TRAITS = frozenset({*PROFILE_TRAITS.values(), "company", "first_name", "last_name"})


def enriched_traits(
    traits: Mapping[str, Any], computation_keys: Iterable[str], standard: frozenset[str] = STANDARD_TRAITS
) -> dict[str, Any]:
    """The traits of a call that are neither a computation's nor a ``standard`` field: the enriched ones."""
    keys = set(computation_keys)
    return {k: v for k, v in traits.items() if k not in standard and k not in keys}


def enriched(profile: Mapping[str, str]) -> dict[str, str]:
    """The profile's columns beyond the standard ones: those the job's ``enrich`` lists."""
    return {k: v for k, v in profile.items() if k not in PROFILE_COLUMNS}


def personas(changes: Sequence[KeyChange], space_id: str | None) -> dict[str, Any]:
    """``context.personas``: Engage's fields for one computation; for several, the keys joined by commas; for
    none (a profile change alone), only the space."""
    if not changes:
        return {"computations": [], **({"space_id": space_id, "namespace": space_id} if space_id else {})}
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
