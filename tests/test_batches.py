"""Plans bigger than a batch: streamed initial syncs, and guarded runs planned in full then sent in batches."""

from collections import Counter

from sync.config import JobConfig
from sync.dev.receiver import Receiver
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, make_job

USERS = [f"u{i:02d}" for i in range(23)]


def job(warehouse: Warehouse, receiver: Receiver) -> JobConfig:
    return make_job(
        warehouse,
        receiver.url,
        audiences=[warehouse.audience("VIP", "vip")],
        traits=[warehouse.trait("Revenue", "revenue")],
        profiles=False,
    )


def small_batches(store: Store, sleep: RecordingSleep, keep: int) -> Runner:
    return Runner(store, sleep=sleep, batch=4, keep=keep)


def seeded(store: Store, sleep: RecordingSleep, warehouse: Warehouse) -> Runner:
    """23 users, 20 of them members, each with a trait value; batches of 4, at most 5 updates kept."""
    warehouse.set_members("vip", USERS[:20])
    warehouse.set_trait("revenue", {u: i for i, u in enumerate(USERS)})
    return small_batches(store, sleep, keep=5)


def test_an_initial_sync_bigger_than_a_batch_is_streamed_and_sent_once(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    runner = seeded(store, sleep, warehouse)
    report = runner.run(job(warehouse, receiver))
    assert (report.kind, report.status, report.updates, report.delivered) == ("initial", "succeeded", 23, 23)
    assert (report.entered, report.traits_changed) == (20, 23)
    assert Counter(b["user_id"] for b in receiver.accepted()) == Counter(USERS)
    assert report.key_counts[("vip", "audience")]["delivered_entered"] == 20
    audit = list(store.updates_of(report.run_id))
    assert sorted(u.user_id for u in audit) == USERS and {u.status for u in audit} == {"delivered"}
    assert runner.planner.plan(job(warehouse, receiver), store.tracked_keys("contacts")).examined == 0


def test_a_guarded_plan_bigger_than_what_is_kept_is_planned_again_as_it_is_sent(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    runner = seeded(store, sleep, warehouse)
    runner.run(job(warehouse, receiver))
    first = len(receiver.accepted())
    warehouse.set_members("vip", USERS[3:20])  # 3 exits: the guard looks, and lets it through
    warehouse.set_trait("revenue", {u: i + 100 for i, u in enumerate(USERS)})  # everyone's trait changes
    plan = runner.planner.plan(job(warehouse, receiver), store.tracked_keys("contacts"))
    assert plan.kept is None and plan.updates_count == 23 and not plan.guard
    assert len(plan.updates) == 23  # planned again from the same selection
    report = runner.run(job(warehouse, receiver))
    assert (report.kind, report.status, report.updates, report.delivered) == ("incremental", "succeeded", 23, 23)
    again = receiver.accepted()[first:]
    assert Counter(b["user_id"] for b in again) == Counter(USERS)
    assert {b["user_id"] for b in again if b["custom_attributes"].get("vip") is False} == set(USERS[:3])
    assert runner.planner.plan(job(warehouse, receiver), store.tracked_keys("contacts")).examined == 0


def test_a_guarded_plan_is_stopped_before_any_batch_is_sent(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    many = [f"m{i:03d}" for i in range(120)]
    warehouse.set_members("vip", many)
    warehouse.set_trait("revenue", {})
    runner = small_batches(store, sleep, keep=5)
    runner.run(job(warehouse, receiver))
    sent = len(receiver.accepted())
    warehouse.set_members("vip", many[:10])  # 110 of 120 would exit
    report = runner.run(job(warehouse, receiver))
    assert report.status == "blocked" and report.delivered == 0
    assert len(receiver.accepted()) == sent
