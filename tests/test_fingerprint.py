"""Fingerprints pick the users an incremental run looks at; they must never hide a change."""

import json
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from sync.diff import diff_states
from sync.fingerprint import candidates, fingerprints
from sync.receiver import Receiver
from sync.runner import Runner
from sync.snapshot import Computation
from sync.store import Store
from sync.store.models import AckState
from tests.conftest import Warehouse, make_job

VIP = Computation("vip", "audience", "VIP")
REV = Computation("revenue", "trait", "Revenue")
ALL = [VIP, REV]

values = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["a", "3", "true"]),
    st.booleans(),
    st.just({"k": [1, 2]}),
)
rows = st.dictionaries(st.sampled_from([f"u{i}" for i in range(10)]), st.tuples(st.booleans(), values), max_size=10)


def frame(data: dict[str, tuple[bool, Any]]) -> pd.DataFrame:
    index = pd.Index(list(data), dtype=object)
    return pd.DataFrame(
        {
            "vip": pd.Series([v[0] for v in data.values()], index=index, dtype=bool),
            "revenue": pd.Series([v[1] for v in data.values()], index=index, dtype=object),
        }
    )


@settings(max_examples=200, deadline=None)
@given(old=rows, new=rows)
def test_every_user_with_a_real_change_is_looked_at(old: dict[str, Any], new: dict[str, Any]) -> None:
    old_frame, new_frame = frame(old), frame(new)
    # What the store holds: the old states through JSON, as acknowledged states are kept.
    stored = pd.DataFrame(
        {c: [json.loads(json.dumps(v)) for v in old_frame[c]] for c in old_frame.columns}, index=old_frame.index
    )
    stored["vip"] = stored["vip"].astype(bool)
    stored_fps = fingerprints(stored, ALL)
    look, gone = candidates(
        new_frame.index,
        fingerprints(new_frame, ALL),
        stored.index,
        stored_fps,
        np.ones(len(stored), dtype=bool),
        np.zeros(len(new_frame), dtype=bool),
    )
    changed = set(diff_states(old_frame, new_frame, ALL)["user_id"])
    assert changed <= set(look) | set(gone)


@given(data=rows)
def test_a_fingerprint_depends_on_the_row_alone(data: dict[str, Any]) -> None:
    whole = frame(data)
    together = fingerprints(whole, ALL)
    alone = [fingerprints(whole.iloc[[i]], ALL)[0] for i in range(len(whole))]
    assert list(together) == alone


def test_json_equal_values_share_a_fingerprint_and_others_do_not() -> None:
    same = frame({"a": (True, 3), "b": (True, 3.0)})
    assert len(set(fingerprints(same, ALL))) == 1
    different = frame({"a": (True, 3), "b": (True, "3"), "c": (True, True), "d": (False, 3), "e": (True, None)})
    assert len(set(fingerprints(different, ALL))) == 5
    assert fingerprints(frame({"z": (False, None)}), ALL)[0] == 0


def test_an_incremental_run_examines_only_changed_users(store: Store, warehouse: Warehouse, receiver: Receiver) -> None:
    users = [f"u{i:03d}" for i in range(200)]
    warehouse.set_members("vip", users[:150])
    warehouse.set_trait("revenue", {u: i for i, u in enumerate(users)})
    job = make_job(
        warehouse,
        receiver.url,
        audiences=[warehouse.audience("VIP", "vip")],
        traits=[warehouse.trait("Revenue", "revenue")],
        profiles=False,
    )
    runner = Runner(store)
    assert runner.run(job).delivered == 200
    warehouse.set_members("vip", users[:149] + ["u199"])  # u149 exits, u199 enters
    warehouse.set_trait("revenue", {u: (i if u != "u000" else 1000) for i, u in enumerate(users) if u != "u010"})
    plan = runner.plan(job, store.tracked_keys("contacts"))
    assert plan.examined == 4  # u000, u010, u149, u199
    assert {u.user_id for u in plan.updates} == {"u000", "u010", "u149", "u199"}


def test_states_without_a_fingerprint_are_compared_in_full_then_get_one(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    warehouse.set_members("vip", ["a", "b", "c"])
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    runner = Runner(store)
    runner.run(job)
    with store.engine.begin() as connection:  # rows written before fingerprints existed
        connection.execute(update(AckState).values(fingerprint=None))
    warehouse.set_members("vip", ["a", "b"])
    plan = runner.plan(job, store.tracked_keys("contacts"))
    assert plan.examined == 3 and [u.user_id for u in plan.updates] == ["c"]
    assert runner.run(job).updates == 1
    assert runner.plan(job, store.tracked_keys("contacts")).examined == 0  # a and b got fingerprints back


def test_a_removed_trait_refreshes_fingerprints_instead_of_sending(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    warehouse.set_members("vip", ["a", "b"])
    warehouse.set_trait("revenue", {"a": 1, "b": 2})
    with_trait = make_job(
        warehouse,
        receiver.url,
        audiences=[warehouse.audience("VIP", "vip")],
        traits=[warehouse.trait("Revenue", "revenue")],
        profiles=False,
    )
    runner = Runner(store)
    runner.run(with_trait)
    without = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    first = runner.run(without)
    assert first.updates == 0
    assert runner.plan(without, store.tracked_keys("contacts")).examined == 0
