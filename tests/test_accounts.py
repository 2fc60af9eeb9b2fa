"""Account-level audiences and traits (``subject: account``): group calls, ChartMogul's Send Customer body,
Segment's group calls and ChartMogul customers through the API, on real parts."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sync.audit.queries import history, run_calls
from sync.dev.chartmogul_account import Account
from sync.dev.chartmogul_api import ChartMogulApiReceiver
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner, RunOptions
from sync.store import Store
from tests.conftest import ACCOUNTS, AccountWarehouse, RecordingSleep


def test_account_audiences_reach_the_webhook_as_send_customer_bodies(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, receiver: Receiver
) -> None:
    accounts.seed()
    job = accounts.job({"webhook_url": receiver.url})
    runner = Runner(store, sleep=sleep)
    report = runner.run(job)
    assert report.status == "succeeded" and report.delivered == len(ACCOUNTS)
    bodies = {b["group_id"]: b for b in receiver.accepted()}
    first = bodies["g00"]
    assert {k: v for k, v in first.items() if k not in ("message_id", "timestamp", "sent_at")} == {
        "type": "Send Customer",
        "user_id": "owner-g00",
        "group_id": "g00",
        "name": "Company g00",
        "email": "billing@g00.example",
        "website": "https://g00.example",
        "created_at": "2024-03-01T00:00:00Z",
        "address": {"street": "1 Main St", "city": "Berlin", "country": "DE"},
        "custom_attributes": {"enterprise": True, "seats": 10},
    }
    assert "address" not in bodies["g01"]  # no address: none sent (the published action sends {})
    assert bodies["g07"]["custom_attributes"] == {"seats": 80}
    receiver.records.clear()
    accounts.members("enterprise", ACCOUNTS[1:5])  # g00 stops matching
    report = runner.run(job)
    assert (report.exited, report.delivered) == (1, 1)
    (body,) = receiver.accepted()
    assert body["group_id"] == "g00" and body["custom_attributes"] == {"enterprise": False}
    (call,) = run_calls(store, report.run_id)  # messages: the group call as sent
    assert call["type"] == "group" and call["groupId"] == "g00" and call["userId"] == "owner-g00"
    assert call["traits"]["enterprise"] is False and call["traits"]["address"]["city"] == "Berlin"
    timeline = history(store, job.name, "g00")
    assert timeline["acknowledged"] == {"seats": 10}  # no longer a member
    assert [(r["run_id"], r["key"], r["change"]) for r in timeline["timeline"]][-1] == (
        report.run_id,
        "enterprise",
        "exited",
    )


def test_an_account_without_its_user_is_refused_before_sending(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, receiver: Receiver, tmp_path: Path
) -> None:
    accounts.seed()
    with sqlite3.connect(tmp_path / "accounts.db") as db:
        db.execute("UPDATE accounts SET user_id = NULL, email = 'not-an-address' WHERE group_id = 'g03'")
    report = Runner(store, sleep=sleep).run(accounts.job({"webhook_url": receiver.url}))
    assert report.failed == 1 and report.delivered == len(ACCOUNTS) - 1
    (failed,) = store.failed_updates("accounts")
    assert failed.user_id == "g03" and "needs a user_id" in (failed.error or "")
    assert all("email" in b for b in receiver.accepted())


@pytest.mark.parametrize("calls", ["per_user", "per_computation"])
def test_account_audiences_go_to_segment_as_group_calls(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, calls: str
) -> None:
    accounts.seed()
    with Receiver(mode="segment", write_key="wk") as segment:
        destination = {"type": "segment", "write_key": "wk", "endpoint": segment.url, "calls": calls}
        report = Runner(store, sleep=sleep).run(accounts.job(destination))
        sent = segment.accepted_calls()
    assert report.delivered == len(ACCOUNTS)
    assert {c["type"] for c in sent} == {"group"} and {c["groupId"] for c in sent} == set(ACCOUNTS)
    mine = [c for c in sent if c["groupId"] == "g00"]
    if calls == "per_user":
        (call,) = mine
        assert call["traits"]["enterprise"] is True and call["traits"]["name"] == "Company g00"
    else:
        assert sorted(c["context"]["personas"]["computation_key"] for c in mine) == ["enterprise", "seats"]
        assert all(c["userId"] == "owner-g00" and c["traits"]["name"] == "Company g00" for c in mine)


def test_account_audiences_become_chartmogul_customer_attributes(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse
) -> None:
    accounts.seed()
    account = Account()
    for group in ACCOUNTS[:6]:
        account.add_customer(group, f"billing@{group}.example")
    with ChartMogulApiReceiver(account, api_key="k", requests_per_second=None) as api:
        job = accounts.job({"type": "chartmogul_api", "api_key": "k", "base_url": api.url, "target": "customer"})
        report = Runner(store, sleep=sleep).run(job)
    assert (report.delivered, report.unmatched) == (6, 2)
    uuid = account.customer_by_external_id("g00")
    assert uuid is not None and account.customers[uuid]["attributes"]["custom"] == {"enterprise": True, "seats": 10}


def test_a_dry_run_and_a_full_run_of_an_account_job(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, receiver: Receiver
) -> None:
    accounts.seed()
    job = accounts.job({"webhook_url": receiver.url})
    runner = Runner(store, sleep=sleep)
    dry = runner.run(job, RunOptions(dry_run=True))
    assert dry.status == "planned" and dry.updates == len(ACCOUNTS) and receiver.records == []
    runner.run(job)
    receiver.records.clear()
    full = runner.run(job, RunOptions(full=True))
    assert full.delivered == len(ACCOUNTS) and len(receiver.accepted()) == len(ACCOUNTS)


def test_account_results_are_read_by_group_id_and_said_so(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, receiver: Receiver
) -> None:
    accounts.seed()
    job = accounts.job(
        {"webhook_url": receiver.url},
        traits=[{"name": "Seats", "query": "SELECT group_id AS user_id, value FROM seats"}],
    )
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "failed"
    assert (
        "trait seats: the result has a user_id column, but an account job's results identify accounts by group_id"
        in (report.error or "")
    )
    wrong_profiles = accounts.job(
        {"webhook_url": receiver.url},
        source={"url": accounts.url, "profiles": "SELECT group_id, 1 AS plan FROM accounts"},
    )
    report = Runner(store, sleep=sleep).run(wrong_profiles)
    assert "unknown column plan" in (report.error or "")
    assert "accepted columns: group_id, user_id, name, description, email, website, created_at" in (report.error or "")


def test_an_account_key_may_not_be_a_standard_account_field(accounts: AccountWarehouse, receiver: Receiver) -> None:
    website = {"name": "Website", "query": "SELECT group_id, 1 AS value FROM accounts"}
    with pytest.raises(ConfigError) as error:
        accounts.job({"webhook_url": receiver.url}, traits=[website])
    assert error.value.problems == [
        "job 'accounts': traits[0]: key 'website' is a standard account field; set another key"
    ]


@pytest.mark.parametrize(
    ("destination", "problem"),
    [
        (
            {"type": "segment", "write_key": "wk", "events": "track"},
            "destination.events: an account job sends group calls; track events are for user jobs",
        ),
        (
            {"type": "chartmogul_api", "api_key": "k"},
            "destination.target: an account job writes to ChartMogul customers; set target: customer",
        ),
    ],
)
def test_what_an_account_job_cannot_send_is_a_configuration_error(
    accounts: AccountWarehouse, destination: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        accounts.job(destination)
    assert error.value.problems == [f"job 'accounts': {problem}"]


def test_a_new_account_audience_and_the_guard(
    store: Store, sleep: RecordingSleep, accounts: AccountWarehouse, receiver: Receiver
) -> None:
    accounts.seed()
    runner = Runner(store, sleep=sleep)
    runner.run(accounts.job({"webhook_url": receiver.url}))
    receiver.records.clear()
    accounts.members("partner", ACCOUNTS[:2])
    partner = {"name": "Partner", "query": "SELECT group_id FROM members WHERE audience = 'partner'"}
    enterprise = {"name": "Enterprise", "query": "SELECT group_id FROM members WHERE audience = 'enterprise'"}
    job = accounts.job({"webhook_url": receiver.url}, audiences=[enterprise, partner])
    report = runner.run(job)  # a new audience: its own initial sync, nothing else
    assert (report.entered, report.delivered) == (2, 2)
    assert [b["custom_attributes"] for b in receiver.accepted()] == [{"partner": True}, {"partner": True}]
    receiver.records.clear()
    accounts.members("enterprise", [])  # a broken query: every account would leave
    blocked = runner.run(job)
    assert blocked.status == "blocked" and "enterprise" in (blocked.error or "") and receiver.records == []
