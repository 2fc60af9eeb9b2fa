"""A job's snapshot: who is in which audience, each computed trait's value, and each user's profile.

Pure: raw query results in, a validated ``Snapshot`` out. Rows that cannot be used (a null ``user_id``,
a value JSON cannot carry) are skipped and reported as ``RowIssue``; results that make the whole snapshot
untrustworthy (conflicting duplicate profiles, unknown columns) raise ``SourceError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sync.errors import SourceError

PROFILE_COLUMNS = (
    "user_id",
    "anonymous_id",
    "email",
    "first_name",
    "last_name",
    "name",
    "title",
    "phone",
    "linked_in",
    "twitter",
    "company_id",
    "company_name",
)
# How many offending user ids an error message lists before it says "and N more".
_SHOWN_IDS = 10


@dataclass(frozen=True)
class RowIssue:
    """A row that was skipped: where it came from, which user (when known) and why."""

    source: str
    problem: str
    user_id: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Computation:
    key: str
    kind: str  # "audience" or "trait"
    name: str


@dataclass(frozen=True)
class Snapshot:
    """``state``: one row per user, a bool column per audience and an object column per trait (None = null).

    ``profiles`` maps user id → profile fields (only the non-null ones) for users the profiles query returned.
    """

    computations: tuple[Computation, ...]
    state: pd.DataFrame
    profiles: Mapping[str, Mapping[str, str]]
    issues: tuple[RowIssue, ...] = field(default=())


def build_snapshot(
    computations: Sequence[Computation], profiles: pd.DataFrame | None, results: Mapping[str, pd.DataFrame]
) -> Snapshot:
    """Assemble a snapshot from the profiles query and one raw result per computation key."""
    issues: list[RowIssue] = []
    profile_map = normalise_profiles(profiles, issues) if profiles is not None else {}
    members: dict[str, pd.Index] = {}
    values: dict[str, pd.Series] = {}
    for computation in computations:
        frame = results[computation.key]
        label = f"{computation.kind} {computation.key}"
        if computation.kind == "audience":
            members[computation.key] = normalise_members(frame, label, issues)
        else:
            values[computation.key] = normalise_trait(frame, label, issues)
    users = _universe(profile_map, members, values)
    columns: dict[str, Any] = {}
    for computation in computations:  # positions against one hash table of the users, built once
        if computation.kind == "audience":
            member = np.zeros(len(users), dtype=bool)
            member[users.get_indexer(members[computation.key])] = True
            columns[computation.key] = member
        else:
            trait = values[computation.key]
            column = np.full(len(users), None, dtype=object)
            column[users.get_indexer(trait.index)] = trait.to_numpy(dtype=object)
            columns[computation.key] = column
    state = pd.DataFrame(columns, index=users, columns=[c.key for c in computations])
    return Snapshot(tuple(computations), state, profile_map, tuple(issues))


def _universe(
    profiles: Mapping[str, Any], members: Mapping[str, pd.Index], values: Mapping[str, pd.Series]
) -> pd.Index:
    """Every user of the snapshot, in order of first appearance, from one pass over all the ids."""
    parts = [np.asarray(list(profiles), dtype=object)]
    parts += [index.to_numpy(dtype=object) for index in members.values()]
    parts += [series.index.to_numpy(dtype=object) for series in values.values()]
    universe: pd.Index = pd.Index(pd.unique(np.concatenate(parts)), dtype=object, name="user_id")
    return universe


def normalise_profiles(frame: pd.DataFrame, issues: list[RowIssue]) -> ProfileTable:
    unknown = [str(c) for c in frame.columns if c not in PROFILE_COLUMNS]
    if unknown:
        raise SourceError(
            f"profiles: unknown column(s) {', '.join(unknown)}; accepted columns: {', '.join(PROFILE_COLUMNS)}"
        )
    if "user_id" not in frame.columns:
        raise SourceError("profiles: the query must return a user_id column")
    frame = _with_user_ids(frame, "profiles", issues)
    columns = [str(c) for c in frame.columns if c != "user_id"]
    texts = pd.DataFrame(
        {c: _texts(frame[c]).to_numpy(dtype=object) for c in columns},
        index=pd.Index(frame["user_id"].tolist(), dtype=object),
        columns=columns,
        dtype=object,
    )
    distinct = texts[~texts.reset_index().duplicated().to_numpy()]  # identical duplicate rows are one row
    conflicting = distinct.index[distinct.index.duplicated()].unique().tolist()
    if conflicting:
        raise SourceError(f"profiles: conflicting duplicate rows for user_id {_some(conflicting)}")
    return ProfileTable(distinct)


class ProfileTable(Mapping[str, Mapping[str, str]]):
    """Profiles by user id, each built as a dict of its non-null fields only when it is looked up."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame
        self._position = {user_id: i for i, user_id in enumerate(frame.index.tolist())}

    def __getitem__(self, user_id: str) -> Mapping[str, str]:
        row = self._frame.iloc[self._position[user_id]]
        return {str(k): v for k, v in row.items() if v is not None}

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def _texts(column: pd.Series) -> pd.Series:
    """A profile column as text, None where null or blank."""
    values = column.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        blank = _blank(column)
        return pd.Series(
            [None if b else v for v, b in zip(values.tolist(), blank.tolist(), strict=True)], dtype="object"
        )
    return pd.Series([_text_or_none(v) for v in values], dtype=object)


