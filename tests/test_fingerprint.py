"""Fingerprints pick the users an incremental run looks at; they must never hide a change."""

from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

import sync.store.state as state_store
from sync.config import JobConfig
from sync.dev.receiver import Receiver
from sync.model import Computation
from sync.plan.diff import diff_states
from sync.run.runner import Runner
from sync.snapshot.engine import Snapshot, stored_table
from sync.snapshot.normalise import build_snapshot
from sync.store import Store
from sync.store.models import AckState, FingerprintIndex
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


def snapshot(data: dict[str, tuple[bool, Any]]) -> Snapshot:
    members = pd.DataFrame({"user_id": pd.Series([u for u, (vip, _) in data.items() if vip], dtype=object)})
    traits = pd.DataFrame(
        {
            "user_id": pd.Series([u for u, (_, v) in data.items() if v is not None], dtype=object),
            "value": pd.Series([v for v in (v for _, v in data.values()) if v is not None], dtype=object),
        }
    )
    return build_snapshot(ALL, None, {"vip": members, "revenue": traits})


def fingerprints(snap: Snapshot) -> dict[str, int]:
    table = snap.everyone().table
    return dict(zip(table.column("user_id").to_pylist(), table.column("fp").to_pylist(), strict=True))


@settings(max_examples=100, deadline=None)
@given(old=rows, new=rows)
def test_every_user_with_a_real_change_is_looked_at(old: dict[str, Any], new: dict[str, Any]) -> None:
    before, after = snapshot(old), snapshot(new)
    recorded = fingerprints(before)  # what acknowledging the old snapshot recorded
    selection = after.examine(stored_table(list(recorded), list(recorded.values())))
    look = set(selection.table.column("user_id").to_pylist())
    changed = set(diff_states(before.state, after.state, ALL)["user_id"])
    assert changed <= look | set(selection.gone)


@settings(max_examples=50, deadline=None)
@given(data=rows)
def test_a_fingerprint_depends_on_the_row_alone(data: dict[str, Any]) -> None:
    together = fingerprints(snapshot(data))
    alone = {user: fingerprints(snapshot({user: value})).get(user) for user, value in data.items()}
    assert {u: together.get(u) for u in alone} == alone


def test_json_equal_values_share_a_fingerprint_and_others_do_not() -> None:
    same = fingerprints(snapshot({"a": (True, 3), "b": (True, 3.0)}))
    assert len(set(same.values())) == 1
    different = snapshot({"a": (True, 3), "b": (True, "3"), "c": (True, True), "d": (False, 3), "e": (True, None)})
    assert len(set(fingerprints(different).values())) == 5
    assert (
        fingerprints(
            build_snapshot(
                ALL,
                pd.DataFrame({"user_id": ["z"]}),
                {"vip": pd.DataFrame({"user_id": []}), "revenue": pd.DataFrame({"user_id": [], "value": []})},
            )
        )["z"]
        == 0
    )


def test_unchanged_users_are_not_looked_at_and_vanished_ones_are() -> None:
    before = snapshot({"a": (True, 1), "b": (False, "x"), "c": (True, None)})
    recorded = fingerprints(before)
    after = snapshot({"a": (True, 1), "b": (False, "y")})
    selection = after.examine(stored_table(list(recorded), list(recorded.values())))
    assert selection.table.column("user_id").to_pylist() == ["b"]
    assert selection.gone == ["c"]


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
    plan = runner.planner.plan(job, store.tracked_keys("contacts"))
    assert plan.examined == 4  # u000, u010, u149, u199
    assert {u.user_id for u in plan.updates} == {"u000", "u010", "u149", "u199"}


def synced_vip(store: Store, warehouse: Warehouse, receiver: Receiver, members: list[str]) -> tuple[JobConfig, Runner]:
    """A job of one audience, VIP, with ``members``, synced once."""
    warehouse.set_members("vip", members)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    runner = Runner(store)
    runner.run(job)
    return job, runner


