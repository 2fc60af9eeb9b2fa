"""Reading ChartMogul back: every drift class injected into the ChartMogul-API-compatible receiver, found,
repaired by the next run, and a second reconciliation clean; a refused key, a listing cut short and an answer
of the wrong shape; bounded checks; the CLI, its output and its records."""

import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from sync.cli.main import cli
from sync.clock import utc_now
from sync.config import JobConfig, JobOutline, Outline
from sync.console.app import Settings
from sync.console.server import ConsoleServer
from sync.dev.chartmogul_api import ChartMogulApiReceiver
from sync.reconcile.compare import DRIFT_FIELDS, Drift, holds, same
from sync.reconcile.reconcile import Options, reconcile
from sync.run.runner import Runner
from sync.scheduler.daemon import COMPLETED
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config
from tests.test_chartmogul_api import API_KEY, KNOWN, USERS, account, api_job, api_raw, customer_of, seed
from tests.test_json_contracts import documented
from tests.warehouses import duckdb_warehouse


@pytest.fixture
def api() -> Iterator[ChartMogulApiReceiver]:
    with ChartMogulApiReceiver(account(), api_key=API_KEY, requests_per_second=None) as receiver:
        yield receiver


def found(drifts: list[Drift]) -> set[tuple[str, str | None, str]]:
    return {(d.user_id, d.key, d.drift) for d in drifts}


def synced(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver, **how: Any
) -> JobConfig:
    seed(warehouse)
    job = api_job(warehouse, api, rematch_after="1h", **how)
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "succeeded" and report.delivered == len(KNOWN), report.error
    return job


def uuid_of(api: ChartMogulApiReceiver, user: str) -> str:
    return str(customer_of(api, user)["uuid"])


