"""A job's snapshot: who is in which audience, each computed trait's value, and each user's profile.

Pure: raw query results in, a validated ``Snapshot`` out. Rows that cannot be used (a null ``user_id``,
a value JSON cannot carry) are skipped and reported as ``RowIssue``; results that make the whole snapshot
untrustworthy (conflicting duplicate profiles or trait values, unknown columns) raise ``SourceError``.

The snapshot is columnar: each result is normalised into an Arrow table once, vectorised, and the work
over every user (the universe of users, their fingerprints, duplicate checks) is done by ``sync.snapshot.engine``
in an in-process DuckDB database. Python objects are made only for the users a run looks at closely.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync.errors import SourceError
from sync.model import MEMBER_FIELD, PROFILE_COLUMNS, USER, Computation, Subject
from sync.snapshot.columns import Arrow, Columns, Raw, RowIssue
from sync.snapshot.columns import (
    column as _column,
)
from sync.snapshot.columns import (
    column_names as _columns,
)
from sync.snapshot.columns import (
    keep as _keep,
)
from sync.snapshot.columns import (
    mask as _mask,
)
from sync.snapshot.columns import (
    present as _present,
)
from sync.snapshot.columns import (
    table_of as _table,
)
from sync.snapshot.columns import (
    texts as _texts,
)
from sync.snapshot.columns import (
    user_ids as _user_ids,
)
from sync.snapshot.json_values import EXACT_INT, canonical, json_value

if TYPE_CHECKING:
    from sync.snapshot.engine import Snapshot


@dataclass(frozen=True)
class TraitPart:
    """A trait's rows: ``table`` has ``user_id`` and what the fingerprint hashes. ``hash_kind`` says what
    that is: ``v`` as a number (``n``), a text (``s``) or a boolean (``b``), and then ``v`` is also the
    JSON value sent; or (``mixed``) per row, by its tag ``t``, ``vn``, ``vs`` or ``vb``, the canonical
    JSON text ``vs`` (``j``) for anything else, with ``vi``, the row's position in ``values``, the JSON
    values sent (empty for the other kinds)."""

    table: pa.Table
    values: list[Any]
    hash_kind: str

    def value_list(self, positions: np.ndarray) -> list[Any]:
        """The JSON values at ``positions`` (-1: None)."""
        present = positions >= 0
        out: list[Any] = [None] * len(positions)
        if not present.any():
            return out
        where = np.flatnonzero(present)
        picked = [self.values[i] for i in positions[present].tolist()]
        for slot, value in zip(where.tolist(), picked, strict=True):
            out[slot] = value
        return out


class ProfileRows(Protocol):
    """Where a profiles result's rows are read from, a few at a time."""

    def take(self, rows: np.ndarray) -> Columns:
        """Every column at the row positions ``rows``, in that order."""
        ...


@dataclass(frozen=True)
class Profiles:
    """A profiles result before it is normalised: its column names, its user ids and where its rows are
    read from. The fields themselves are read only for the users a run looks at (``ProfilePart.fields``),
    so a source that can read rows on demand (a Parquet file) never holds every profile in memory.
    ``where`` names the result in errors."""

    names: tuple[str, ...]
    user_ids: Arrow | list[Any] | None
    rows: ProfileRows
    where: str = "profiles"


class _InMemory:
    """The rows of a result already read."""

    def __init__(self, columns: Columns) -> None:
        self._columns = columns

    def take(self, rows: np.ndarray) -> Columns:
        positions, indices = rows.tolist(), pa.array(rows, pa.int64())
        picked: Columns = {}
        for name, column in self._columns.items():
            picked[name] = [column[i] for i in positions] if isinstance(column, list) else column.take(indices)
        return picked


def profiles_of(raw: Raw) -> Profiles:
    """A profiles result read whole (a query's rows, a CSV file, a data frame)."""
    table = _table(raw)
    return Profiles(tuple(table), table.get("user_id"), _InMemory(table))


