"""The diff between the acknowledged state and a new snapshot. Pure: frames in, a frame of changes out.

Both states are wide frames indexed by user id: a bool column per audience (member or not) and an object
column per trait (``None`` is null). A change is one (user, key) whose value must be sent:

- ``entered`` / ``exited``: audience membership differs (``new`` is ``True`` / ``False``);
- ``trait``: the trait's value differs (``new`` is the value, or ``None`` when it became null).

Keys in ``force`` also send every current member / non-null value even when unchanged: that is the
initial sync of a newly tracked key, and every key of a ``--full`` run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sync.model import PROFILE_KIND, Computation
from sync.snapshot.json_values import json_key

CHANGE_COLUMNS = ["user_id", "key", "old", "new", "change"]


def diff_states(
    old: pd.DataFrame, new: pd.DataFrame, computations: Sequence[Computation], force: Collection[str] = ()
) -> pd.DataFrame:
    """One row per (user, key) to send: ``user_id, key, old, new, change``, users in ``new`` order first."""
    gone = old.index.difference(new.index)
    # Object arrays throughout: pandas would otherwise infer its text dtype, whose lookups run value by value.
    users = np.concatenate([new.index.to_numpy(dtype=object), gone.to_numpy(dtype=object)])
    at_old = (
        old.index.get_indexer(pd.Index(users, dtype=object))
        if len(old.index)
        else np.full(len(users), -1, dtype=np.intp)
    )
    parts: list[_Part] = []
    for computation in computations:
        tracked = computation.key in old.columns
        forced = computation.key in force
        if computation.kind == "audience":
            parts.append(_audience_changes(old, new, at_old, computation.key, tracked, forced))
        else:
            label = "profile" if computation.kind == PROFILE_KIND else "trait"
            parts.append(_trait_changes(old, new, at_old, computation.key, tracked, forced, label))
    if not parts:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    # Users in order, each user's keys in the order of ``computations``.
    positions = np.concatenate([p.rows for p in parts])
    order = np.argsort(positions, kind="stable")

    def joined(values: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(values)[order]

    return pd.DataFrame(
        {
            "user_id": users[positions[order]],
            "key": joined([np.full(len(p.rows), p.key, dtype=object) for p in parts]),
            "old": joined([p.old for p in parts]),
            "new": joined([p.new for p in parts]),
            "change": joined([p.change for p in parts]),
        },
        columns=CHANGE_COLUMNS,
    )


@dataclass(frozen=True)
class _Part:
    """One key's changes: the changed users' rows in the diff's user order, their old and new values and the
    kind of change, as object arrays."""

    key: str
    rows: np.ndarray
    old: np.ndarray
    new: np.ndarray
    change: np.ndarray


def _audience_changes(
    old: pd.DataFrame, new: pd.DataFrame, at_old: np.ndarray, key: str, tracked: bool, forced: bool
) -> _Part:
    was = _taken(_flags(old[key]), at_old, False) if tracked else np.zeros(len(at_old), bool)
    now = np.zeros(len(at_old), bool)
    if key in new.columns:
        now[: len(new)] = _flags(new[key])
    send = (was != now) | (now & forced)
    rows = np.flatnonzero(send)
    old_values = was[rows].astype(object)
    old_values[at_old[rows] < 0 if tracked else slice(None)] = None  # not known before: no old value
    now_sent = now[rows]
    return _Part(key, rows, old_values, now_sent.astype(object), np.where(now_sent, "entered", "exited").astype(object))


def _trait_changes(
    old: pd.DataFrame, new: pd.DataFrame, at_old: np.ndarray, key: str, tracked: bool, forced: bool, label: str
) -> _Part:
    was = _taken(_values(old[key]), at_old, None) if tracked else np.full(len(at_old), None, dtype=object)
    now = np.full(len(at_old), None, dtype=object)
    if key in new.columns:
        now[: len(new)] = _values(new[key])
    send = [
        (w is None) != (n is None) or (n is not None and (forced or not _same(w, n)))
        for w, n in zip(was.tolist(), now.tolist(), strict=True)
    ]
    rows = np.flatnonzero(np.array(send, dtype=bool))
    return _Part(key, rows, was[rows], now[rows], np.full(len(rows), label, dtype=object))


def _flags(column: pd.Series) -> np.ndarray:
    """An audience column as booleans, ``False`` where it is null."""
    if column.dtype == bool:
        return column.to_numpy()
    return column.astype(object).where(column.notna(), False).to_numpy().astype(bool)


def _values(column: pd.Series) -> np.ndarray:
    """A trait column as objects, ``None`` where it is null (None, NaN or pandas' missing value)."""
    values = np.array(column.to_numpy(dtype=object), dtype=object)  # a copy: it may be a read-only view
    values[pd.isna(values)] = None
    return values


def _taken(values: np.ndarray, at: np.ndarray, fill: object) -> np.ndarray:
    """``values[at]``, ``fill`` where ``at`` is -1 (the user is not in that frame)."""
    taken = values[np.maximum(at, 0)] if len(values) else np.empty(len(at), dtype=values.dtype)
    if fill is None:
        taken = taken.astype(object)
    taken[at < 0] = fill
    return taken


def _same(old: object, new: object) -> bool:
    """Equal as JSON values: ``3`` and ``3.0`` are the same number, ``"3"`` and ``true`` are not."""
    if type(old) is type(new) and isinstance(new, str | bool | int | float):
        return old == new
    if _is_number(old) and _is_number(new):
        return old == new
    return json_key(old) == json_key(new)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def apply_changes(old: pd.DataFrame, changes: pd.DataFrame, computations: Sequence[Computation]) -> pd.DataFrame:
    """The state after every change was acknowledged: ``apply_changes(old, diff(old, new)) == new``.

    Users whose every audience is false and every trait null are dropped, as they are from snapshots.
    """
    keys = [c.key for c in computations]
    state = old.reindex(columns=keys).astype(object)
    new_users = pd.Index(changes["user_id"].unique()).difference(state.index)
    state = pd.concat([state, pd.DataFrame(index=new_users, columns=keys, dtype=object)])
    for user_id, key, new in zip(changes["user_id"], changes["key"], changes["new"], strict=True):
        state.at[user_id, key] = new
    for computation in computations:
        if computation.kind == "audience":
            state[computation.key] = state[computation.key].fillna(False).astype(bool)
        else:
            state[computation.key] = state[computation.key].astype(object).where(state[computation.key].notna(), None)
    return state
