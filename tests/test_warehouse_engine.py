"""The warehouse engine, run for real on a DuckDB file and on the machine's PostgreSQL: the diff runs in the
warehouse, only changed subjects are read out, and the state store stays the truth."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.config import JobConfig
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.report import RunOptions
from sync.run.runner import Runner
from sync.snapshot.warehouse import _summed, drop, examine, names_of
from sync.sources import computations
from sync.store import Store
from tests.conftest import make_config
from tests.warehouses import SqlWarehouse, duckdb_warehouse, postgres_warehouse


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> SqlWarehouse:
    if request.param == "duckdb":
        return duckdb_warehouse(tmp_path / "warehouse.duckdb")
    url: str = request.getfixturevalue("postgres_url")
    return postgres_warehouse(url)


def job_raw(
    wh: SqlWarehouse, url: str, *, engine: str = "warehouse", audiences: Any = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": "contacts",
        "space_id": "spa_test",
        "source": wh.source(engine),
        "audiences": audiences if audiences is not None else [wh.audience("VIP", "vip")],
        "traits": [wh.trait("LTV", "ltv")],
        "destination": {
            "type": "chartmogul",
            "webhook_url": url,
            "requests_per_second": 2000,
            "backoff_initial": "10ms",
        },
        **extra,
    }


def job_of(wh: SqlWarehouse, url: str, **kwargs: Any) -> JobConfig:
    return make_config("sqlite://", [job_raw(wh, url, **kwargs)]).jobs[0]


def seed(wh: SqlWarehouse) -> None:
    wh.set_profiles([{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(1, 7)])
    wh.set_members("vip", ["u1", "u2", "u3"])
    wh.set_trait("ltv", {"u1": 10.5, "u4": 3, "u5": None})


def sent(receiver: Receiver, start: int = 0) -> dict[str, dict[str, Any]]:
    return {b["user_id"]: dict(b["custom_attributes"]) for b in receiver.accepted()[start:]}


def test_initial_incremental_exits_and_vanished_users(
    wh: SqlWarehouse, store: Store, receiver: Receiver, tmp_path: Path
) -> None:
    seed(wh)
    runner, job = Runner(store), job_of(wh, receiver.url)
    report = runner.run(job)
    assert report.status == "succeeded"
    assert sent(receiver) == {
        "u1": {"vip": True, "ltv": 10.5},
        "u2": {"vip": True},
        "u3": {"vip": True},
        "u4": {"ltv": 3},
    }
    assert report.users == 6  # profile-only subjects are counted

    quiet = runner.run(job)  # nothing changed: nothing read out, nothing sent
    assert (quiet.status, quiet.updates) == ("succeeded", 0)
    _, selection = examine(job, computations(job), store, set())
    assert (len(selection), selection.gone) == (0, [])

    wh.set_members("vip", ["u1", "u2", "u5"])  # u3 exits, u5 enters
    wh.set_trait("ltv", {"u1": 11, "u5": None})  # u1 changes, u4 vanishes from the trait
    wh.set_profiles([{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in (1, 2, 3, 5, 6)])
    _, selection = examine(job, computations(job), store, set())  # only the changed subjects come out
    assert sorted(selection.table.column("user_id").to_pylist()) == ["u1", "u3", "u5"]
    assert selection.gone == ["u4"]
    before = len(receiver.accepted())
    report = runner.run(job)
    assert report.status == "succeeded"
    assert sent(receiver, before) == {
        "u1": {"ltv": 11},
        "u3": {"vip": False},
        "u4": {"ltv": None},
        "u5": {"vip": True},
    }


def test_a_query_with_a_percent_sign_reads_out_as_written(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    """A ``%`` in a query (LIKE) reaches the warehouse as the user wrote it, through every statement of the
    engine, whatever the driver's parameter style."""
    seed(wh)
    audiences = [{"name": "VIP", "query": "SELECT user_id FROM profiles WHERE email LIKE 'u1%' OR email LIKE '%5@%'"}]
    report = Runner(store).run(job_of(wh, receiver.url, audiences=audiences))
    assert report.status == "succeeded", report.error
    assert {u for u, keys in sent(receiver).items() if keys.get("vip")} == {"u1", "u5"}