def normalise_members(frame: pd.DataFrame, label: str, issues: list[RowIssue]) -> pd.Index:
    """The member ids of an audience; a user listed twice is one member."""
    if "user_id" not in frame.columns:
        raise SourceError(f"{label}: the result must have a user_id column (columns: {_columns(frame)})")
    ids = _with_user_ids(frame[["user_id"]], label, issues)["user_id"]
    members: pd.Index = pd.Index(ids.unique(), dtype=object)
    return members


def normalise_trait(frame: pd.DataFrame, label: str, issues: list[RowIssue]) -> pd.Series:
    """A trait's non-null values by user id, as JSON-ready Python values."""
    missing = [c for c in ("user_id", "value") if c not in frame.columns]
    if missing:
        raise SourceError(f"{label}: the result must have user_id and value columns (columns: {_columns(frame)})")
    frame = _with_user_ids(frame[["user_id", "value"]], label, issues)
    converted = _json_values(frame["value"])
    keep = []
    for user_id, (_value, problem) in zip(frame["user_id"].tolist(), converted, strict=True):
        if problem:
            issues.append(RowIssue(label, problem, user_id))
        keep.append(problem is None)
    values = pd.Series([v for v, _ in converted], index=frame["user_id"].tolist(), dtype=object)
    values = values[np.array(keep, dtype=bool) & values.notna().to_numpy()]
    return _one_value_per_user(values, label)


def _one_value_per_user(values: pd.Series, label: str) -> pd.Series:
    if not values.index.has_duplicates:
        return values
    frame = pd.DataFrame({"user_id": values.index, "value": [json_key(v) for v in values.tolist()]})
    distinct = frame.drop_duplicates()
    conflicting = distinct["user_id"][distinct["user_id"].duplicated()].unique().tolist()
    if conflicting:
        raise SourceError(f"{label}: conflicting values for user_id {_some(conflicting)}")
    return values[~values.index.duplicated()]


def _with_user_ids(frame: pd.DataFrame, label: str, issues: list[RowIssue]) -> pd.DataFrame:
    """Rows with a usable user id, as a string; the others are reported and dropped."""
    ids = _user_ids(frame["user_id"])
    usable = np.array([user_id is not None for user_id in ids], dtype=bool)
    skipped = len(ids) - int(usable.sum())
    if skipped:
        issues.append(RowIssue(label, "null or empty user_id", None, skipped))
    frame = frame.assign(user_id=pd.Series(ids, index=frame.index, dtype=object))
    return frame.loc[usable]


def _user_ids(column: pd.Series) -> list[str | None]:
    """User ids as text, None where unusable; text columns take a vectorised path."""
    values = column.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) != "string":
        return [_user_id(value) for value in values]
    blank = _blank(column)
    return [None if b else v for v, b in zip(values.tolist(), blank.tolist(), strict=True)]


def _blank(column: pd.Series) -> np.ndarray:
    """Null, empty or whitespace-only, for a column of text (vectorised with Arrow)."""
    text = pa.array(column.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    empty = pc.match_substring_regex(text, r"^\s*$").to_numpy(zero_copy_only=False)
    return np.asarray(column.isna().to_numpy() | np.where(pd.isna(empty), True, empty), dtype=bool)


def _user_id(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value)
    return text if text.strip() else None


def _text_or_none(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def _json_values(column: pd.Series) -> list[tuple[Any, str | None]]:
    """Every value as JSON carries it, with the problem when it cannot; floats and text are vectorised."""
    values = column.to_numpy(dtype=object)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string" or kind == "empty":
        return [(None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else v, None) for v in values]
    if kind == "floating" and column.dtype.kind == "f":
        numbers = column.to_numpy(dtype=np.float64)
        if np.isfinite(numbers[~np.isnan(numbers)]).all():
            return [(None if n != n else n, None) for n in numbers.tolist()]
    return [_json_value(value) for value in values]


def _json_value(value: object) -> tuple[Any, str | None]:
    """A value as JSON can carry it, or a problem that says why it cannot."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None, None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str | int):
        return value, None
    if isinstance(value, float):
        if math.isnan(value):
            return None, None
        return (value, None) if math.isfinite(value) else (None, f"value {value} is not a finite number")
    if isinstance(value, Decimal):
        return (int(value) if value == value.to_integral_value() else float(value)), None
    if isinstance(value, datetime | date | time):
        return value.isoformat(), None
    if isinstance(value, list | tuple | dict):
        return value, None
    return None, f"value of type {type(value).__name__} cannot be sent as JSON"


def json_key(value: object) -> str:
    """A canonical text of a JSON value, to compare values of any type."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _some(ids: Sequence[object]) -> str:
    shown = ", ".join(repr(str(i)) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def _columns(frame: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in frame.columns) or "none"