@dataclass(frozen=True)
class ProfilePart:
    """The usable profile rows: their user ids, in row order, the names of their fields and where those are
    read from (``where`` names the result in errors)."""

    ids: Arrow
    names: tuple[str, ...]
    reader: ProfileRows
    where: str
    rows: np.ndarray | None  # the source row of each id; None when every row is kept (the same position)

    def fields(self, positions: np.ndarray, user_ids: Arrow) -> pa.Table:
        """The fields, as text, of the rows at ``positions`` (of ``ids``), which belong to ``user_ids``.
        Raises SourceError when the source has changed since its ids were read."""
        rows = positions if self.rows is None else self.rows[positions]
        read = self.reader.take(rows)
        ids, _ = _user_ids(read, self.where, [])
        if len(ids) != len(user_ids) or ids.null_count or (len(ids) and not pc.all(pc.equal(ids, user_ids)).as_py()):
            raise SourceError(f"{self.where}: it changed while it was being read; run again")
        return pa.table({name: _texts(read, name) for name in self.names}, schema=_text_schema(self.names))


def _text_schema(names: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, pa.string()) for name in names])


@dataclass(frozen=True)
class Parts:
    """Normalised results, ready for the engine: profiles, audience member ids and trait rows."""

    computations: tuple[Computation, ...]
    profiles: ProfilePart | None
    members: Mapping[str, pa.Array]  # key -> member ids (text), duplicates possible
    traits: Mapping[str, TraitPart]
    issues: tuple[RowIssue, ...]


def build_snapshot(
    computations: Sequence[Computation],
    profiles: Raw | Profiles | None,
    results: Mapping[str, Raw],
    enrich: Sequence[str] = (),
    subject: Subject = USER,
) -> Snapshot:
    """Assemble a snapshot from the profiles query and one raw result per computation key."""
    from sync.snapshot.engine import Snapshot

    return Snapshot(normalise(computations, profiles, results, enrich, subject))


def normalise(
    computations: Sequence[Computation],
    profiles: Raw | Profiles | None,
    results: Mapping[str, Raw],
    enrich: Sequence[str] = (),
    subject: Subject = USER,
) -> Parts:
    """Every result normalised, several at once (Arrow's kernels release the GIL); issues in result order.

    An account job's results identify accounts by ``group_id``: inside a run that is the subject id (the
    ``user_id`` of every later stage), and the profile's own ``user_id`` (the user its group calls are made
    for) is the field ``member_user_id``. Messages name the columns as the job's queries do."""
    if subject.kind == "user":
        return _normalise(computations, profiles, results, (*PROFILE_COLUMNS, *enrich), bool(enrich))
    labels = {c.key: f"{c.kind} {c.key}" for c in computations}
    renamed_profiles = _as_user_columns(profiles, subject, "profiles") if profiles is not None else None
    renamed = {key: _as_user_columns(raw, subject, labels.get(key, key)) for key, raw in results.items()}
    try:
        parts = _normalise(computations, renamed_profiles, renamed, (*_internal(subject), *enrich), bool(enrich))
    except SourceError as exc:
        raise SourceError(_subject_words(str(exc), subject)) from None
    issues = tuple(replace(i, problem=_subject_words(i.problem, subject)) for i in parts.issues)
    return replace(parts, issues=issues)


def _normalise(
    computations: Sequence[Computation],
    profiles: Raw | Profiles | None,
    results: Mapping[str, Raw],
    accepted: tuple[str, ...],
    enriched: bool,
) -> Parts:
    def profile_part() -> tuple[ProfilePart | None, list[RowIssue]]:
        issues: list[RowIssue] = []
        if profiles is None:
            return None, issues
        whole = profiles if isinstance(profiles, Profiles) else profiles_of(profiles)
        return normalise_profiles(whole, issues, accepted, enriched), issues

    def part(computation: Computation) -> tuple[pa.Array | TraitPart, list[RowIssue]]:
        issues: list[RowIssue] = []
        table = _table(results[computation.key])
        label = f"{computation.kind} {computation.key}"
        if computation.kind == "audience":
            return normalise_members(table, label, issues), issues
        return normalise_trait(table, label, issues), issues

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        profile_future = pool.submit(profile_part)
        futures = [pool.submit(part, computation) for computation in computations]
        profile_table, issues = profile_future.result()
        members: dict[str, pa.Array] = {}
        traits: dict[str, TraitPart] = {}
        for computation, future in zip(computations, futures, strict=True):
            normalised, found = future.result()
            issues += found
            if isinstance(normalised, TraitPart):
                traits[computation.key] = normalised
            else:
                members[computation.key] = normalised
    return Parts(tuple(computations), profile_table, members, traits, tuple(issues))