def test_every_drift_class_is_found_repaired_and_then_clean(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    assert found(reconcile(store, job, Options()).drifts) == set()  # what was acknowledged is what it holds
    api.remove(uuid_of(api, "u000"), "vip")  # missing
    api.edit(uuid_of(api, "u001"), "seats", 99)  # differs: a number
    api.edit(uuid_of(api, "u002"), "vip", False)  # differs: an audience
    api.edit(uuid_of(api, "u005"), "churn_risk", True)  # differs: a non-member made one by hand
    api.edit(uuid_of(api, "u004"), "seats", "four")  # type: an Integer holding a String
    api.edit(uuid_of(api, "u003"), "ltv", 3.50)  # the same number: no drift
    api.edit(uuid_of(api, "u007"), "plan_tier", "gold")  # another integration's key: not drift
    api.delete(uuid_of(api, "u006"))  # gone: deleted
    stranger = api.account.add_customer("x-1", "x-1@example.com", "Someone else")
    api.merge(uuid_of(api, "u008"), stranger)  # gone: merged into another customer, which now has u008's id
    api.account.add_customer("u010", "u010@example.com")  # found: a subject that had no record now has one
    result = reconcile(store, job, Options(repair=True))
    assert result.status == "succeeded" and result.complete and result.how == "list"
    assert found(result.drifts) == {
        ("u000", "vip", "missing"),
        ("u001", "seats", "differs"),
        ("u002", "vip", "differs"),
        ("u005", "churn_risk", "differs"),
        ("u004", "seats", "type"),
        ("u006", None, "gone"),
        ("u008", None, "gone"),
        ("u010", None, "found"),
    }
    by = {(d.user_id, d.key): d for d in result.drifts}
    assert (by["u001", "seats"].expected, by["u001", "seats"].found) == (1, 99)
    assert (by["u002", "vip"].expected, by["u002", "vip"].found) == (True, False)
    assert (by["u004", "seats"].expected, by["u004", "seats"].found) == ("Integer", "String")
    assert (result.repaired, result.looked_up) == (6, 3)  # u000-u002, u005, u006, u008 resent; 3 looked up

    api.calls.clear()
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "succeeded", report.error
    reasons = {row.user_id: row.reason for row in store.updates_of(report.run_id)}
    assert {u for u, r in reasons.items() if r == "reconcile"} == {"u000", "u001", "u002", "u005", "u006", "u008"}
    assert reasons.get("u010") is None and "u010" in reasons  # found: planned as the subject it always was
    assert customer_of(api, "u000")["attributes"]["custom"]["vip"] is True
    assert customer_of(api, "u001")["attributes"]["custom"]["seats"] == 1
    assert api.account.customers[stranger]["attributes"]["custom"]["seats"] == 8  # u008's record now
    assert customer_of(api, "u007")["attributes"]["custom"]["plan_tier"] == "gold"  # left alone
    again = reconcile(store, job, Options(repair=True))
    assert found(again.drifts) == {("u004", "seats", "type")}  # a type is the user's to change (the advice)
    # u006 has no record any more: its repair waits for one (every key then), looked up after rematch_after
    assert set(store.repairs(job.name)) == {"u006"}
    rerun = Runner(store, sleep=sleep).run(job)
    assert rerun.updates == 0  # nothing else to repair: type drift is not resent
    api.account.add_customer("u006", "u006@example.com")
    later = Runner(store, sleep=sleep, clock=lambda: utc_now() + timedelta(hours=2)).run(job)
    assert later.delivered == 1 and set(customer_of(api, "u006")["attributes"]["custom"]) == {
        "vip", "churn_risk", "ltv", "plan", "seats"
    }  # fmt: skip
    assert store.repairs(job.name) == {}


def test_contacts_are_read_through_their_own_list(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="contact")
    contact = next(c for c in api.account.contacts.values() if c["customer_external_id"] == "u001")
    api.edit(contact["uuid"], "plan", "enterprise")
    result = reconcile(store, job, Options(repair=True))
    assert found(result.drifts) == {("u001", "plan", "differs")}
    assert [c.path for c in api.lookups()][-1].startswith("/v1/contacts")
    assert Runner(store, sleep=sleep).run(job).delivered == 1
    assert contact["custom"]["plan"] == "pro" and reconcile(store, job, Options()).drifts == []


def test_a_few_subjects_of_a_big_account_are_read_one_by_one(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    for n in range(5000):  # 25 more pages of other customers
        api.account.add_customer(f"other-{n}")
    api.edit(uuid_of(api, "u001"), "seats", 42)
    api.delete(uuid_of(api, "u002"))
    api.calls.clear()
    result = reconcile(store, job, Options())
    # the first page (which holds the job's customers), the one not on it, a lookup for each without a record
    assert result.how == "each" and result.requests == 1 + 1 + len(USERS) - len(KNOWN)
    assert found(result.drifts) == {("u001", "seats", "differs"), ("u002", None, "gone")}
    listing = reconcile(store, job, Options(read="list"))
    assert listing.how == "list" and listing.pages == 26 and found(listing.drifts) == found(result.drifts)
    bounded = reconcile(store, job, Options(limit=2))
    assert bounded.checked == 2 and found(bounded.drifts) == {("u001", "seats", "differs")}
    sampled = reconcile(store, job, Options(sample=0.5, seed=3))
    assert 0 < sampled.checked < len(USERS)
    assert found(sampled.drifts) <= found(result.drifts)


def test_a_refused_key_fails_at_once_and_repairs_nothing(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    api.remove(uuid_of(api, "u000"), "vip")
    revoked = job.model_copy(
        update={"destination": job.destination.model_copy(update={"api_key": SecretStr("revoked")})}
    )
    api.calls.clear()
    result = reconcile(store, revoked, Options(repair=True))
    assert result.status == "failed" and "HTTP 401" in (result.error or "") and result.drifts == []
    assert len(api.calls) == 1  # stopped at once, not retried
    assert store.repairs(job.name) == {}
    run = store.run(result.run_id)
    assert run is not None and run.kind == "reconcile" and run.status == "failed"
    assert "revoked" not in json.dumps(run.definition) and API_KEY not in (run.error or "")


def test_a_listing_cut_short_judges_only_what_it_read(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    for n in range(300):  # the job's customers on the first page, then two pages of others
        api.account.add_customer(f"other-{n}")
    api.edit(uuid_of(api, "u001"), "seats", 42)
    api.delete(uuid_of(api, "u002"))  # gone, but the listing never ends: not claimed
    pages = Counter[str]()

    def failing_after_the_first_page(request: Mapping[str, Any]) -> int | None:
        if request["method"] == "GET" and request["path"] == "/v1/customers":
            pages["seen"] += 1
            return 500 if pages["seen"] > 1 else None
        return None

    api.faults.respond = failing_after_the_first_page
    result = reconcile(store, job, Options(read="list", repair=True))
    assert result.status == "partial" and not result.complete and "HTTP 500" in (result.cut_short or "")
    assert found(result.drifts) == {("u001", "seats", "differs")}
    assert set(store.repairs(job.name)) == {"u001"}  # only what was proven drifted
    api.faults.respond = None


def test_an_answer_of_another_shape_fails_naming_the_endpoint(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    answer = api.answer
    api.answer = lambda method, path, query, body: (  # type: ignore[method-assign]
        (200, {"data": []}) if path == "/v1/customers" else answer(method, path, query, body)
    )
    result = reconcile(store, job, Options(read="list"))
    assert result.status == "failed"
    assert result.error == "GET /v1/customers answered without a list of entries"


def test_the_cli_reports_records_and_repairs_now(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver, tmp_path: Path
) -> None:
    job = synced(store, sleep, warehouse, api, target="customer")
    config = tmp_path / "jobs.yaml"
    raw = api_raw(warehouse, api, target="customer", rematch_after="1h")
    url = store.engine.url.render_as_string(hide_password=False)
    config.write_text(json.dumps({"state_url": url, "jobs": [raw]}))
    api.edit(uuid_of(api, "u001"), "seats", 42)
    cli_runner = CliRunner()
    shown = cli_runner.invoke(cli, ["--config", str(config), "reconcile", job.name])
    assert shown.exit_code == 6, shown.output
    assert "differs  seats" in shown.output and "u001: expected 1, holds 42" in shown.output
    assert API_KEY not in shown.output
    lines = cli_runner.invoke(cli, ["--config", str(config), "reconcile", job.name, "--json", "--repair", "--now"])
    assert lines.exit_code == 6, lines.output
    rows = [json.loads(line) for line in lines.stdout.splitlines() if line.startswith("{")]
    assert all(tuple(row) == DRIFT_FIELDS == tuple(documented("reconcile --json")) for row in rows)
    assert [(r["user_id"], r["key"], r["drift"], r["expected"], r["found"]) for r in rows] == [
        ("u001", "seats", "differs", 1, 42)
    ]
    assert customer_of(api, "u001")["attributes"]["custom"]["seats"] == 1  # repaired at once
    clean = cli_runner.invoke(cli, ["--config", str(config), "reconcile", job.name])
    assert clean.exit_code == 0 and "no drift" in clean.output
    runs = cli_runner.invoke(cli, ["--config", str(config), "runs", job.name, "--json"])
    kinds = [json.loads(line)["kind"] for line in runs.stdout.splitlines()]
    assert kinds.count("reconcile") == 3
    drifted = cli_runner.invoke(cli, ["--config", str(config), "diff", str(rows[0]["run_id"]), "--json"])
    assert [json.loads(line)["drift"] for line in drifted.output.splitlines()] == ["differs"]
    detail = json.loads(
        cli_runner.invoke(cli, ["--config", str(config), "runs", "show", str(rows[0]["run_id"]), "--json"]).output
    )
    assert detail["reconcile"]["drift"]["differs"] == 1 and detail["reconcile"]["requests"] >= 1
    text = cli_runner.invoke(cli, ["--config", str(config), "runs", "show", str(rows[0]["run_id"])]).output
    assert "reconciliation" in text and "1 differs" in text and "1 resent by the next run" in text
    outline = Outline(state_url="unused://", jobs=(JobOutline(name=job.name),))
    with ConsoleServer(Settings(outline), store) as server:  # the console shows it like any run
        page = httpx.get(f"{server.url}/runs/{rows[0]['run_id']}")
        assert page.status_code == 200 and "Reconciliation" in page.text and "<td>differs</td>" in page.text


def test_only_a_destination_that_can_be_read_back_is_reconciled(
    store: Store, warehouse: Warehouse, tmp_path: Path
) -> None:
    warehouse.set_members("vip", ["u1"])
    raw = job_dict(warehouse, "http://127.0.0.1:1/hook", audiences=[warehouse.audience("VIP", "vip")])
    config = tmp_path / "jobs.yaml"
    config.write_text(json.dumps({"state_url": store.engine.url.render_as_string(hide_password=False), "jobs": [raw]}))
    answer = CliRunner().invoke(cli, ["--config", str(config), "reconcile", "contacts"])
    assert answer.exit_code == 2
    assert "only a chartmogul_api destination can" in answer.output


def test_a_job_that_never_synced_reads_nothing(store: Store, warehouse: Warehouse, api: ChartMogulApiReceiver) -> None:
    result = reconcile(store, api_job(warehouse, api, target="customer"), Options())
    assert (result.status, result.checked, result.requests, result.drifts) == ("succeeded", 0, 0, [])
    assert api.calls == []


def test_values_compare_as_chartmogul_means_them() -> None:
    assert same(15, 15.0) and same(True, True) and not same(True, "true") and not same(1, True)
    assert same("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000+00:00") and not same("a", "b")
    assert holds("Decimal", 3) and holds("Integer", 3.0) and not holds("Integer", 3.5)
    assert holds("String", "2026-01-02") and not holds("Boolean", "true") and holds("Timestamp", "2026-01-02")


def test_a_repair_is_resent_by_the_warehouse_engine_too(
    store: Store, sleep: RecordingSleep, api: ChartMogulApiReceiver, tmp_path: Path
) -> None:
    """The engine that diffs inside the warehouse keeps a copy of the acknowledged fingerprints there: a
    repair reaches it through that copy, and the repaired subjects are looked at again."""
    wh = duckdb_warehouse(tmp_path / "warehouse.duckdb")
    wh.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in KNOWN])
    wh.set_members("vip", KNOWN[:4])
    wh.set_trait("seats", {u: i for i, u in enumerate(KNOWN)}, "INTEGER")
    raw = {
        "name": "contacts",
        "space_id": "spa_test",
        "source": wh.source(),
        "audiences": [wh.audience("VIP", "vip")],
        "traits": [wh.trait("Seats", "seats")],
        "destination": {"type": "chartmogul_api", "api_key": API_KEY, "base_url": api.url, "target": "customer",
                        "backoff_initial": "10ms", "backoff_max": "50ms", "timeout": "2s",
                        "requests_per_second": 2000},
    }  # fmt: skip
    job = make_config("sqlite://", [raw]).jobs[0]
    runner = Runner(store, sleep=sleep)
    assert runner.run(job).delivered == len(KNOWN)
    assert runner.run(job).updates == 0
    api.remove(uuid_of(api, "u001"), "vip")
    api.edit(uuid_of(api, "u005"), "seats", 50)
    result = reconcile(store, job, Options(repair=True))
    assert found(result.drifts) == {("u001", "vip", "missing"), ("u005", "seats", "differs")}
    report = runner.run(job)
    assert (report.updates, report.delivered) == (2, 2), report.error
    assert customer_of(api, "u001")["attributes"]["custom"]["vip"] is True
    assert customer_of(api, "u005")["attributes"]["custom"]["seats"] == 5
    assert reconcile(store, job, Options()).drifts == [] and runner.run(job).updates == 0


def test_a_reconciliation_asked_to_stop_ends_incomplete(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    """SIGTERM sets the stop event (`stop_on_signals`): the reading ends after the page in flight."""
    job = synced(store, sleep, warehouse, api, target="customer")
    for n in range(500):
        api.account.add_customer(f"other-{n}")
    api.delete(uuid_of(api, "u002"))
    stop = threading.Event()

    def stopping(request: Mapping[str, Any]) -> None:
        if request["path"] == "/v1/customers":
            stop.set()  # as the signal would, while the first page is answered

    api.faults.respond = stopping
    result = reconcile(store, job, Options(read="list"), stop=stop)
    assert (result.status, result.cut_short, result.pages) == ("partial", "stopped", 1)
    assert result.drifts == []  # u002 was not on a page that was read to its end: not claimed gone
    run = store.run(result.run_id)
    assert run is not None and run.status == "partial" and "cut short (stopped)" in (run.error or "")


def test_a_reconciliation_is_not_a_sync_to_status_the_scheduler_or_the_guard(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    """It sends nothing: the job's last run, what is pending, its failures, whether its initial sync is done,
    and the snapshot sizes the mass-change guard compares with stay those of its syncs."""
    job = api_job(warehouse, api, target="customer")
    reconcile(store, job, Options())  # before any sync
    assert store.last_run(job.name) is None and store.last_run(job.name, COMPLETED) is None
    seed(warehouse)
    api.faults.respond = lambda request: 500 if request["method"] in ("POST", "PUT") else None
    partial = Runner(store, sleep=sleep).run(job)
    assert partial.status in ("partial", "failed") and store.pending_updates(job.name) > 0
    api.faults.respond = None
    pending, failures = store.pending_updates(job.name), store.consecutive_failures(job.name)
    sizes = store.recent_user_counts(job.name, 5)
    assert reconcile(store, job, Options()).status == "succeeded"
    last = store.last_run(job.name)
    assert last is not None and last.id == partial.run_id
    assert store.pending_updates(job.name) == pending and store.consecutive_failures(job.name) == failures
    assert store.recent_user_counts(job.name, 5) == sizes
