"""What drifted: the acknowledged state of each subject against the record ChartMogul holds now. Pure: no I/O.

A subject drifts, per key the job wrote (other integrations' keys are not looked at):

- ``missing``: the attribute is absent on the record;
- ``differs``: it holds another value (a Boolean as a Boolean, a number as a number, a timestamp as a time);
- ``type``: it holds a value of another type than the attribute was created with;

and as a whole:

- ``gone``: the record it was matched to no longer exists (deleted or merged);
- ``found``: it had no record, and now one has its external id or email.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from sync.destinations.chartmogul_api import TIMESTAMP, attribute_type
from sync.model import RECONCILE_KIND

DRIFTS = ("missing", "differs", "type", "gone", "found")
RECONCILE = RECONCILE_KIND  # the kind of a reconciliation's run
DRIFT_FIELDS = ("user_id", "key", "drift", "expected", "found", "remote_id", "run_id")


@dataclass(frozen=True, slots=True)
class Subject:
    """A subject the job tracks: its acknowledged state (as the state store keeps it, JSON), the record it was
    matched to (``""``: found to have none; ``None``: never looked up), and what it is found by."""

    user_id: str
    state: str
    remote_id: str | None
    match_value: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A ChartMogul customer or contact as read: its uuid, what it is found by, its custom attributes."""

    uuid: str
    external_id: str | None
    email: str | None
    custom: Mapping[str, Any]


@dataclass(frozen=True)
class Drift:
    user_id: str
    key: str | None
    drift: str
    expected: Any
    found: Any
    remote_id: str | None


class Comparer:
    """Compares records as they are read, keeping only what drifted: memory follows the job's subjects, not
    the account (a listing of a million customers is never held).

    ``kinds``: the keys the job writes (key → ``audience`` or ``trait``); ``types``: the attributes the job
    created (key → type; empty for contacts, whose attributes have none); ``match``: ``external_id`` or
    ``email``."""

    def __init__(
        self, subjects: Iterable[Subject], kinds: Mapping[str, str], types: Mapping[str, str], match: str
    ) -> None:
        self.kinds, self.types, self.match = dict(kinds), dict(types), match
        self.by_uuid: dict[str, Subject] = {}
        self._sharing: dict[str, list[Subject]] = {}  # more subjects matched to one record (a merge), rare
        self.by_value: dict[str, list[Subject]] = {}  # those found to have no record, by what finds them
        self.checked = 0
        for subject in subjects:
            self.checked += 1
            if subject.remote_id:
                if subject.remote_id in self.by_uuid:
                    self._sharing.setdefault(subject.remote_id, []).append(subject)
                else:
                    self.by_uuid[subject.remote_id] = subject
            elif subject.remote_id == "" and subject.match_value:
                self.by_value.setdefault(subject.match_value, []).append(subject)
        self.seen: set[str] = set()  # uuids of the job's records read
        self.absent: set[str] = set()  # uuids proven gone one by one (404)
        self._drifts: list[Drift] = []
        self._found: set[str] = set()

    def see(self, record: Record) -> None:
        """A record read, from a page, by its uuid or by a lookup."""
        matched = self.by_uuid.get(record.uuid)
        if matched is not None and record.uuid not in self.seen:
            self.seen.add(record.uuid)
            for subject in (matched, *self._sharing.get(record.uuid, ())):
                self._drifts.extend(_keys(subject, record, self.kinds, self.types))
        value = record.external_id if self.match == "external_id" else record.email
        for subject in self.by_value.get(value or "", ()):
            if subject.user_id not in self._found:
                self._found.add(subject.user_id)
                self._drifts.append(Drift(subject.user_id, None, "found", None, record.uuid, record.uuid))

    def drifts(self, complete: bool) -> list[Drift]:
        """What drifted, by subject and key. ``complete``: every record of the account was read, so one of the
        job's records not among them is ``gone`` (otherwise only those proven ``absent`` are)."""
        gone = [
            Drift(subject.user_id, None, "gone", None, None, uuid)
            for uuid, first in self.by_uuid.items()
            if uuid not in self.seen and (complete or uuid in self.absent)
            for subject in (first, *self._sharing.get(uuid, ()))
        ]
        return sorted([*self._drifts, *gone], key=lambda d: (d.user_id, d.key or ""))


def compare(
    subjects: Iterable[Subject],
    records: Iterable[Record],
    kinds: Mapping[str, str],
    types: Mapping[str, str],
    *,
    match: str,
    complete: bool,
    absent: Set[str] = frozenset(),
) -> list[Drift]:
    """The drift of ``subjects`` against ``records`` read at once (``Comparer``)."""
    comparer = Comparer(subjects, kinds, types, match)
    for record in records:
        comparer.see(record)
    comparer.absent.update(absent)
    return comparer.drifts(complete)


def expected_values(state: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """What ChartMogul should hold for each key the job writes: the state store keeps members only (an
    audience's ``false`` is its absence) and non-null trait values."""
    return {key: (state.get(key) is True) if kind == "audience" else state.get(key) for key, kind in kinds.items()}


def _keys(subject: Subject, record: Record, kinds: Mapping[str, str], types: Mapping[str, str]) -> Iterator[Drift]:
    for key, expected in sorted(expected_values(orjson.loads(subject.state), kinds).items()):
        if key not in record.custom:
            if expected is not None and expected is not False:  # a non-member never written holds nothing
                yield Drift(subject.user_id, key, "missing", expected, None, record.uuid)
            continue
        found = record.custom[key]
        kind = types.get(key)
        if kind is not None and found is not None and not holds(kind, found):
            yield Drift(subject.user_id, key, "type", kind, type_of(found), record.uuid)
        elif not same(expected, found):
            yield Drift(subject.user_id, key, "differs", expected, found, record.uuid)


def type_of(value: Any) -> str:
    """ChartMogul's type for a value as its API returns it (the type a run would give it)."""
    try:
        return attribute_type(value) or "null"
    except ValueError:  # what no attribute holds (a list, an object, a string over 255 characters)
        return "String" if isinstance(value, str) else type(value).__name__


def holds(kind: str, value: Any) -> bool:
    """Whether an attribute of type ``kind`` can hold ``value`` as the API returns it."""
    found = type_of(value)
    if kind == "Decimal":
        return found in ("Integer", "Decimal")
    if kind == "Integer":
        return found == "Integer" or (found == "Decimal" and float(value).is_integer())
    if kind == "String":
        return found in ("String", "Timestamp")
    return found == kind


def same(expected: Any, found: Any) -> bool:
    """Equal as ChartMogul means them: Booleans as Booleans, numbers as numbers, timestamps as moments."""
    if isinstance(expected, bool) or isinstance(found, bool):
        return isinstance(expected, bool) and isinstance(found, bool) and expected is found
    if _number(expected) and _number(found):
        return math.isclose(float(expected), float(found), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(expected, str) and isinstance(found, str):
        if expected == found:
            return True
        moments = _moment(expected), _moment(found)
        return None not in moments and moments[0] == moments[1]
    return bool(expected == found)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _moment(text: str) -> datetime | None:
    if not TIMESTAMP.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
