"""The ChartMogul REST API destination, end to end against the ChartMogul-API-compatible receiver."""

import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync.audit.queries import change_records, run_record
from sync.audit.report import render_report
from sync.audit.status import job_status, table_row
from sync.config import ChartMogulApiConfig, JobConfig
from sync.destinations.chartmogul_api import attribute_type, fits
from sync.dev.chartmogul_account import Account
from sync.dev.chartmogul_api import ChartMogulApiReceiver
from sync.dev.receiver import Action, Faults
from sync.run.delivery import WINDOW_PER_CONNECTION
from sync.run.runner import Runner, RunOptions
from sync.store import AuditFilter, Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, kill_run_when, make_config

API_KEY = "cm_live_5ecret_api_key"
USERS = [f"u{i:03d}" for i in range(12)]
KNOWN = USERS[:9]  # the subjects ChartMogul has a customer (and a contact) for


def account(users: list[str] = KNOWN) -> Account:
    seeded = Account()
    for user in users:
        customer = seeded.add_customer(user, f"{user}@example.com", f"Customer {user}")
        seeded.add_contact(customer, f"{user}@example.com", first_name=user)
    return seeded


@pytest.fixture
def api() -> Iterator[ChartMogulApiReceiver]:
    with ChartMogulApiReceiver(account(), api_key=API_KEY, requests_per_second=None) as receiver:
        yield receiver


def api_job(warehouse: Warehouse, api: ChartMogulApiReceiver, **destination: Any) -> JobConfig:
    return make_config("sqlite://", [api_raw(warehouse, api, **destination)]).jobs[0]


def api_raw(warehouse: Warehouse, api: ChartMogulApiReceiver, **destination: Any) -> dict[str, Any]:
    """The job's settings as jobs.yaml holds them."""
    raw = job_dict(
        warehouse,
        "http://127.0.0.1:1/unused",
        audiences=[warehouse.audience("VIP", "vip"), warehouse.audience("Churn Risk", "churn")],
        traits=[warehouse.trait("LTV", "ltv"), warehouse.trait("Plan", "plan"), warehouse.trait("Seats", "seats")],
    )
    raw["destination"] = {
        "type": "chartmogul_api",
        "api_key": API_KEY,
        "base_url": api.url,
        "backoff_initial": "10ms",
        "backoff_max": "50ms",
        "timeout": "2s",
        "requests_per_second": 2000,
        **destination,
    }
    return raw


