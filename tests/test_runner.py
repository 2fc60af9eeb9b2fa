"""Whole runs: a real SQLite warehouse, the real state stores and a real loopback receiver."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sync.dev.receiver import Action, Receiver
from sync.run.runner import Runner, RunOptions
from sync.store import Store
from tests.conftest import Warehouse, make_job

PEOPLE = [
    {"user_id": f"u{i}", "email": f"user{i}@example.com", "first_name": f"First{i}", "anonymous_id": f"anon-{i}"}
    for i in range(1, 7)
]


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles(PEOPLE)
    warehouse.set_members("vip", ["u1", "u2", "u3"])
    warehouse.set_members("beta", ["u3", "u4"])
    warehouse.set_trait("revenue", {"u1": 10.5, "u5": 99, "u6": None})


def job_for(
    warehouse: Warehouse, receiver: Receiver, audiences: tuple[str, ...] = ("vip", "beta"), **destination: Any
) -> Any:
    names = {"vip": ("VIP", {"key": "vip_customers"}), "beta": ("Beta Testers", {}), "new": ("New Audience", {})}
    return make_job(
        warehouse,
        receiver.url,
        audiences=[warehouse.audience(names[a][0], a, **names[a][1]) for a in audiences],
        traits=[warehouse.trait("Total Revenue", "revenue")],
        **destination,
    )


def by_user(bodies: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {b["user_id"]: b for b in bodies}


def sent(receiver: Receiver, start: int = 0) -> dict[str, dict[str, Any]]:
    return {b["user_id"]: dict(b["custom_attributes"]) for b in receiver.accepted()[start:]}


def after_initial_sync(runner: Runner, warehouse: Warehouse, receiver: Receiver) -> tuple[Any, int]:
    """The seeded warehouse synced once: the job, and how many bodies the receiver has."""
    seed(warehouse)
    job = job_for(warehouse, receiver)
    runner.run(job)
    return job, len(receiver.accepted())


def test_initial_sync_sends_every_member_and_trait_value_once(
    runner: Runner, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    report = runner.run(job_for(warehouse, receiver))
    assert (report.kind, report.status, report.exit_code) == ("initial", "succeeded", 0)
    assert sent(receiver) == {
        "u1": {"vip_customers": True, "total_revenue": 10.5},
        "u2": {"vip_customers": True},
        "u3": {"vip_customers": True, "beta_testers": True},
        "u4": {"beta_testers": True},
        "u5": {"total_revenue": 99},
    }
    assert (report.users, report.entered, report.exited, report.traits_changed) == (6, 5, 0, 2)
    assert (report.updates, report.delivered, report.failed) == (5, 5, 0)
    body = by_user(receiver.accepted())["u1"]
    assert body["email"] == "user1@example.com" and body["first_name"] == "First1"
    assert body["anonymous_id"] == "anon-1" and body["type"] == "Send Contact"


def test_incremental_sync_sends_only_changes_and_exits_vanished_users(
    runner: Runner, warehouse: Warehouse, receiver: Receiver
) -> None:
    job, first = after_initial_sync(runner, warehouse, receiver)
    warehouse.set_profiles([p for p in PEOPLE if p["user_id"] != "u3"])  # u3 is gone everywhere
    warehouse.set_members("vip", ["u1", "u2", "u6"])
    warehouse.set_members("beta", ["u4"])
    warehouse.set_trait("revenue", {"u1": 12.0, "u5": 99})
    report = runner.run(job)
    assert report.kind == "incremental"
    assert sent(receiver, first) == {
        "u1": {"total_revenue": 12.0},
        "u3": {"vip_customers": False, "beta_testers": False},
        "u6": {"vip_customers": True},
    }
    # The vanished user's exit carries the identifiers last acknowledged for them.
    assert by_user(receiver.accepted()[first:])["u3"]["email"] == "user3@example.com"
    assert (report.entered, report.exited, report.traits_changed, report.updates) == (1, 2, 1, 3)
    assert runner.run(job).updates == 0


def test_a_user_whose_profile_row_went_keeps_the_identifiers_last_acknowledged(
    runner: Runner, warehouse: Warehouse, receiver: Receiver
) -> None:
    job, first = after_initial_sync(runner, warehouse, receiver)
    blank = {"user_id": "u4", "email": " ", "first_name": "", "anonymous_id": ""}
    warehouse.set_profiles([p for p in PEOPLE if p["user_id"] not in ("u2", "u4")] + [blank])
    warehouse.set_members("vip", ["u1", "u3"])
    warehouse.set_members("beta", ["u3"])
    runner.run(job)
    bodies = by_user(receiver.accepted()[first:])
    assert sent(receiver, first) == {"u2": {"vip_customers": False}, "u4": {"beta_testers": False}}
    # No profile row: the last acknowledged one. A profile row with blank fields is what the snapshot says.
    assert (bodies["u2"]["email"], bodies["u2"]["anonymous_id"]) == ("user2@example.com", "anon-2")
    assert "email" not in bodies["u4"] and "anonymous_id" not in bodies["u4"]


def test_a_new_audience_gets_its_own_initial_sync(runner: Runner, warehouse: Warehouse, receiver: Receiver) -> None:
    seed(warehouse)
    runner.run(job_for(warehouse, receiver))
    first = len(receiver.accepted())
    warehouse.set_members("new", ["u1", "u6"])
    warehouse.set_members("vip", ["u1", "u2"])
    report = runner.run(job_for(warehouse, receiver, ("vip", "beta", "new")))
    assert report.kind == "incremental"
    assert sent(receiver, first) == {
        "u1": {"new_audience": True},
        "u6": {"new_audience": True},
        "u3": {"vip_customers": False},
    }


def test_a_removed_audience_is_not_exited_and_gets_a_new_initial_sync_when_added_back(
    runner: Runner, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    runner.run(job_for(warehouse, receiver))
    first = len(receiver.accepted())
    assert runner.run(job_for(warehouse, receiver, ("vip",))).updates == 0
    report = runner.run(job_for(warehouse, receiver, ("vip", "beta")))
    assert report.updates == 2
    assert sent(receiver, first) == {"u3": {"beta_testers": True}, "u4": {"beta_testers": True}}


def test_full_resends_current_values_and_still_sends_exits(
    runner: Runner, warehouse: Warehouse, receiver: Receiver
) -> None:
    job, first = after_initial_sync(runner, warehouse, receiver)
    warehouse.set_members("beta", ["u4"])
    report = runner.run(job, RunOptions(full=True))
    assert report.kind == "full"
    assert sent(receiver, first) == {
        "u1": {"vip_customers": True, "total_revenue": 10.5},
        "u2": {"vip_customers": True},
        "u3": {"vip_customers": True, "beta_testers": False},
        "u4": {"beta_testers": True},
        "u5": {"total_revenue": 99},
    }


def test_failed_updates_do_not_advance_and_are_retried_with_the_same_message_id(
    runner: Runner, store: Store, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    seed(warehouse)
    job = job_for(warehouse, faulty_receiver, max_attempts=2)
    faulty_receiver.faults.respond = lambda body: (
        422 if body["user_id"] == "u2" else (500 if body["user_id"] == "u4" else None)
    )
    report = runner.run(job)
    assert (report.status, report.exit_code, report.delivered, report.failed) == ("partial", 3, 3, 2)
    assert store.acknowledged("contacts", "u2") is None and store.acknowledged("contacts", "u4") is None
    assert store.acknowledged("contacts", "u1") == ({"vip_customers": True, "total_revenue": 10.5}, 1)
    failed_ids = {r.body["user_id"]: r.body["message_id"] for r in faulty_receiver.records if r.status != 200}

    faulty_receiver.faults.respond = None
    before = len(faulty_receiver.accepted())
    again = runner.run(job)
    assert (again.status, again.updates, again.delivered) == ("succeeded", 2, 2)
    retried = {b["user_id"]: b["message_id"] for b in faulty_receiver.accepted()[before:]}
    assert retried == failed_ids
    assert store.acknowledged("contacts", "u2") == ({"vip_customers": True}, 1)


def test_enter_exit_enter_uses_three_message_ids(runner: Runner, warehouse: Warehouse, receiver: Receiver) -> None:
    seed(warehouse)
    job = job_for(warehouse, receiver)
    for members in (["u1", "u2", "u3"], ["u1", "u3"], ["u1", "u2", "u3"]):
        warehouse.set_members("vip", members)
        runner.run(job)
    u2 = [b for b in receiver.accepted() if b["user_id"] == "u2"]
    assert [b["custom_attributes"]["vip_customers"] for b in u2] == [True, False, True]
    assert len({b["message_id"] for b in u2}) == 3


def test_a_dry_run_sends_nothing_and_advances_nothing(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    job = job_for(warehouse, receiver)
    report = runner.run(job, RunOptions(dry_run=True))
    assert (report.status, report.updates, report.exit_code) == ("planned", 5, 0)
    assert receiver.records == []
    assert store.state_size("contacts") == 0 and store.tracked_keys("contacts") == {}
    assert {c.status for c in store.changes_of(report.run_id)} == {"planned"}
    real = runner.run(job)
    assert (real.kind, real.updates) == ("initial", 5)
    assert [c.message_id for c in store.changes_of(report.run_id)][0] == [
        c.message_id for c in store.changes_of(real.run_id)
    ][0]


def test_a_failing_query_fails_the_run_names_it_and_leaves_state_untouched(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    runner.run(job_for(warehouse, receiver))
    broken = make_job(
        warehouse,
        receiver.url,
        audiences=[{"name": "VIP", "key": "vip_customers", "query": "SELECT user_id FROM no_such_table"}],
    )
    size = store.state_size("contacts")
    report = runner.run(broken)
    assert (report.status, report.exit_code) == ("failed", 1)
    assert report.error is not None
    assert "audience 'vip_customers' query failed" in report.error and "no_such_table" in report.error
    assert store.state_size("contacts") == size
    assert store.tracked_keys("contacts") == {
        "vip_customers": "audience",
        "beta_testers": "audience",
        "total_revenue": "trait",
    }
    run = store.run(report.run_id)
    assert run is not None and run.status == "failed" and run.error == report.error


def test_skipped_rows_are_counted_and_reported_with_the_run(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    warehouse.set_members("vip", ["u1", "", None])  # type: ignore[list-item]
    report = runner.run(job_for(warehouse, receiver))
    assert report.skipped_rows == 2
    assert report.issues == [
        {"source": "audience vip_customers", "problem": "null or empty user_id", "user_id": None, "count": 2}
    ]


def test_a_run_that_fails_midway_sends_nothing_twice_on_the_next_run(
    runner: Runner, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    people = [{"user_id": f"p{i:03d}", "email": f"p{i}@example.com"} for i in range(60)]
    warehouse.set_profiles(people)
    warehouse.set_members("vip", [p["user_id"] for p in people])
    job = make_job(
        warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_attempts=1, max_connections=4
    )
    accepted = Counter[str]()

    def first_25_then_down(body: Mapping[str, Any]) -> Action:
        if sum(accepted.values()) >= 25:
            return 503
        accepted[body["user_id"]] += 1
        return None

    faulty_receiver.faults.respond = first_25_then_down
    first = runner.run(job)
    assert (first.delivered, first.failed) == (25, 35)
    faulty_receiver.faults.respond = None
    second = runner.run(job)
    assert (second.updates, second.delivered) == (35, 35)
    delivered = Counter(b["user_id"] for b in faulty_receiver.accepted())
    assert set(delivered) == {p["user_id"] for p in people}
    assert max(delivered.values()) == 1