def _internal(subject: Subject) -> tuple[str, ...]:
    """A subject's profile columns under the names a run gives them."""
    renamed = {subject.id_column: "user_id", "user_id": MEMBER_FIELD}
    return tuple(renamed.get(c, c) for c in subject.profile_columns)


def _as_user_columns(raw: Raw | Profiles, subject: Subject, label: str) -> Raw | Profiles:
    """An account job's result with the run's names: ``group_id`` → ``user_id``, and a profile's ``user_id`` →
    ``member_user_id``. An audience's or trait's result identifies accounts only."""
    if isinstance(raw, Profiles):  # an account's profiles are read whole (sources.read_profiles)
        raise SourceError(f"{label}: an account job's profiles are read whole")
    table = dict(_table(raw))
    if label != "profiles" and "user_id" in table:
        raise SourceError(
            f"{label}: the result has a user_id column, but an account job's results identify accounts by "
            f"{subject.id_column} (columns: {_columns(table)})"
        )
    if label == "profiles" and "user_id" in table:
        table[MEMBER_FIELD] = table.pop("user_id")
    if subject.id_column in table:
        table["user_id"] = table.pop(subject.id_column)
    return table


def _subject_words(text: str, subject: Subject) -> str:
    """A message about a run's columns in the words of the job's queries."""
    return re.sub(
        rf"\b(?:{MEMBER_FIELD}|user_id)\b",
        lambda m: "user_id" if m.group(0) == MEMBER_FIELD else subject.id_column,
        text,
    )


def normalise_profiles(
    profiles: Profiles, issues: list[RowIssue], accepted: Sequence[str] = PROFILE_COLUMNS, enriched: bool = False
) -> ProfilePart:
    """The usable user ids of a profiles result; its fields are read later, for the users a run sends. Columns
    beyond the standard ones are taken when the job enriches its calls with them (``enriched``)."""
    unknown = [c for c in profiles.names if c not in accepted]
    if profiles.user_ids is None:  # the first thing to fix: without it no other column means anything
        named = f" (its columns: {', '.join(profiles.names)})" if profiles.names else ""
        raise SourceError(
            f"profiles: the query must return a user_id column{named}; name the id column user_id, "
            "e.g. SELECT id AS user_id, email, ..."
        )
    if unknown:
        hint = "" if enriched else " (or list them under the job's enrich, to send them as traits)"
        raise SourceError(
            f"profiles: unknown {'column' if len(unknown) == 1 else 'columns'} {', '.join(unknown)}; "
            f"accepted columns: {', '.join(accepted)}{hint}"
        )
    ids, usable = _user_ids({"user_id": profiles.user_ids}, "profiles", issues)
    names = tuple(name for name in profiles.names if name != "user_id")
    rows = None if usable.all() else np.flatnonzero(usable)
    return ProfilePart(_keep(ids, usable), names, profiles.rows, profiles.where, rows)


def normalise_members(table: Columns, label: str, issues: list[RowIssue]) -> pa.Array:
    """The member ids of an audience (a user listed twice is one member; the engine folds duplicates)."""
    if "user_id" not in table:
        raise SourceError(f"{label}: the result must have a user_id column (columns: {_columns(table)})")
    ids, usable = _user_ids(table, label, issues)
    return _keep(ids, usable)


