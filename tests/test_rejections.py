"""Permanent rejections: recorded with their reason, retried on later runs, parked as dead, sent again on demand."""

from collections.abc import Mapping
from typing import Any

from sync.destinations.chartmogul import MAX_BODY_BYTES
from sync.dev.receiver import Action, Receiver
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import Warehouse, make_job

USERS = [f"u{i}" for i in range(6)]


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in USERS])
    warehouse.set_members("vip", USERS)


def reject(users: set[str], status: int = 422) -> Any:
    def respond(body: Mapping[str, Any]) -> Action:
        return status if body["user_id"] in users else None

    return respond


def bodies_for(receiver: Receiver, user: str) -> list[Mapping[str, Any]]:
    return [r.body for r in receiver.records if r.body["user_id"] == user]


def test_a_rejected_update_is_retried_each_run_then_parked_as_dead_and_revived_on_demand(
    runner: Runner, store: Store, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    seed(warehouse)
    faulty_receiver.faults.respond = reject({"u1"})
    job = make_job(warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")], dead_after=3)
    reports = [runner.run(job) for _ in range(3)]
    assert [(r.updates, r.delivered, r.failed, r.exit_code) for r in reports] == [
        (6, 5, 1, 3),
        (1, 0, 1, 3),
        (1, 0, 1, 3),
    ]
    assert len({b["message_id"] for b in bodies_for(faulty_receiver, "u1")}) == 1  # the same change each time
    [dead] = store.failed_updates("contacts", dead_only=True)
    assert (dead.user_id, dead.failed_runs, dead.dead, dead.http_status) == ("u1", 3, True, 422)
    assert dead.error == 'HTTP 422: {"error": "injected 422"}'

    parked = runner.run(job)
    assert (parked.updates, parked.parked, parked.status, parked.exit_code) == (0, 1, "succeeded", 0)
    assert len(bodies_for(faulty_receiver, "u1")) == 3  # not sent again

    faulty_receiver.faults.respond = None
    assert store.revive("contacts") == 1
    revived = runner.run(job)
    assert (revived.updates, revived.delivered) == (1, 1)
    assert store.failed_updates("contacts") == []
    assert store.acknowledged("contacts", "u1") == ({"vip": True}, 1)


def test_a_new_change_of_a_dead_user_is_sent(
    runner: Runner, store: Store, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    seed(warehouse)
    faulty_receiver.faults.respond = reject({"u1"})
    job = make_job(
        warehouse,
        faulty_receiver.url,
        audiences=[warehouse.audience("VIP", "vip"), warehouse.audience("Beta", "beta")],
        dead_after=1,
    )
    runner.run(job)
    assert [f.user_id for f in store.failed_updates("contacts", dead_only=True)] == ["u1"]
    faulty_receiver.faults.respond = None
    warehouse.set_members("beta", ["u1"])
    report = runner.run(job)
    assert (report.updates, report.delivered, report.parked) == (1, 1, 0)
    assert bodies_for(faulty_receiver, "u1")[-1]["custom_attributes"] == {"vip": True, "beta": True}


def test_a_revoked_webhook_stops_the_run_after_the_first_refusals(
    runner: Runner, store: Store, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    warehouse.set_members("vip", [f"u{i:02d}" for i in range(30)])
    faulty_receiver.faults.respond = lambda body: 401
    job = make_job(warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=1)
    report = runner.run(job)
    assert (report.status, report.exit_code) == ("failed", 1)
    said = f"refused the first {report.failed} requests ({report.failed} updates) with HTTP 401"
    assert report.error is not None and said in report.error
    # The third refusal stops the run; the one connection may already carry one more request.
    assert 3 <= report.failed <= 4 and len(faulty_receiver.records) == report.failed
    assert store.failed_updates("contacts") == []  # the webhook was refused, not the users
    pending = [r for r in store.updates_of(report.run_id) if r.status == "pending"]
    assert len(pending) == 30 - report.failed
    faulty_receiver.faults.respond = None
    assert runner.run(job).delivered == 30


def test_a_refusal_after_deliveries_fails_only_that_update(
    runner: Runner, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    seed(warehouse)
    faulty_receiver.faults.respond = reject({"u5"}, 403)
    job = make_job(warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=1)
    report = runner.run(job)
    assert (report.status, report.delivered, report.failed) == ("partial", 5, 1)


def test_an_update_over_32_kb_is_rejected_with_its_reason_and_the_rest_delivered(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    warehouse.set_trait("bio", {"u2": "x" * MAX_BODY_BYTES, "u3": "short"})
    job = make_job(
        warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], traits=[warehouse.trait("Bio", "bio")]
    )
    report = runner.run(job)
    assert (report.delivered, report.failed) == (5, 1)
    [row] = [r for r in store.updates_of(report.run_id) if r.status == "failed"]
    assert row.user_id == "u2" and row.attempts == 0 and row.http_status is None
    assert row.error is not None and "over the 32768-byte limit" in row.error
    assert "u2" not in {b["user_id"] for b in receiver.accepted()}
    assert [f.user_id for f in store.failed_updates("contacts")] == ["u2"]


def test_unusual_user_ids_reach_the_destination_intact(
    runner: Runner, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    ids = ["ünïcødé-用户", " padded id ", "x" * 2000, "tab\tid", "42"]
    warehouse.set_members("vip", ids)
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    assert runner.run(job).delivered == 5
    assert sorted(b["user_id"] for b in receiver.accepted()) == sorted(ids)
    assert all(store.acknowledged("contacts", u) == ({"vip": True}, 1) for u in ids)
    assert runner.run(job).updates == 0
