"""What flows through a run: computations, the changes of one subject, its update; and the one list of each
set of fields (profile columns, run counts, per-key counts) every other module reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

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

# An account's profile column → the group call's trait (Segment spec names), and the address parts, which go
# under ``traits.address``.
ACCOUNT_TRAITS = {
    "name": "name",
    "description": "description",
    "email": "email",
    "website": "website",
    "created_at": "createdAt",
}
ADDRESS_TRAITS = {
    "street": "street",
    "city": "city",
    "state": "state",
    "postal_code": "postalCode",
    "country": "country",
}
# Every column an account job's profiles query may return: the account's id, the user the group call is made
# for (the published Send Customer action requires one), and the account's fields.
ACCOUNT_PROFILE_COLUMNS = ("group_id", "user_id", *ACCOUNT_TRAITS, *ADDRESS_TRAITS)
# Inside a run an account's id is its subject id (the stores' ``user_id``), and the user a group call is made
# for is this profile field.
MEMBER_FIELD = "member_user_id"


@dataclass(frozen=True)
class Subject:
    """What a job syncs: users (identify and track calls) or accounts (group calls). ``id_column`` is the
    column every result of the job identifies its subjects by."""

    kind: str
    id_column: str
    profile_columns: tuple[str, ...]


USER = Subject("user", "user_id", PROFILE_COLUMNS)

# With ``send_profile_changes``, each profile field is diffed like a trait under this kind and key, so that a
# changed field alone is a reason to send; the calls carry the profile, never these keys.
PROFILE_KIND = "profile"
# The kind of a reconciliation's run (`reconcile`): it reads the destination and sends nothing, so whatever
# asks about a job's syncs (its last run, its failures, what is pending, when it runs next) passes it over.
RECONCILE_KIND = "reconcile"


def profile_key(column: str) -> str:
    return f"profile.{column}"


ACCOUNT = Subject("account", "group_id", ACCOUNT_PROFILE_COLUMNS)
SUBJECTS = {subject.kind: subject for subject in (USER, ACCOUNT)}

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
    "throttled",
)
# The counts a run's one-line summaries show (`run --json`, `runs`): all but rows skipped, dead updates and the
# destination's 429 answers (`runs show` has those).
RUN_SUMMARY_COUNTS = tuple(c for c in RUN_COUNTS if c not in ("skipped_rows", "parked", "throttled"))
# A run's counts per audience or trait key, planned and acknowledged.
KEY_COUNTS = ("entered", "exited", "changed", "delivered_entered", "delivered_exited", "delivered_changed")


@dataclass(frozen=True)
class Computation:
    key: str
    kind: str  # "audience", "trait" or "profile" (a profile field, with send_profile_changes)
    name: str


class KeyChange(NamedTuple):
    """One changed key of a subject. A named tuple: a plan builds one per change (millions in an initial
    sync), and a tuple is built in less than half the time of a frozen dataclass."""

    key: str
    kind: str  # "audience", "trait" or "profile" (a profile field, with send_profile_changes)
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
    reason: str | None = None  # why it was sent when the snapshot did not change: "reconcile" (a repair)


def change_kind(kind: str, new: Any) -> str:
    """``entered``, ``exited`` or ``changed`` (a trait): how ``diff --change`` and the report name a change."""
    if kind == "audience":
        return "entered" if new is True else "exited"
    return "changed"


def change_of(kind: str, new: Any) -> str:
    """A change as ``diff --json`` names it: ``entered`` / ``exited`` for an audience, ``trait`` for a trait,
    ``profile`` for a profile field."""
    if kind == "audience":
        return change_kind(kind, new)
    return "profile" if kind == PROFILE_KIND else "trait"
