"""From changes to updates (one per changed user) and to Segment-spec identify calls. Pure.

An update carries every changed key of one user plus that user's profile. Its ``messageId`` is a hash
of the job, the user, the version of the user's acknowledged state and the values sent: a retry of the
same logical change reuses it, and any later change (even back to an earlier value) gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sync.model import PROFILE_KIND, Computation, KeyChange, Update, change_kind

if TYPE_CHECKING:  # `tally` is used where no run diffs (delivery, reconcile): pandas loads with `plan_updates`
    import pandas as pd

# Segment: a messageId must be unique and shorter than 100 characters.
MESSAGE_ID_PREFIX = "as-"


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


def tally(
    updates: Iterator[Update] | list[Update],
    into: dict[tuple[str, str], dict[str, int]] | None = None,
    prefix: str = "",
) -> dict[tuple[str, str], dict[str, int]]:
    """Counts per (key, kind) of entered / exited / changed, optionally under a prefix (``delivered_``).
    Counted first as (key, kind, entered) in one Counter pass: a run tallies every change twice (planned
    and delivered), millions of them in an initial sync."""
    counts = into if into is not None else {}
    seen = Counter(
        (change.key, change.kind, change.new is True)
        for update in updates
        for change in update.changes
        if change.kind != PROFILE_KIND  # a profile field: not an audience or trait to count
    )
    for (key, kind, entered), count in seen.items():
        row = counts.setdefault((key, kind), {})
        name = prefix + change_kind(kind, entered)
        row[name] = row.get(name, 0) + count
    return counts


def _present_values(state: pd.DataFrame, users: Sequence[str], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each user's members-only / non-null values, the form the state store keeps."""
    import pandas as pd

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
