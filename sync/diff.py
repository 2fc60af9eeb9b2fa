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

import numpy as np
import pandas as pd

from sync.snapshot import Computation, json_key

CHANGE_COLUMNS = ["user_id", "key", "old", "new", "change"]


def diff_states(
    old: pd.DataFrame, new: pd.DataFrame, computations: Sequence[Computation], force: Collection[str] = ()
) -> pd.DataFrame:
    """One row per (user, key) to send: ``user_id, key, old, new, change``, users in ``new`` order first."""
    users = new.index.append(old.index.difference(new.index))
    known = users.isin(old.index)
    parts = []
    for computation in computations:
        tracked = computation.key in old.columns
        forced = computation.key in force
        if computation.kind == "audience":
            parts.append(_audience_changes(old, new, users, known, computation.key, tracked, forced))
        else:
            parts.append(_trait_changes(old, new, users, known, computation.key, tracked, forced))
    changes = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CHANGE_COLUMNS)
    return _in_user_order(changes, users)


def _audience_changes(
    old: pd.DataFrame,
    new: pd.DataFrame,
    users: pd.Index,
    known: np.ndarray,
    key: str,
    tracked: bool,
    forced: bool,
) -> pd.DataFrame:
    was = _column(old, key, users, False).astype(bool).to_numpy() if tracked else np.zeros(len(users), bool)
    now = _column(new, key, users, False).astype(bool).to_numpy()
    send = (was != now) | (now & forced)
    old_values = pd.Series(was, dtype=object).where(known & tracked, None).to_numpy()[send]
    return pd.DataFrame(
        {
            "user_id": users[send],
            "key": key,
            "old": old_values,
            "new": now[send],
            "change": np.where(now[send], "entered", "exited"),
        }
    )


def _trait_changes(
    old: pd.DataFrame,
    new: pd.DataFrame,
    users: pd.Index,
    known: np.ndarray,
    key: str,
    tracked: bool,
    forced: bool,
) -> pd.DataFrame:
    was = _column(old, key, users, None).tolist() if tracked else [None] * len(users)
    now = _column(new, key, users, None).tolist()
    send = [
        (w is None) != (n is None) or (n is not None and (forced or not _same(w, n)))
        for w, n in zip(was, now, strict=True)
    ]
    mask = np.array(send, dtype=bool)
    return pd.DataFrame(
        {
            "user_id": users[mask],
            "key": key,
            "old": pd.Series(was, dtype=object)[mask].to_numpy(),
            "new": pd.Series(now, dtype=object)[mask].to_numpy(),
            "change": "trait",
        }
    )


def _same(old: object, new: object) -> bool:
    """Equal as JSON values: ``3`` and ``3.0`` are the same number, ``"3"`` and ``true`` are not."""
    if type(old) is type(new) and isinstance(new, str | bool | int | float):
        return old == new
    if _is_number(old) and _is_number(new):
        return old == new
    return json_key(old) == json_key(new)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _column(frame: pd.DataFrame, key: str, users: pd.Index, fill: object) -> pd.Series:
    if key not in frame.columns:
        return pd.Series([fill] * len(users), index=users, dtype=object)
    column = frame[key].reindex(users)
    return column.astype(object).where(column.notna(), fill)


def _in_user_order(changes: pd.DataFrame, users: pd.Index) -> pd.DataFrame:
    position = pd.Series(np.arange(len(users)), index=users)
    order = position.reindex(changes["user_id"]).to_numpy()
    return changes.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)[CHANGE_COLUMNS]


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
