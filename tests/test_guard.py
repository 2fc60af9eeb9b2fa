"""The mass-change guard: a broken upstream query must not push false to a whole audience."""

import pandas as pd
import pytest

from sync.config import GuardConfig
from sync.dev.receiver import Receiver
from sync.model import Computation
from sync.plan.diff import diff_states
from sync.plan.guard import guard_problems, moves
from sync.run.runner import Runner, RunOptions
from sync.store import Store
from tests.conftest import Warehouse, make_job

VIP = Computation("vip", "audience", "VIP")


def members(n: int, of: int) -> pd.DataFrame:
    index = pd.Index([f"u{i}" for i in range(of)], dtype=object)
    return pd.DataFrame({"vip": [i < n for i in range(of)]}, index=index)


def problems(before: int, after: int, guard: dict[str, object] | None = None, size: int = 400) -> list[str]:
    old, new = members(before, size), members(after, size)
    changes = diff_states(old, new, [VIP])
    counts = {"vip": int(new["vip"].sum())}
    return guard_problems(counts, moves(changes), [VIP], {"vip"}, GuardConfig.model_validate(guard or {}))


def test_more_than_half_of_a_large_audience_exiting_trips_the_guard() -> None:
    assert problems(200, 99) == [
        "audience vip: 101 of its 200 members (50%) would exit, more than the 50% the guard allows"
    ]
    assert problems(200, 100) == []  # exactly half is allowed


def test_small_audiences_may_shrink_freely_but_not_vanish() -> None:
    assert problems(99, 1) == []
    assert problems(3, 0) == [
        "audience vip: the snapshot has no members, but 3 users are members as the destination acknowledged them; "
        "every one of them would be sent false"
    ]
    assert problems(3, 0, {"block_empty": False}) == []


@pytest.mark.parametrize(
    ("guard", "expected"), [({"exit_share": 0.9}, 0), ({"min_members": 500}, 0), ({"enabled": False}, 0), ({}, 1)]
)
def test_the_guard_is_configurable(guard: dict[str, object], expected: int) -> None:
    assert len(problems(300, 100, guard)) == expected


def test_a_new_audience_never_trips_the_guard() -> None:
    old = pd.DataFrame(index=pd.Index([], dtype=object))
    new = members(0, 10)
    changes = diff_states(old, new, [VIP], force={"vip"})
    assert guard_problems({"vip": 0}, moves(changes), [VIP], set(), GuardConfig()) == []


def test_a_guarded_run_sends_nothing_and_changes_nothing_until_forced(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    users = [f"u{i:03d}" for i in range(150)]
    warehouse.set_members("vip", users)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    assert runner.run(job).delivered == 150
    sent = len(receiver.records)
    warehouse.set_members("vip", users[:10])  # a broken upstream query

    blocked = runner.run(job)
    assert (blocked.status, blocked.exit_code, blocked.delivered) == ("blocked", 5, 0)
    assert blocked.error is not None and "audience vip: 140 of its 150 members (93%) would exit" in blocked.error
    assert "--force" in blocked.error
    assert len(receiver.records) == sent and store.acknowledged("contacts", "u149") == ({"vip": True}, 1)
    run = store.run(blocked.run_id)
    assert run is not None and run.status == "blocked"

    dry = runner.run(job, RunOptions(dry_run=True))
    assert dry.status == "planned" and dry.error is not None and "would be stopped" in dry.error

    forced = runner.run(job, RunOptions(force=True))
    assert (forced.status, forced.exited, forced.delivered) == ("succeeded", 140, 140)