def seed(warehouse: Warehouse, users: list[str] = USERS) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in users])
    warehouse.set_members("vip", users[: len(users) // 2])
    warehouse.set_members("churn", users[::3])
    warehouse.set_trait("ltv", {u: i + 0.5 for i, u in enumerate(users)})
    warehouse.set_trait("plan", {u: "pro" if i % 2 else "starter" for i, u in enumerate(users)})
    warehouse.set_trait("seats", {u: i for i, u in enumerate(users)})


def customer_of(api: ChartMogulApiReceiver, user: str) -> dict[str, Any]:
    found = api.account.customer_by_external_id(user)
    assert found is not None
    return api.account.customers[found]


def contact_of(api: ChartMogulApiReceiver, user: str) -> dict[str, Any]:
    return next(c for c in api.account.contacts.values() if c["customer_external_id"] == user)


@pytest.mark.parametrize("match", ["external_id", "email"])
def test_an_initial_sync_writes_typed_attributes_to_customers(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver, match: str
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer", match=match)
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "succeeded", report.error
    assert report.updates == len(USERS)
    assert (report.delivered, report.unmatched, report.failed) == (len(KNOWN), len(USERS) - len(KNOWN), 0)
    assert report.exit_code == 0  # subjects ChartMogul does not know are not failures
    assert customer_of(api, "u000")["attributes"]["custom"] == {
        "vip": True,
        "churn_risk": True,
        "ltv": 0.5,
        "plan": "starter",
        "seats": 0,
    }
    assert customer_of(api, "u007")["attributes"]["custom"] == {"ltv": 7.5, "plan": "pro", "seats": 7}
    assert api.account.customer_attributes == {
        "vip": "Boolean",
        "churn_risk": "Boolean",
        "ltv": "Decimal",
        "plan": "String",
        "seats": "Integer",
    }
    writes = api.writes()
    added = Counter(item["key"] for w in writes if w.method == "POST" for item in w.body["custom"])
    assert added == Counter(set(api.account.customer_attributes))  # each attribute added once, with its type…
    assert all(item.get("source") == "audience-sync" for w in writes if w.method == "POST" for item in w.body["custom"])
    # …and updated after that: one write per subject, but for a first subject that carries new and existing keys
    mixed = sum(1 for w in writes if w.method == "PUT" and any(w.path == v.path and v.method == "POST" for v in writes))
    assert len(writes) == len(KNOWN) + mixed
    statuses = {row.user_id: row.status for row in store.updates_of(report.run_id)}
    assert {u for u, s in statuses.items() if s == "unmatched"} == set(USERS) - set(KNOWN)
    run = store.run(report.run_id)
    assert run is not None and run.unmatched == len(USERS) - len(KNOWN)


def test_later_runs_write_only_what_changed_without_looking_anyone_up_again(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer")
    runner = Runner(store, sleep=sleep)
    assert runner.run(job).delivered == len(KNOWN)
    api.calls.clear()
    warehouse.set_members("vip", USERS[1:7])  # u000 exits, u006 enters
    report = runner.run(job)
    # the unmatched subjects wait out rematch_after (no change of this run); the two changed ones are written
    assert (report.updates, report.delivered, report.unmatched) == (2, 2, 0)
    lookups = [c for c in api.lookups() if c.query.get("external_id") in KNOWN]
    assert lookups == []  # the uuids found by the first run are kept
    written = {w.path.split("/")[3]: (w.method, w.body) for w in api.writes()}
    assert written == {
        customer_of(api, "u000")["uuid"]: ("PUT", {"custom": {"vip": False}}),
        customer_of(api, "u006")["uuid"]: ("PUT", {"custom": {"vip": True}}),
    }
    assert customer_of(api, "u000")["attributes"]["custom"]["vip"] is False
    assert customer_of(api, "u006")["attributes"]["custom"]["vip"] is True


def test_an_unmatched_subject_is_written_once_chartmogul_knows_it(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer", rematch_after="0s")
    runner = Runner(store, sleep=sleep)
    assert runner.run(job).unmatched == 3
    with api._lock:
        api.account.add_customer("u010", "u010@example.com")
    report = runner.run(job)
    assert (report.delivered, report.unmatched) == (1, 2)
    assert customer_of(api, "u010")["attributes"]["custom"]["seats"] == 10
    assert runner.run(job).updates == 2  # u009 and u011, still unknown


def test_an_unmatched_subject_is_looked_up_again_only_after_rematch_after(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    assert runner.run(api_job(warehouse, api, target="customer")).unmatched == 3
    history = list(change_records(store, AuditFilter(user_id="u010")))
    api.calls.clear()
    report = runner.run(api_job(warehouse, api, target="customer"))  # within the default 6 h
    # not a change of this run: not planned, counted, audited or sent until it is looked up again
    assert (report.updates, report.entered, report.traits_changed, report.unmatched) == (0, 0, 0, 0)
    assert api.calls == [] and list(store.updates_of(report.run_id)) == []
    assert list(change_records(store, AuditFilter(user_id="u010"))) == history and history
    report = runner.run(api_job(warehouse, api, target="customer", rematch_after="0s"))
    assert report.unmatched == 3 and len(api.lookups()) == 3


def test_a_deleted_record_s_kept_uuid_is_found_again(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer")
    runner = Runner(store, sleep=sleep)
    runner.run(job)
    old = api.account.customer_by_external_id("u001")
    assert old is not None
    with api._lock:  # the customer is deleted and created again (re-imported from the billing system)
        api.account.delete_customer(old)
        new = api.account.add_customer("u001", "u001@example.com")
    warehouse.set_trait("seats", {u: 100 + i for i, u in enumerate(USERS)})
    report = runner.run(job)
    assert report.failed == 0 and report.delivered == len(KNOWN)
    assert api.account.customers[new]["attributes"]["custom"]["seats"] == 101
    assert store.remote_ids(job.name, "customer:external_id", ["u001"]) == {"u001": new}


def test_contacts_get_custom_values_by_patch(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    with api._lock:  # a second contact at u002's customer: the one with the subject's email is written
        api.account.add_contact(api.account.customer_by_external_id("u002") or "", "colleague@example.com")
    job = api_job(warehouse, api, target="contact")
    report = Runner(store, sleep=sleep).run(job)
    assert report.delivered == len(KNOWN)
    assert {w.method for w in api.writes()} == {"PATCH"}
    assert contact_of(api, "u002")["custom"] == {"vip": True, "ltv": 2.5, "plan": "starter", "seats": 2}
    colleague = next(c for c in api.account.contacts.values() if c["email"] == "colleague@example.com")
    assert colleague["custom"] == {}


def test_a_trait_whose_values_change_type_is_refused_naming_the_key(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver, caplog: Any
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer")
    runner = Runner(store, sleep=sleep)
    runner.run(job)
    warehouse.set_trait("seats", {u: ("many" if u == "u003" else i) for i, u in enumerate(USERS)})
    report = runner.run(job)
    assert report.failed == 1 and report.delivered == 0
    failed = store.failed_updates(job.name)
    assert [f.user_id for f in failed] == ["u003"]
    assert "trait 'seats'" in (failed[0].error or "") and "Integer" in (failed[0].error or "")
    assert customer_of(api, "u003")["attributes"]["custom"]["seats"] == 3  # unchanged


def test_typed_values() -> None:
    assert [attribute_type(v) for v in (True, 3, 2.5, "2024-05-01", "2024-05-01T10:00:00Z", "pro", None)] == [
        "Boolean",
        "Integer",
        "Decimal",
        "Timestamp",
        "Timestamp",
        "String",
        None,
    ]
    with pytest.raises(ValueError, match="255"):
        attribute_type("x" * 256)
    with pytest.raises(ValueError, match="list"):
        attribute_type([1])
    assert fits("Decimal", 3) == 3 and fits("Integer", 4.0) == 4 and fits("String", "2024-05-01") == "2024-05-01"
    with pytest.raises(ValueError, match="as an Integer attribute, this value is a String"):
        fits("Integer", "many")


def test_the_api_key_is_never_printed_stored_or_logged(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, caplog: Any
) -> None:
    seed(warehouse)
    with ChartMogulApiReceiver(account(), api_key="another-key", requests_per_second=None) as api:
        job = api_job(warehouse, api, target="customer")
        with caplog.at_level(logging.DEBUG, logger="sync"):
            report = Runner(store, sleep=sleep).run(job)
    assert report.status == "failed" and "401" in (report.error or "")
    assert API_KEY not in caplog.text and API_KEY not in (report.error or "")
    with store.engine.connect() as connection:
        for table in ("runs", "run_updates", "remote_ids", "failed_updates"):
            text = json.dumps([list(r) for r in connection.exec_driver_sql(f"SELECT * FROM {table}")], default=str)
            assert API_KEY not in text and base64.b64encode(f"{API_KEY}:".encode()).decode() not in text


def test_a_run_that_is_told_no_record_anywhere_does_not_fail(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse)
    with ChartMogulApiReceiver(Account(), api_key=API_KEY, requests_per_second=None) as api:
        job = api_job(warehouse, api, target="customer", match="email")
        report = Runner(store, sleep=sleep).run(job, RunOptions())
    assert report.status == "succeeded" and report.unmatched == len(USERS) and report.delivered == 0


def test_settings_are_checked() -> None:
    settings = ChartMogulApiConfig.model_validate({"type": "chartmogul_api", "api_key": "k"})
    assert (settings.target, settings.match, settings.base_url) == (
        "contact",
        "external_id",
        "https://api.chartmogul.com/v1",
    )
    with pytest.raises(ValueError, match="https"):
        ChartMogulApiConfig.model_validate({"type": "chartmogul_api", "api_key": "k", "base_url": "http://x.io/v1"})


def test_at_chartmogul_s_limits_nothing_is_lost_and_the_rate_holds(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    users = [f"u{i:03d}" for i in range(90)]
    seed(warehouse, users)
    with ChartMogulApiReceiver(account(users[:80]), api_key=API_KEY) as api:  # 40 requests/s, 20 connections
        job = api_job(warehouse, api, target="customer", requests_per_second=40, max_connections=20)
        started = time.monotonic()
        report = Runner(store, sleep=sleep).run(job)
        elapsed = time.monotonic() - started
        late = [c for c in api.calls if c.status == 429 and c.at - api.calls[0].at > 1.0]
    assert report.status == "succeeded" and (report.delivered, report.unmatched) == (80, 10)
    assert late == [] and api.too_many_connections == 0
    assert len(api.calls) == 80 + 90  # one lookup per subject, one write per matched subject
    assert len(api.calls) / elapsed <= 40 * 1.1


@pytest.mark.parametrize(
    ("limits", "pace", "refused"),
    [
        # 10 requests/s allowed, 30 asked for: 429s once the first ten are spent
        ({"requests_per_second": 10}, {"requests_per_second": 30, "max_connections": 4}, "rate_limited"),
        # 2 connections allowed, 8 slow ones opened: 503s
        (
            {"max_connections": 2, "faults": Faults(delay=0.05)},
            {"requests_per_second": 400, "max_connections": 8},
            "too_many_connections",
        ),
    ],
)
def test_a_run_pushed_past_a_limit_retries_until_nothing_is_lost(
    store: Store, warehouse: Warehouse, limits: dict[str, Any], pace: dict[str, Any], refused: str
) -> None:
    users = [f"u{i:03d}" for i in range(24)]
    seed(warehouse, users)
    with ChartMogulApiReceiver(account(users), api_key=API_KEY, **limits) as api:
        job = api_job(warehouse, api, target="customer", backoff_initial="200ms", **pace)
        runner = Runner(store)  # real backoff: the point is what waiting does
        delivered = 0
        for _ in range(10):  # what a run could not deliver stays pending for the next
            delivered += runner.run(job).delivered
            if delivered == len(users):
                break
    assert delivered == len(users)
    assert getattr(api, refused) > 0  # the limit was hit, answered, and waited out
    assert all(customer_of(api, u)["attributes"]["custom"]["seats"] == i for i, u in enumerate(users))
    assert store.state_size(job.name) == len(users)


def test_a_process_killed_mid_run_loses_nothing(tmp_path: Path, warehouse: Warehouse, sleep: RecordingSleep) -> None:
    users = [f"u{i:03d}" for i in range(200)]
    seed(warehouse, users)
    state, config = tmp_path / "state.db", tmp_path / "jobs.yaml"
    reached, written = threading.Event(), [0]

    def count(request: Mapping[str, Any]) -> Action:
        if request["method"] != "GET":
            written[0] += 1
            if written[0] >= 20:
                reached.set()
        return None

    faults = Faults(respond=count, delay=0.01)
    with ChartMogulApiReceiver(account(users), api_key=API_KEY, faults=faults, requests_per_second=None) as api:
        destination = {"type": "chartmogul_api", "api_key": "${KEY}", "base_url": api.url, "target": "customer"}
        raw = {"name": "contacts", "source": {"url": warehouse.url}, "audiences": [warehouse.audience("VIP", "vip")]}
        raw["traits"] = [warehouse.trait("Seats", "seats")]
        config.write_text(
            yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [{**raw, "destination": destination}]})
        )
        kill_run_when(config, reached, {"KEY": API_KEY})
        first_writes = len(api.writes())
        api.faults.respond = None
        with closing(Store.open(f"sqlite:///{state}")) as store_:
            job = make_config("sqlite://", [{**raw, "destination": {**destination, "api_key": API_KEY}}]).jobs[0]
            report = Runner(store_, sleep=sleep).run(job)
            killed = store_.run(1)
            assert killed is not None and killed.status == "interrupted"
            assert store_.state_size(job.name) == len(users)
    assert report.status == "succeeded"
    assert all(customer_of(api, u)["attributes"]["custom"]["seats"] == i for i, u in enumerate(users))
    duplicates = len(api.writes()) - len(users)
    assert 0 <= duplicates <= WINDOW_PER_CONNECTION * 20
    # The kill came mid-run: the receiver applies a write 10 ms after counting it, so the 20th may not be in yet.
    assert 0 < first_writes < len(users)


def test_status_history_and_the_report_show_the_match_rate(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    job = api_job(warehouse, api, target="customer")
    report = Runner(store, sleep=sleep).run(job)
    run = store.run(report.run_id)
    assert run is not None
    record = run_record(run)
    assert (record["unmatched"], record["match_rate"]) == (3, 0.75)
    now = datetime.now(UTC)
    row = table_row(job_status(store, job, now))
    assert row["last_run"] == f"{report.run_id} succeeded, 75% matched (3 wait for a record)"
    assert job_status(store, job, now)["records"] == {"found": 9, "waiting": 3, "match_rate": 0.75}
    page = render_report(store, job.name, now)
    assert "<th>unmatched</th><th>matched</th>" in page and "<td class=matched>75%</td>" in page
    history = [r for r in change_records(store, AuditFilter(user_id="u010"))]
    assert {r["status"] for r in history} == {"unmatched"}


def test_contacts_by_email_and_timestamps_and_nulls(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    warehouse.set_trait("plan", {"u000": "2026-05-01T10:00:00Z", "u001": "2026-06-01"})
    job = api_job(warehouse, api, target="contact", match="email")
    runner = Runner(store, sleep=sleep)
    assert runner.run(job).delivered == len(KNOWN)
    assert contact_of(api, "u000")["custom"]["plan"] == "2026-05-01T10:00:00Z"
    assert store.remote_attributes(job.name, "contact:email")["plan"] == "Timestamp"
    lookups = {c.query.get("email") for c in api.lookups()}
    assert "u000@example.com" in lookups  # found by email, not by the customer's external id
    warehouse.set_trait("plan", {"u001": "2026-06-02"})  # u000's value is gone: null clears it
    report = runner.run(job)
    assert report.delivered == 2 and report.failed == 0
    assert contact_of(api, "u000")["custom"]["plan"] is None
    assert contact_of(api, "u001")["custom"]["plan"] == "2026-06-02"


def test_chartmogul_s_own_rejection_is_recorded_with_its_message(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    seed(warehouse)
    api.account.customer_attributes["plan"] = "Integer"  # created in ChartMogul by someone else, as Integer
    job = api_job(warehouse, api, target="customer")
    report = Runner(store, sleep=sleep).run(job)
    assert report.failed == len(KNOWN) and report.delivered == 0 and report.exit_code == 3
    failed = store.failed_updates(job.name)
    assert {f.http_status for f in failed} == {422}
    assert all("already exists with type Integer" in (f.error or "") for f in failed)


def test_messages_shows_the_requests_chartmogul_received_lookups_included_never_the_key(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, api: ChartMogulApiReceiver
) -> None:
    from sync.audit.queries import run_messages

    seed(warehouse)
    report = Runner(store, sleep=sleep).run(api_job(warehouse, api, target="customer"))
    shown = list(run_messages(store, report.run_id))
    assert {(m["method"], m["path"].split("?")[0]) for m in shown} >= {
        ("GET", "/v1/customers"),
        ("POST", f"/v1/customers/{customer_of(api, 'u000')['uuid']}/attributes/custom"),
    }
    received = sorted((c.method, c.path, json.dumps(c.body, sort_keys=True)) for c in api.calls if c.method != "GET")
    written = sorted((m["method"], m["path"], json.dumps(m["body"], sort_keys=True)) for m in shown if m["body"])
    assert written == received  # every write as ChartMogul received it
    assert sum(m["method"] == "GET" for m in shown) == len(api.lookups()) == len(USERS)
    unmatched = [m for m in shown if m["user_id"] == "u010"]
    assert [m["method"] for m in unmatched] == ["GET"]
    assert API_KEY not in json.dumps(shown)
