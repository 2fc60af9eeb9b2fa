"""From changes to updates (one per changed user) and to Segment-spec identify calls. Pure.

An update carries every changed key of one user plus that user's profile. Its ``messageId`` is a hash
of the job, the user, the version of the user's acknowledged state and the values sent: a retry of the
same logical change reuses it, and any later change (even back to an earlier value) gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pandas as pd

from sync.snapshot import Computation

DESTINATION_NAME = "ChartMogul"
# Segment: a messageId must be unique and shorter than 100 characters.
MESSAGE_ID_PREFIX = "as-"

# Profile column → identify trait (Segment spec names).
STANDARD_TRAITS = {
    "email": "email",
    "first_name": "firstName",
    "last_name": "lastName",
    "name": "name",
    "title": "title",
    "phone": "phone",
    "linked_in": "linkedIn",
    "twitter": "twitter",
}


@dataclass(frozen=True)
class KeyChange:
    key: str
    kind: str  # "audience" or "trait"
    old: Any
    new: Any


@dataclass(frozen=True)
class Update:
    """Everything one user's update carries. ``state`` is the user's full new state, stored once acknowledged."""

    user_id: str
    message_id: str
    changes: tuple[KeyChange, ...]
    profile: Mapping[str, str]
    state: Mapping[str, Any]
    fingerprint: int | None = None  # of ``state``, stored with it once acknowledged


# The text a messageId hashes; the same encoder for every call (json.dumps with options builds one per call).
_ID_PAYLOAD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def message_id(job: str, user_id: str, version: int, changes: Sequence[KeyChange]) -> str:
    payload = _ID_PAYLOAD.encode([job, user_id, version, sorted((c.key, c.new) for c in changes)])
    return MESSAGE_ID_PREFIX + hashlib.sha256(payload.encode()).hexdigest()[:40]


def plan_updates(
    job: str,
    changes: pd.DataFrame,
    computations: Sequence[Computation],
    new_state: pd.DataFrame,
    profiles: Mapping[str, Mapping[str, str]],
    versions: Mapping[str, int],
    fingerprints: Mapping[str, int] | None = None,
) -> Iterator[Update]:
    """One update per user in ``changes``, in the order the users first appear there."""
    kinds = {c.key: c.kind for c in computations}
    keys = [c.key for c in computations]
    states = _present_values(new_state, changes["user_id"].unique().tolist(), keys)
    grouped: dict[str, list[KeyChange]] = {}
    for user_id, key, old, new in zip(
        changes["user_id"].tolist(),
        changes["key"].tolist(),
        changes["old"].tolist(),
        changes["new"].tolist(),
        strict=True,
    ):
        grouped.setdefault(user_id, []).append(KeyChange(key, kinds[key], old, new))
    for user_id, user_changes in grouped.items():
        yield Update(
            user_id=user_id,
            message_id=message_id(job, user_id, versions.get(user_id, 0), user_changes),
            changes=tuple(user_changes),
            profile=profiles.get(user_id, {}),
            state=states.get(user_id, {}),
            fingerprint=fingerprints.get(user_id, 0) if fingerprints is not None else None,  # gone: empty, 0
        )


def change_kind(kind: str, new: Any) -> str:
    """``entered``, ``exited`` or ``changed`` (a trait): how ``diff --change`` and the report name a change."""
    if kind == "audience":
        return "entered" if new is True else "exited"
    return "changed"


def tally(
    updates: Iterator[Update] | list[Update],
    into: dict[tuple[str, str], dict[str, int]] | None = None,
    prefix: str = "",
) -> dict[tuple[str, str], dict[str, int]]:
    """Counts per (key, kind) of entered / exited / changed, optionally under a prefix (``delivered_``)."""
    counts = into if into is not None else {}
    for update in updates:
        for change in update.changes:
            row = counts.setdefault((change.key, change.kind), {})
            name = prefix + change_kind(change.kind, change.new)
            row[name] = row.get(name, 0) + 1
    return counts


def _present_values(state: pd.DataFrame, users: Sequence[str], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each user's members-only / non-null values, the form the state store keeps."""
    rows = state.reindex(index=pd.Index(users), columns=pd.Index(keys))
    columns = [rows[key].tolist() for key in keys]
    result: dict[str, dict[str, Any]] = {}
    for position, user_id in enumerate(rows.index.tolist()):
        # Inline for speed (a run builds tens of thousands): a member, or a value that is not null or NaN.
        result[user_id] = {
            key: value
            for key, column in zip(keys, columns, strict=True)
            if (value := column[position]) is not None and value is not False and value == value
        }
    return result


def identify_call(
    update: Update, *, space_id: str | None, timestamp: datetime, sent_at: datetime | None = None
) -> dict[str, Any]:
    """The identify call Engage would send for this update."""
    call: dict[str, Any] = {
        "type": "identify",
        "messageId": update.message_id,
        "timestamp": iso(timestamp),
        "sentAt": iso(sent_at or timestamp),
        "userId": update.user_id,
    }
    if update.profile.get("anonymous_id"):
        call["anonymousId"] = update.profile["anonymous_id"]
    call["traits"] = {**{c.key: c.new for c in update.changes}, **standard_traits(update.profile)}
    call["context"] = {"personas": personas(update.changes, space_id)}
    call["integrations"] = {"All": False, DESTINATION_NAME: True}
    return call


def standard_traits(profile: Mapping[str, str]) -> dict[str, Any]:
    traits: dict[str, Any] = {STANDARD_TRAITS[k]: v for k, v in profile.items() if k in STANDARD_TRAITS}
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


@lru_cache(maxsize=256)  # a run stamps every call with the same timestamp
def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as Segment writes timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
