"""What flows through a run: computations, the changes of one subject, its update; and the one list of each
set of fields (profile columns, run counts, per-key counts) every other module reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Profile column → the identify call's trait (Segment spec names).
PROFILE_TRAITS = {
    "email": "email",
    "first_name": "firstName",
    "last_name": "lastName",
    "name": "name",
    "title": "title",
    "phone": "phone",
    "linked_in": "linkedIn",
    "twitter": "twitter",
}
# Every column a profiles query may return: the ids, the standard traits and the company.
PROFILE_COLUMNS = ("user_id", "anonymous_id", *PROFILE_TRAITS, "company_id", "company_name")

# A run's counts, as the runs table, the run report and `history` keep them.
RUN_COUNTS = (
    "users",
    "entered",
    "exited",
    "traits_changed",
    "updates",
    "delivered",
    "failed",
    "unmatched",
    "skipped_rows",
    "parked",
)
# The counts a run's one-line summaries show (`run --json`, `runs`): all but rows skipped and dead updates.
RUN_SUMMARY_COUNTS = tuple(c for c in RUN_COUNTS if c not in ("skipped_rows", "parked"))
# A run's counts per audience or trait key, planned and acknowledged.
KEY_COUNTS = ("entered", "exited", "changed", "delivered_entered", "delivered_exited", "delivered_changed")


@dataclass(frozen=True)
class Computation:
    key: str
    kind: str  # "audience" or "trait"
    name: str


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


def change_kind(kind: str, new: Any) -> str:
    """``entered``, ``exited`` or ``changed`` (a trait): how ``diff --change`` and the report name a change."""
    if kind == "audience":
        return "entered" if new is True else "exited"
    return "changed"