def normalise_trait(table: Columns, label: str, issues: list[RowIssue]) -> TraitPart:
    """A trait's non-null values by user id, as JSON-ready values, with what its fingerprint hashes."""
    missing = [c for c in ("user_id", "value") if c not in table]
    if missing:
        raise SourceError(f"{label}: the result must have user_id and value columns (columns: {_columns(table)})")
    extra = [c for c in table if c not in ("user_id", "value")]
    if extra:
        raise SourceError(
            f"{label}: unexpected column(s) {', '.join(extra)}: a trait's result has exactly two columns, "
            "user_id and value (give one trait per value column)"
        )
    ids, usable = _user_ids(table, label, issues)
    array, objects = _column(table, "value")
    if array is not None:
        typed = _typed_values(array)
        if typed is not None:
            values, hash_kind, present = typed
            keep = usable & present
            kept = _keep(values, keep)
            rows = pa.table({"user_id": _keep(ids, keep), "v": kept})
            return TraitPart(rows, [], hash_kind)
        objects = array.to_pylist()
    assert objects is not None
    return _trait_objects(ids, usable, objects, label, issues)


def _typed_values(array: pa.Array) -> tuple[pa.Array, str, np.ndarray] | None:
    """Values of one Arrow type that JSON carries as they are, with the hash kind and a presence mask;
    None for types that need a value-by-value conversion (decimals, dates, nested, big integers)."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array.cast(pa.string()), "s", _present(array)
    if pa.types.is_boolean(kind):
        return array, "b", _present(array)
    if pa.types.is_floating(kind):
        numbers = array.cast(pa.float64())
        finite = _mask(pc.is_finite(numbers), True)
        present = _present(numbers) & ~_mask(pc.is_nan(numbers), True)
        if not finite[present].all():
            return None  # infinities are reported row by row
        return numbers, "n", present
    if pa.types.is_integer(kind) and not pa.types.is_uint64(kind):
        numbers = array.cast(pa.int64())
        largest = pc.max(pc.abs(numbers)).as_py()
        if largest is not None and largest >= EXACT_INT:
            return None
        return numbers, "n", _present(numbers)
    if pa.types.is_null(kind):
        return pa.nulls(len(array), pa.string()), "s", np.zeros(len(array), dtype=bool)
    return None


def _trait_objects(
    ids: pa.Array, usable: np.ndarray, objects: list[Any], label: str, issues: list[RowIssue]
) -> TraitPart:
    """The slow path, value by value, for columns Arrow cannot carry as one JSON-ready type. Each value is
    hashed as a typed column would hash it (``t``: n, s, b), or by its canonical JSON text (``j``)."""
    keep: list[int] = []
    values: list[Any] = []
    tags: list[str] = []
    numbers: list[float | None] = []
    texts: list[str | None] = []
    flags: list[bool | None] = []
    user_ids = ids.to_pylist()
    for position, (ok, raw) in enumerate(zip(usable.tolist(), objects, strict=True)):
        if not ok:
            continue
        value, problem = json_value(raw)
        if problem:
            issues.append(RowIssue(label, problem, user_ids[position]))
            continue
        if value is None:
            continue
        keep.append(position)
        values.append(value)
        tag = _tag(value)
        tags.append(tag)
        numbers.append(float(value) if tag == "n" else None)
        texts.append(value if tag == "s" else canonical(value) if tag == "j" else None)
        flags.append(value if tag == "b" else None)
    table = pa.table(
        {
            "user_id": ids.take(pa.array(keep, pa.int64())),
            "t": pa.array(tags, pa.string()),
            "vn": pa.array(numbers, pa.float64()),
            "vs": pa.array(texts, pa.string()),
            "vb": pa.array(flags, pa.bool_()),
            "vi": _positions(len(keep)),
        }
    )
    return TraitPart(table, values, "mixed")


def _positions(count: int) -> pa.Array:
    return pa.array(np.arange(count, dtype=np.int32 if count < 2**31 else np.int64))


def _tag(value: object) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int) and abs(value) < EXACT_INT or isinstance(value, float):
        return "n"
    return "s" if isinstance(value, str) else "j"
