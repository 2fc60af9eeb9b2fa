"""The columns of raw results: how they are typed, how ids and texts are read from them, and how a skipped row
is reported. Pure; ``normalise`` builds on these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# How many offending user ids an error message lists before it says "and N more".
SHOWN_IDS = 10

# A column of a result: one Arrow array, or the chunks a reader produced (kept as they are: no copy).
Arrow: TypeAlias = pa.Array | pa.ChunkedArray
Columns: TypeAlias = dict[str, Arrow | list[Any]]
Raw: TypeAlias = pd.DataFrame | pa.Table | Columns


@dataclass(frozen=True)
class RowIssue:
    """A row that was skipped: where it came from, which user (when known) and why."""

    source: str
    problem: str
    user_id: str | None = None
    count: int = 1


def table_of(raw: Raw) -> Columns:
    """A raw result's columns: one Arrow array each, or a list of Python values for a pandas column Arrow
    cannot type (values of mixed types)."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, pa.Table):  # the reader's chunks, as they are: joining them would copy every column
        return {name: raw.column(name) for name in raw.column_names}
    columns: Columns = {}
    for name in raw.columns:
        column = raw[name]
        if column.dtype == object:
            columns[str(name)] = arrow_or_list(list(column.to_numpy(dtype=object)))
        else:
            columns[str(name)] = pa.array(column, from_pandas=True)
    return columns


# Python values of these kinds convert to one Arrow type without changing any value.
_ONE_TYPE = frozenset({"string", "integer", "floating", "boolean", "empty"})


def arrow_or_list(values: list[Any]) -> pa.Array | list[Any]:
    """One typed Arrow array, or the values as they are when Arrow would have to change some of them to
    hold them together (a ``False`` among numbers would become ``0.0``)."""
    if pd.api.types.infer_dtype(values, skipna=True) not in _ONE_TYPE:
        return values
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return values


def column(table: Columns, name: str) -> tuple[Arrow | None, list[Any] | None]:
    """A column as one Arrow array, or as Python objects when Arrow could not type it."""
    column = table[name]
    return (None, column) if isinstance(column, list) else (column, None)


def keep(rows: Any, mask: np.ndarray) -> Any:
    """The rows of an Arrow array or table where ``mask`` holds; the same object (no copy) when it always does."""
    return rows if mask.all() else rows.filter(pa.array(mask))


def present(array: pa.Array) -> np.ndarray:
    return mask(pc.is_valid(array), False)


def user_ids(table: Columns, label: str, issues: list[RowIssue]) -> tuple[Arrow, np.ndarray]:
    """User ids as text and which rows have a usable one; the others are reported."""
    array, objects = column(table, "user_id")
    ids = id_texts(array) if array is not None else None
    if ids is None:
        raw = objects if objects is not None else array.to_pylist()  # type: ignore[union-attr]
        ids = pa.array([user_id(value) for value in raw], pa.string())
    usable = present(ids) & ~blank(ids)
    skipped = len(ids) - int(usable.sum())
    if skipped:
        issues.append(RowIssue(label, "null or empty user_id", None, skipped))
    nul = mask(pc.match_substring(ids, "\x00"), False) & usable
    if nul.any():  # PostgreSQL's text cannot hold it, and no destination wants it
        issues.append(
            RowIssue(label, "user_id contains a NUL character, which the state store cannot hold", None, int(nul.sum()))
        )
        usable &= ~nul
    return ids, usable


def id_texts(array: pa.Array) -> pa.Array | None:
    """Text ids from a typed column, vectorised; None when values must be converted one by one."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind):
        return array.cast(pa.string())
    if pa.types.is_null(kind):
        return pa.nulls(len(array), pa.string())
    if pa.types.is_floating(kind):
        numbers = pc.if_else(pc.is_nan(array), None, array.cast(pa.float64()))
        whole = pc.all(pc.equal(pc.floor(numbers), numbers)).as_py()
        largest = pc.max(pc.abs(numbers)).as_py()
        if whole is not False and (largest is None or largest < 2**63):
            return numbers.cast(pa.int64()).cast(pa.string())
        return None
    return None


def blank(ids: pa.Array) -> np.ndarray:
    """Empty or whitespace-only text (nulls are not blank here)."""
    return mask(pc.equal(pc.binary_length(pc.utf8_trim_whitespace(ids)), 0), False)


def mask(flags: pa.Array, null: bool) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls read as ``null``."""
    return np.asarray(flags.fill_null(null).to_numpy(zero_copy_only=False), dtype=bool)


def texts(table: Columns, name: str) -> pa.Array:
    """A profile column as text. Blank texts stay as they are here: they read as null when a profile is
    looked up (``sync.snapshot.engine``), so that only the profiles a run sends pay for it."""
    array, objects = column(table, name)
    if array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return array.cast(pa.string())
    raw = objects if objects is not None else array.to_pylist()  # type: ignore[union-attr]
    return pa.array([text_or_none(value) for value in raw], pa.string())


def user_id(value: object) -> str | None:
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


def text_or_none(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def some(ids: Sequence[object]) -> str:
    shown = ", ".join(repr(str(i)) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def column_names(table: Columns) -> str:
    return ", ".join(table) or "none"