def test_states_without_a_fingerprint_are_compared_in_full_then_get_one(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    job, runner = synced_vip(store, warehouse, receiver, ["a", "b", "c"])
    with store.engine.begin() as connection:  # as after an upgrade: fingerprints of another hash were cleared
        connection.execute(update(AckState).values(fingerprint=None))
        connection.execute(delete(FingerprintIndex))
    warehouse.set_members("vip", ["a", "b"])
    plan = runner.planner.plan(job, store.tracked_keys("contacts"))
    assert plan.examined == 3 and [u.user_id for u in plan.updates] == ["c"]
    assert runner.run(job).updates == 1
    assert runner.planner.plan(job, store.tracked_keys("contacts")).examined == 0  # a and b got fingerprints back


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
    assert runner.planner.plan(without, store.tracked_keys("contacts")).examined == 0


def test_rows_listed_twice_have_the_fingerprint_of_one_listing() -> None:
    def build(members: list[str], ids: list[str], values: list[object]) -> Snapshot:
        results = {
            "vip": pd.DataFrame({"user_id": members}),
            "revenue": pd.DataFrame({"user_id": ids, "value": pd.Series(values, dtype=object)}),
        }
        return build_snapshot(ALL, None, results)

    once = build(["a", "b"], ["a", "c"], [1.5, "x"])
    twice = build(["a", "a", "b", "a"], ["a", "c", "a", "c"], [1.5, "x", 1.5, "x"])
    assert fingerprints(once) == fingerprints(twice)
    assert len(set(fingerprints(once).values())) == 3


def test_acknowledged_fingerprints_read_in_pieces_are_all_there(
    store: Store, warehouse: Warehouse, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_store, "_FETCH", 2)
    warehouse.set_members("vip", ["a", "b", "c", "d", "e"])
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    Runner(store).run(job)
    with store.engine.begin() as connection:  # no index: every row is read
        connection.execute(delete(FingerprintIndex))
    stored = store.stored_fingerprints("contacts")
    assert sorted(stored.column("user_id").to_pylist()) == ["a", "b", "c", "d", "e"]
    assert all(stored.column("known").to_pylist())


def test_the_index_with_the_rows_written_since_is_the_truth_and_is_rewritten_past_its_share(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    users = [f"u{i:02d}" for i in range(40)]
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    runner = Runner(store)

    def index_run() -> int:
        with store.engine.connect() as connection:
            return int(connection.execute(select(FingerprintIndex.as_of_run).limit(1)).scalar_one())

    def truth() -> list[tuple[str, int]]:
        rows = store._fingerprint_rows("contacts").to_pylist()  # every row of ack_state, no index
        return sorted((r["user_id"], r["fp"]) for r in rows)

    def read() -> list[tuple[str, int]]:
        return sorted((r["user_id"], r["fp"]) for r in store.stored_fingerprints("contacts").to_pylist())

    warehouse.set_members("vip", users)
    first = runner.run(job).run_id
    assert index_run() == first and read() == truth()
    warehouse.set_members("vip", users[1:])  # 1 of 40 changes: within 5 %, the index stays
    runner.run(job)
    assert index_run() == first and read() == truth()
    warehouse.set_members("vip", users[4:])  # 4 of 40 since the index: past 5 %, rewritten
    third = runner.run(job).run_id
    assert index_run() == third and read() == truth()
    assert runner.planner.plan(job, store.tracked_keys("contacts")).examined == 0


def test_an_index_of_another_hash_scheme_is_compared_in_full_once_then_rewritten(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    job, runner = synced_vip(store, warehouse, receiver, ["a", "b", "c"])
    with store.engine.begin() as connection:
        connection.execute(update(FingerprintIndex).values(scheme="another-hash"))
    assert not any(store.stored_fingerprints("contacts").column("known").to_pylist())
    assert runner.planner.plan(job, store.tracked_keys("contacts")).examined == 3
    assert runner.run(job).updates == 0
    assert runner.planner.plan(job, store.tracked_keys("contacts")).examined == 0


@pytest.mark.parametrize("guarded", [False, True], ids=["streamed", "planned in full first"])
def test_the_snapshot_is_released_before_the_fingerprint_index_is_written(
    store: Store, warehouse: Warehouse, receiver: Receiver, guarded: bool
) -> None:
    """Every result's rows need not stay in memory while the index reads every acknowledged fingerprint and
    writes them again."""
    import weakref

    from sync.plan.planner import Planner

    class Watched(Planner):
        def __init__(self, store: Store) -> None:
            super().__init__(store)
            self.seen: list[weakref.ref[Any]] = []
            self.alive_at_settle: list[bool] = []

        def _examined(self, *args: Any) -> Any:
            snapshot, selection = super()._examined(*args)
            self.seen.append(weakref.ref(snapshot))
            return snapshot, selection

        def settle(self, job: JobConfig, run_id: int, complete: bool) -> None:
            self.alive_at_settle.append(self.seen[-1]() is not None)
            super().settle(job, run_id, complete)

    users = [f"u{i:02d}" for i in range(30)]
    warehouse.set_members("vip", users)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    if not guarded:
        job = job.model_copy(update={"guard": job.guard.model_copy(update={"enabled": False})})
    runner = Runner(store)
    runner.planner = watched = Watched(store)
    assert runner.run(job).delivered == 30  # an initial sync: streamed
    warehouse.set_members("vip", users[:20])  # a tracked job: the guard plans it in full first, when enabled
    assert runner.run(job).delivered == 10
    assert len(watched.seen) == 2
    assert watched.alive_at_settle == [False, False]
