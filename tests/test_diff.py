from collections.abc import Sequence

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.model import Computation
from sync.plan.diff import apply_changes, diff_states

VIP = Computation("vip", "audience", "VIP")
BETA = Computation("beta", "audience", "Beta")
REV = Computation("revenue", "trait", "Revenue")
ALL = [VIP, BETA, REV]


def state(rows: dict[str, dict[str, object]], comps: Sequence[Computation] = ALL) -> pd.DataFrame:
    frame = pd.DataFrame(index=pd.Index(list(rows), dtype=object), columns=[c.key for c in comps], dtype=object)
    for user, values in rows.items():
        for key, value in values.items():
            frame.at[user, key] = value  # type: ignore[assignment]
    for c in comps:
        if c.kind == "audience":
            frame[c.key] = frame[c.key].fillna(False).astype(bool)
        else:
            frame[c.key] = frame[c.key].astype(object).where(frame[c.key].notna(), None)
    return frame


def rows(changes: pd.DataFrame) -> set[tuple[object, ...]]:
    return set(changes.itertuples(index=False, name=None))


EMPTY = state({})


def test_initial_sync_sends_members_and_non_null_traits_only() -> None:
    new = state({"u1": {"vip": True, "revenue": 10.0}, "u2": {"beta": True}, "u3": {}})
    assert rows(diff_states(EMPTY, new, ALL, force={"vip", "beta", "revenue"})) == {
        ("u1", "vip", None, True, "entered"),
        ("u1", "revenue", None, 10.0, "trait"),
        ("u2", "beta", None, True, "entered"),
    }


def test_incremental_sends_only_what_changed() -> None:
    old = state({"u1": {"vip": True, "revenue": 10.0}, "u2": {"beta": True}, "u3": {"revenue": 5}})
    new = state({"u1": {"vip": True, "revenue": 12.0}, "u2": {"beta": True, "vip": True}, "u3": {}})
    assert rows(diff_states(old, new, ALL)) == {
        ("u1", "revenue", 10.0, 12.0, "trait"),
        ("u2", "vip", False, True, "entered"),
        ("u3", "revenue", 5, None, "trait"),
    }


def test_a_user_gone_from_the_snapshot_exits_every_audience() -> None:
    old = state({"u1": {"vip": True, "beta": True, "revenue": 3.0}, "u2": {"vip": True}})
    new = state({"u2": {"vip": True}})
    assert rows(diff_states(old, new, ALL)) == {
        ("u1", "vip", True, False, "exited"),
        ("u1", "beta", True, False, "exited"),
        ("u1", "revenue", 3.0, None, "trait"),
    }


def test_a_newly_tracked_audience_gets_an_initial_sync_while_others_stay_incremental() -> None:
    old = state({"u1": {"vip": True}, "u2": {"vip": True}}, [VIP])
    new = state({"u1": {"vip": True, "beta": True}, "u2": {"vip": True}, "u3": {"beta": True}}, [VIP, BETA])
    assert rows(diff_states(old, new, [VIP, BETA], force={"beta"})) == {
        ("u1", "beta", None, True, "entered"),
        ("u3", "beta", None, True, "entered"),
    }


def test_full_resends_everything_current_and_still_sends_exits() -> None:
    old = state({"u1": {"vip": True, "revenue": 1}, "u2": {"vip": True}})
    new = state({"u1": {"vip": True, "revenue": 1}, "u3": {"beta": True}})
    assert rows(diff_states(old, new, ALL, force={"vip", "beta", "revenue"})) == {
        ("u1", "vip", True, True, "entered"),
        ("u1", "revenue", 1, 1, "trait"),
        ("u2", "vip", True, False, "exited"),
        ("u3", "beta", None, True, "entered"),
    }


def test_same_values_of_another_type_compare_by_json() -> None:
    old = state({"u1": {"revenue": {"a": [1, 2]}}, "u2": {"revenue": "1"}})
    new = state({"u1": {"revenue": {"a": [1, 2]}}, "u2": {"revenue": 1}})
    assert rows(
        diff_states(
            old,
            new,
            [REV],
        )
    ) == {("u2", "revenue", "1", 1, "trait")}


def test_changes_come_grouped_by_user_in_snapshot_order() -> None:
    new = state({"b": {"vip": True, "revenue": 1}, "a": {"vip": True, "beta": True}})
    changes = diff_states(EMPTY, new, ALL, force={"vip", "beta", "revenue"})
    assert changes["user_id"].tolist() == ["b", "b", "a", "a"]


values = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from(["x", "y"]))
user_state = st.fixed_dictionaries({"vip": st.booleans(), "beta": st.booleans(), "revenue": values})
states = st.dictionaries(st.sampled_from([f"u{i}" for i in range(12)]), user_state, max_size=12)


def present(frame: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Users with anything to remember, as plain dicts."""
    out: dict[str, dict[str, object]] = {}
    for user, row in frame.iterrows():
        kept = {str(k): v for k, v in row.items() if v is not None and v is not False}
        if kept:
            out[str(user)] = kept
    return out


@settings(max_examples=200, deadline=None)
@given(old=states, new=states)
def test_applying_the_diff_to_the_old_state_gives_the_new_state(
    old: dict[str, dict[str, object]], new: dict[str, dict[str, object]]
) -> None:
    old_frame, new_frame = state(old), state(new)
    changes = diff_states(old_frame, new_frame, ALL)
    assert present(apply_changes(old_frame, changes, ALL)) == present(new_frame)
    # Nothing is sent for a user whose remembered values did not change.
    assert set(changes["user_id"]) == {
        u for u in set(old) | set(new) if present(state({u: old.get(u, {})})) != present(state({u: new.get(u, {})}))
    }


def test_values_are_plain_python_and_every_form_of_null_is_none() -> None:
    """Membership is a Python bool (messages test ``is True``); NaN, pandas' NA and a missing value of a
    text column are all a null trait."""
    old = state({"u1": {"vip": True, "revenue": 5.0}, "u2": {"revenue": "x"}, "u3": {"revenue": 2}})
    new = pd.DataFrame(
        {
            "vip": [False, True, False],
            "beta": [False, False, False],
            "revenue": pd.array([None, "y", None], dtype="str"),
        },
        index=pd.Index(["u1", "u2", "u3"], dtype=object),
    )
    listed = list(diff_states(old, new, ALL).itertuples(index=False, name=None))
    assert listed == [
        ("u1", "vip", True, False, "exited"),
        ("u1", "revenue", 5.0, None, "trait"),
        ("u2", "vip", False, True, "entered"),
        ("u2", "revenue", "x", "y", "trait"),
        ("u3", "revenue", 2, None, "trait"),
    ]
    assert all(type(row[2]) is bool and type(row[3]) is bool for row in listed if row[1] == "vip")
    floats = pd.DataFrame({"revenue": [float("nan"), pd.NA]}, index=pd.Index(["u3", "u4"], dtype=object), dtype=object)
    assert list(diff_states(old, floats, [REV]).itertuples(index=False, name=None)) == [
        ("u3", "revenue", 2, None, "trait"),
        ("u1", "revenue", 5.0, None, "trait"),
        ("u2", "revenue", "x", None, "trait"),
    ]
