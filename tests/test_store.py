"""The storage suite: every test runs on a real SQLite file and on the real PostgreSQL."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from sync.destinations.base import DeliveryResult
from sync.errors import StoreError
from sync.model import Computation, KeyChange, Update
from sync.store import Store
from sync.store.schema import current_revision, head_revision

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
VIP = Computation("vip", "audience", "VIP")
REV = Computation("revenue", "trait", "Revenue")


def update(user: str, state: dict[str, object], message: str = "") -> Update:
    changes = tuple(KeyChange(k, "audience" if k == "vip" else "trait", None, v) for k, v in state.items())
    return Update(user, message or f"as-{user}", changes, {"email": f"{user}@x.io"}, state)


def result(u: Update, ok: bool, status: int = 200, error: str | None = None) -> DeliveryResult:
    return DeliveryResult(u.user_id, u.message_id, ok, 1, NOW, NOW + timedelta(seconds=1), status, error)


def test_the_schema_is_at_head_after_open(store: Store) -> None:
    assert current_revision(store.engine) == head_revision(store.engine)


def test_runs_are_recorded_with_kind_status_and_counts(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", False, NOW, space_id="spa_1")
    store.finish_run(
        run_id,
        "succeeded",
        {"users": 5, "updates": 2, "delivered": 2},
        NOW + timedelta(minutes=1),
        issues=[{"source": "audience vip", "problem": "null or empty user_id", "count": 1}],
    )
    run = store.run(run_id)
    assert run is not None
    assert (run.job, run.kind, run.status, run.users, run.updates, run.delivered, run.failed) == (
        "contacts",
        "initial",
        "succeeded",
        5,
        2,
        2,
        0,
    )
    assert run.started_at == NOW and run.finished_at == NOW + timedelta(minutes=1)
    assert run.space_id == "spa_1"
    other = store.start_run("other", "initial", True, NOW)
    assert [r.id for r in store.runs()] == [other, run_id]
    assert [r.id for r in store.runs("contacts")] == [run_id]


def test_only_acknowledged_updates_advance_the_state(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", False, NOW)
    ok, bad = update("u1", {"vip": True, "revenue": 3.5}), update("u2", {"vip": True})
    assert store.record_plan(run_id, [ok, bad], "pending") == 2
    store.record_results("contacts", run_id, [(ok, result(ok, True)), (bad, result(bad, False, 422, "HTTP 422"))])
    assert store.acknowledged("contacts", "u1") == ({"vip": True, "revenue": 3.5}, 1)
    assert store.acknowledged("contacts", "u2") is None
    assert store.state_size("contacts") == 1
    rows = {r.user_id: r for r in store.updates_of(run_id)}
    assert (rows["u1"].status, rows["u1"].http_status, rows["u1"].sent_at) == ("delivered", 200, NOW)
    assert (rows["u2"].status, rows["u2"].http_status, rows["u2"].error) == ("failed", 422, "HTTP 422")


def test_answers_keep_their_moments_to_the_microsecond_in_any_zone(store: Store) -> None:
    # Recording writes its rows through the driver (dialect.Bulk); they must read back as the models write them.
    run_id = store.start_run("contacts", "initial", False, NOW)
    u = update("u1", {"vip": True})
    store.record_plan(run_id, [u], "pending")
    sent = datetime(2026, 11, 22, 8, 0, 1, 7, tzinfo=timezone(timedelta(hours=2)))
    answer = DeliveryResult(u.user_id, u.message_id, True, 2, sent, sent + timedelta(microseconds=990_001), 200)
    store.record_results("contacts", run_id, [(u, answer)])
    (row,) = list(store.updates_of(run_id))
    assert (row.sent_at, row.finished_at, row.attempts) == (sent, sent + timedelta(microseconds=990_001), 2)
    assert row.sent_at is not None and row.sent_at.utcoffset() == timedelta(0)
    with store.engine.connect() as connection:
        (updated,) = connection.execute(text("SELECT updated_at FROM ack_state")).one()
    finished = datetime(2026, 11, 22, 6, 0, 1, 990_008, tzinfo=UTC)
    assert updated == finished if isinstance(updated, datetime) else updated == "2026-11-22 06:00:01.990008"
    naive = DeliveryResult(u.user_id, u.message_id, True, 1, None, datetime(2026, 1, 1), 200)
    with pytest.raises(ValueError, match="naive datetime"):
        store.record_results("contacts", run_id, [(u, naive)])


def test_each_acknowledgement_bumps_the_version_and_replaces_the_state(store: Store) -> None:
    states: list[dict[str, object]] = [{"vip": True}, {}, {"vip": True, "revenue": 1}]
    for round_, state in enumerate(states, start=1):
        run_id = store.start_run("contacts", "incremental", False, NOW)
        u = update("u1", state)
        store.record_plan(run_id, [u], "pending")
        store.record_results("contacts", run_id, [(u, result(u, True))])
        assert store.acknowledged("contacts", "u1") == (state, round_)


def test_the_baseline_holds_tracked_keys_only(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", False, NOW)
    updates = [update("u1", {"vip": True, "revenue": 2}), update("u2", {"revenue": "x"})]
    store.record_plan(run_id, updates, "pending")
    store.record_results("contacts", run_id, [(u, result(u, True)) for u in updates])
    baseline = store.load_baseline("contacts", [VIP, REV], tracked={"vip", "revenue"})
    assert list(baseline.state.loc["u1"]) == [True, 2]
    assert list(baseline.state.loc["u2"]) == [False, "x"]
    assert baseline.versions == {"u1": 1, "u2": 1}
    assert list(store.load_baseline("contacts", [VIP, REV], tracked={"vip"}).state.columns) == ["vip"]
    looked_up = store.load_baseline("contacts", [VIP], tracked={"vip"}, user_ids=["u2", "nobody"])
    assert list(looked_up.state.index) == ["u2"]
    assert (looked_up.profile("u2"), looked_up.profile("nobody")) == ({"email": "u2@x.io"}, None)
    assert store.load_baseline("other", [VIP], tracked={"vip"}).state.empty


def test_tracked_keys_follow_the_configuration(store: Store) -> None:
    store.set_tracked_keys("contacts", [VIP, REV], run_id=1)
    assert store.tracked_keys("contacts") == {"vip": "audience", "revenue": "trait"}
    store.set_tracked_keys("contacts", [VIP], run_id=2)
    assert store.tracked_keys("contacts") == {"vip": "audience"}
    assert store.tracked_keys("other") == {}


def test_changes_of_a_run_list_one_row_per_user_and_key(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", True, NOW)
    store.record_plan(run_id, [update("u1", {"vip": True, "revenue": 2}), update("u2", {"vip": True})], "planned")
    rows = [(c.user_id, c.key, c.old, c.new, c.status) for c in store.changes_of(run_id)]
    assert rows == [
        ("u1", "vip", None, True, "planned"),
        ("u1", "revenue", None, 2, "planned"),
        ("u2", "vip", None, True, "planned"),
    ]
    assert [c.key for c in store.changes_of(run_id, user_id="u1", key="revenue")] == ["revenue"]


def test_large_plans_are_written_in_chunks(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", False, NOW)
    updates = [update(f"u{i}", {"vip": True}) for i in range(1234)]
    assert store.record_plan(run_id, updates, "pending") == 1234
    store.record_results("contacts", run_id, [(u, result(u, True)) for u in updates])
    assert store.state_size("contacts") == 1234


def test_a_schema_newer_than_the_code_is_refused(state_url: str) -> None:
    store = Store.open(state_url)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    store.close()
    with pytest.raises(StoreError, match="newer than this version of audience-sync knows"):
        Store.open(state_url)


def test_an_out_of_date_schema_is_refused_when_upgrades_are_off(state_url: str) -> None:
    with pytest.raises(StoreError, match="run `audience-sync migrate`"):
        Store.open(state_url, upgrade=False)


def test_an_unreachable_store_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql+psycopg://sync:hunter2@127.0.0.1:1/state")
    assert "cannot use the state store" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_migrations_build_exactly_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sync.store.models import Base

    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_a_run_that_lost_its_lease_records_answers_but_leaves_the_state(store: Store) -> None:
    run_id = store.start_run("contacts", "initial", False, NOW)
    assert store.acquire_lease("contacts", "host:1:old", NOW, timedelta(seconds=60))
    first, second = update("u1", {"vip": True}), update("u2", {"vip": True})
    store.record_plan(run_id, [first, second], "pending")
    assert store.record_results("contacts", run_id, [(first, result(first, True))], owner="host:1:old")
    later = NOW + timedelta(minutes=2)  # the lease expired and another process took the job over
    assert store.acquire_lease("contacts", "host:2:new", later, timedelta(seconds=60))
    assert not store.record_results("contacts", run_id, [(second, result(second, True))], owner="host:1:old")
    assert store.acknowledged("contacts", "u1") is not None and store.acknowledged("contacts", "u2") is None
    assert {u.user_id: u.status for u in store.updates_of(run_id)} == {"u1": "delivered", "u2": "delivered"}


def test_a_database_the_store_does_not_support_is_refused_by_name() -> None:
    from sqlalchemy import create_mock_engine

    from sync.store import dialect

    engine = create_mock_engine("mssql+pyodbc://", lambda *_args, **_kwargs: None)
    with pytest.raises(StoreError, match="cannot use a mssql database; use one of: sqlite, postgresql"):
        dialect.check(engine)  # type: ignore[arg-type]