def test_dry_run_full_run_and_a_new_audience(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    seed(wh)
    runner, job = Runner(store), job_of(wh, receiver.url)
    runner.run(job)
    wh.set_members("vip", ["u1"])
    planned = runner.run(job, RunOptions(dry_run=True, force=True))
    assert (planned.status, planned.updates) == ("planned", 2)
    assert len(receiver.accepted()) == 4  # nothing sent, nothing acknowledged
    assert store.acknowledged("contacts", "u2") is not None
    assert store.acknowledged("contacts", "u2")[0]["vip"] is True  # type: ignore[index]

    wh.set_members("vip", ["u1", "u2", "u3"])
    wh.set_members("churn", ["u6", "u2"])
    bigger = job_of(wh, receiver.url, audiences=[wh.audience("VIP", "vip"), wh.audience("Churn", "churn")])
    before = len(receiver.accepted())
    runner.run(bigger)
    assert sent(receiver, before) == {"u2": {"churn": True}, "u6": {"churn": True}}

    before = len(receiver.accepted())
    report = runner.run(bigger, RunOptions(full=True))
    assert set(sent(receiver, before)) == {"u1", "u2", "u3", "u4", "u6"}
    assert report.status == "succeeded"


def test_mass_exit_is_stopped_by_the_guard(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    wh.set_profiles([])
    members = [f"m{i}" for i in range(120)]
    wh.set_members("vip", members)
    wh.set_trait("ltv", {})
    runner, job = Runner(store), job_of(wh, receiver.url)
    runner.run(job)
    wh.set_members("vip", members[:10])
    report = runner.run(job)
    assert report.status == "blocked" and "mass-change guard" in (report.error or "")
    assert store.acknowledged("contacts", "m50")[0]["vip"] is True  # type: ignore[index]


def test_failed_updates_are_sent_again(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    seed(wh)
    receiver.faults.respond = lambda body: 503 if body["user_id"] == "u2" else None
    runner, job = Runner(store, sleep=no_sleep), job_of(wh, receiver.url)
    report = runner.run(job)
    assert report.status == "partial" and report.failed == 1
    receiver.faults.respond = None
    before = len(receiver.accepted())
    assert runner.run(job).status == "succeeded"
    assert sent(receiver, before) == {"u2": {"vip": True}}


async def no_sleep(_seconds: float) -> None:
    return None


def copy_rows(wh: SqlWarehouse) -> dict[str, int | None]:
    prefix = names_of(job_of(wh, "http://127.0.0.1:1/")).prefix
    return {str(s): f for s, f in wh.query(f"SELECT sid, fp FROM {wh.schema}.{prefix}_acked")}


def test_a_copy_edited_by_hand_or_of_another_installation_is_rebuilt(
    wh: SqlWarehouse, store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    seed(wh)
    runner, job = Runner(store), job_of(wh, receiver.url)
    runner.run(job)
    prefix = names_of(job).prefix
    # Someone sets u1's acknowledged fingerprint to what its next state will hash to: trusted, the change
    # would go unseen.
    wh.set_trait("ltv", {"u1": 99, "u4": 3})
    runner.run(job, RunOptions(dry_run=True))  # a dry run computes, records nothing
    wh.execute(f"DELETE FROM {wh.schema}.{prefix}_acked WHERE sid = 'u1'")
    with caplog.at_level(logging.WARNING):
        before = len(receiver.accepted())
        runner.run(job)
    assert sent(receiver, before) == {"u1": {"ltv": 99}}
    assert "does not match the state store" in caplog.text

    wh.execute(f"UPDATE {wh.schema}.audience_sync_copies SET installation = 'another'")
    wh.set_trait("ltv", {"u1": 98, "u4": 3})
    before = len(receiver.accepted())
    runner.run(job)
    assert sent(receiver, before) == {"u1": {"ltv": 98}}
    assert set(copy_rows(wh)) == {"u1", "u2", "u3", "u4"}


def fingerprint(store: Store, user_id: str) -> int | None:
    table = store.stored_fingerprints("contacts")
    row = table.column("user_id").to_pylist().index(user_id)
    return int(table.column("fp")[row].as_py())


def _killed_after_acknowledging(config_path: str, job_name: str) -> None:
    """In a process of its own: a run that is SIGKILLed once its updates are acknowledged, before the
    warehouse copy is written."""
    import sync.snapshot.warehouse as engine
    from sync.config import load_config

    def die(*_args: Any, **_kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    engine.settle = die
    config = load_config(Path(config_path))
    store = Store.open(config.state_url)
    Runner(store).run(next(j for j in config.jobs if j.name == job_name))


def test_a_run_killed_between_acknowledging_and_writing_the_copy_misses_nothing(
    wh: SqlWarehouse, receiver: Receiver, tmp_path: Path
) -> None:
    seed(wh)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config_path = tmp_path / "jobs.yaml"
    job = job_of(wh, receiver.url)
    config_path.write_text(yaml.safe_dump({"state_url": state, "jobs": [job_raw(wh, receiver.url)]}))
    store = Store.open(state)
    Runner(store).run(job)  # the copy holds u1 at 10.5
    wh.set_trait("ltv", {"u1": 20, "u4": 3})
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_killed_after_acknowledging, args=(str(config_path), "contacts"))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    assert store.acknowledged("contacts", "u1")[0]["ltv"] == 20  # type: ignore[index]
    assert copy_rows(wh)["u1"] != fingerprint(store, "u1")  # the copy lags the state store

    wh.set_trait("ltv", {"u1": 10.5, "u4": 3})  # back to what the stale copy holds
    before = len(receiver.accepted())
    report = Runner(store).run(job)
    assert report.status == "succeeded"
    assert sent(receiver, before) == {"u1": {"ltv": 10.5}}
    assert copy_rows(wh)["u1"] == fingerprint(store, "u1")
    store.close()


def test_drop_removes_the_jobs_tables_only(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    seed(wh)
    job = job_of(wh, receiver.url)
    Runner(store).run(job)
    dropped = drop(job)
    assert dropped == [f"{wh.schema}.{names_of(job).prefix}_acked"]
    assert wh.query("SELECT count(*) FROM members")[0][0] == 3  # the warehouse's own tables stay
    before = len(receiver.accepted())
    assert Runner(store).run(job).updates == 0  # rebuilt from the state store: nothing to send again
    assert len(receiver.accepted()) == before


@pytest.mark.parametrize("engine", ["warehouse", "local"])
def test_session_statements_run_on_every_connection_first(
    engine: str, wh: SqlWarehouse, store: Store, receiver: Receiver
) -> None:
    # A temporary view lives in one session only: the audience query finds it only if the session made it.
    seed(wh)
    view = "CREATE TEMPORARY VIEW vip_now AS SELECT user_id FROM members WHERE audience = 'vip'"
    raw = job_raw(wh, receiver.url, engine=engine, audiences=[{"name": "VIP", "query": "SELECT user_id FROM vip_now"}])
    raw["source"] = {**raw["source"], "session": [view]}
    report = Runner(store).run(make_config("sqlite://", [raw]).jobs[0])
    assert report.status == "succeeded", report.error
    assert {u for u, attributes in sent(receiver).items() if attributes.get("vip")} == {"u1", "u2", "u3"}

    raw["source"]["session"] = [view.replace("vip_now", "vip_then"), "SELEC 1"]
    report = Runner(store).run(make_config("sqlite://", [raw]).jobs[0])
    assert report.status == "failed" and report.error is not None
    assert "source.session[1] failed" in report.error and "SELEC" in report.error
    assert report.updates == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"url": "sqlite:///w.db", "engine": "warehouse"}, "the warehouse engine runs on postgresql"),
        ({"engine": "warehouse"}, "source.engine: warehouse needs source.url"),
        ({"url": "duckdb:///w.duckdb", "engine": "warehouse", "schema": "no-dash"}, "source.schema"),
        ({"session": ["SET work_mem = '1GB'"]}, "source.session: needs source.url"),
        ({"url": "duckdb:///w.duckdb", "session": ["SET threads = 1", " "]}, "statement 1 is blank"),
    ],
)
def test_configuration_mistakes_are_named(source: Mapping[str, Any], expected: str, tmp_path: Path) -> None:
    job = {
        "name": "contacts",
        "space_id": "spa",
        "source": dict(source),
        "audiences": [{"name": "VIP", "query": "SELECT user_id FROM vip"}],
        "destination": {"type": "chartmogul", "webhook_url": "http://127.0.0.1:9/hook"},
    }
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        make_config("sqlite://", [job], tmp_path)


def test_a_file_result_is_refused_by_the_warehouse_engine(tmp_path: Path) -> None:
    (tmp_path / "vip.csv").write_text("user_id\nu1\n")
    job = {
        "name": "contacts",
        "space_id": "spa",
        "source": {"url": f"duckdb:///{tmp_path / 'w.duckdb'}", "engine": "warehouse"},
        "audiences": [{"name": "VIP", "file": "vip.csv"}],
        "destination": {"type": "chartmogul", "webhook_url": "http://127.0.0.1:9/hook"},
    }
    with pytest.raises(ConfigError, match=r"audiences\[0\]\.file: the warehouse engine reads queries only"):
        make_config("sqlite://", [job], tmp_path)


# Both engines, the same updates -----------------------------------------------------------------------------

USERS = [f"u{i}" for i in range(12)]
snapshots = st.fixed_dictionaries(
    {
        "vip": st.sets(st.sampled_from(USERS)),
        "churn": st.sets(st.sampled_from(USERS)),
        "ltv": st.dictionaries(st.sampled_from(USERS), st.one_of(st.none(), st.integers(-3, 3), st.floats(0, 2))),
        "profiles": st.sets(st.sampled_from(USERS)),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(snapshots, min_size=2, max_size=4), full_at=st.integers(0, 5))
def test_the_warehouse_engine_plans_what_the_local_engine_plans(
    steps: list[dict[str, Any]], full_at: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("engines")
    wh = duckdb_warehouse(folder / "warehouse.duckdb")
    stores = {e: Store.open(f"sqlite:///{folder / f'{e}.db'}") for e in ("local", "warehouse")}
    with Receiver() as receiver:
        jobs = {
            e: job_of(
                wh,
                receiver.url,
                engine=e,
                audiences=[wh.audience("VIP", "vip"), wh.audience("Churn", "churn")],
                guard={"enabled": False},
            )
            for e in stores
        }
        for number, step in enumerate(steps):
            wh.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in sorted(step["profiles"])])
            wh.set_members("vip", sorted(step["vip"]))
            wh.set_members("churn", sorted(step["churn"]))
            wh.set_trait("ltv", step["ltv"])
            planned = {}
            for engine, store in stores.items():
                report = Runner(store).run(jobs[engine], RunOptions(full=number == full_at))
                assert report.status == "succeeded", report.error
                planned[engine] = sorted(
                    (c.user_id, c.key, repr(c.old), repr(c.new)) for c in store.changes_of(report.run_id)
                )
            assert planned["warehouse"] == planned["local"], f"step {number}"
    for store in stores.values():
        store.close()


def test_profile_changes_are_diffed_in_the_warehouse(wh: SqlWarehouse, store: Store, receiver: Receiver) -> None:
    seed(wh)
    runner, job = Runner(store), job_of(wh, receiver.url, send_profile_changes=True)
    runner.run(job)
    people = [{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(1, 7)]
    people[1]["email"] = "new-u2@example.com"
    people[5]["first_name"] = "Ada"
    wh.set_profiles(people)
    before = len(receiver.accepted())
    assert runner.run(job).status == "succeeded"
    changed = {b["user_id"]: (b["email"], b.get("first_name")) for b in receiver.accepted()[before:]}
    assert changed == {"u2": ("new-u2@example.com", None), "u6": ("u6@example.com", "Ada")}


def test_a_subjects_fingerprint_sums_its_rows_across_queries_modulo_2_to_the_52() -> None:
    # One piece per query read out: a subject's rows are spread over them.
    sids = pa.chunked_array([pa.array(["a", "b"]), pa.array(["c", "a"]), pa.array([], pa.string())])
    hashes = pa.chunked_array([pa.array([2**51, 2]), pa.array([4, 2**51 + 1]), pa.array([], pa.int64())])
    summed = _summed(sids, hashes)
    assert dict(zip(summed.column("user_id").to_pylist(), summed.column("fp").to_pylist(), strict=True)) == {
        "a": 1,
        "b": 2,
        "c": 4,
    }
