"""``send_profile_changes``: a change of a profile field or an enriched column alone is a reason to send
(Engage's own behaviour, and the default, is to wait for a membership or trait change)."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sync.audit.queries import change_records
from sync.config import JobConfig
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import AuditFilter, Store
from tests.conftest import AccountWarehouse, RecordingSleep, Warehouse, job_dict, make_config

USERS = ["u1", "u2", "u3"]


def profile_job(warehouse: Warehouse, url: str, send: bool, **extra: Any) -> JobConfig:
    raw = job_dict(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    raw["send_profile_changes"] = send
    raw.update(extra)
    return make_config("sqlite://", [raw]).jobs[0]


def seed(warehouse: Warehouse, email_of_u1: str = "u1@example.com") -> None:
    emails = {"u1": email_of_u1, "u2": "u2@example.com", "u3": "u3@example.com"}
    warehouse.set_profiles([{"user_id": u, "email": emails[u], "first_name": u.upper()} for u in USERS])
    warehouse.set_members("vip", ["u1", "u2"])


def test_by_default_a_profile_change_alone_sends_nothing(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    runner.run(profile_job(warehouse, receiver.url, False))
    receiver.records.clear()
    seed(warehouse, "ada@example.com")
    assert runner.run(profile_job(warehouse, receiver.url, False)).updates == 0 and receiver.records == []


def test_with_send_profile_changes_a_changed_email_is_sent_and_audited(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    first = runner.run(profile_job(warehouse, receiver.url, True))
    assert first.delivered == 3  # u3 is in no audience: its profile is sent once, as the field's initial sync
    bodies = {b["user_id"]: b for b in receiver.accepted()}
    assert bodies["u1"]["custom_attributes"] == {"vip": True}  # profile fields are fields, not attributes
    assert "custom_attributes" not in bodies["u3"] and bodies["u3"]["email"] == "u3@example.com"
    receiver.records.clear()
    seed(warehouse, "ada@example.com")
    report = runner.run(profile_job(warehouse, receiver.url, True))
    assert (report.updates, report.delivered, report.traits_changed) == (1, 1, 0)
    (body,) = receiver.accepted()
    assert body["user_id"] == "u1" and body["email"] == "ada@example.com" and "custom_attributes" not in body
    rows = list(change_records(store, AuditFilter(run_id=report.run_id)))
    assert [(r["key"], r["old"], r["new"], r["change"]) for r in rows] == [
        ("profile.email", "u1@example.com", "ada@example.com", "profile")
    ]
    receiver.records.clear()
    assert runner.run(profile_job(warehouse, receiver.url, True)).updates == 0  # nothing changed since


def test_a_profile_change_reaches_segment_as_one_identify_even_per_computation(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse)
    with Receiver(mode="segment", write_key="wk") as segment:
        destination = {"type": "segment", "write_key": "wk", "endpoint": segment.url, "events": "both"}
        raw = job_dict(warehouse, segment.url, audiences=[warehouse.audience("VIP", "vip")])
        raw["destination"] = {"backoff_initial": "10ms", **destination}
        raw["send_profile_changes"] = True
        job = make_config("sqlite://", [raw]).jobs[0]
        runner = Runner(store, sleep=sleep)
        runner.run(job)
        segment.records.clear()
        seed(warehouse, "ada@example.com")
        assert runner.run(job).delivered == 1
        (call,) = segment.accepted_calls()
    assert call["type"] == "identify" and call["traits"]["email"] == "ada@example.com"
    assert call["context"]["personas"]["computations"] == []


def test_profile_changes_need_identify_calls(warehouse: Warehouse) -> None:
    raw = job_dict(warehouse, "https://hooks.example.com/x", audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"] = {"type": "segment", "write_key": "wk", "events": "track"}
    raw["send_profile_changes"] = True
    with pytest.raises(ConfigError) as error:
        make_config("sqlite://", [raw])
    assert error.value.problems == [
        "job 'contacts': send_profile_changes: a profile change is sent in an identify call; use events: both"
    ]


def test_an_account_s_changed_website_alone_is_one_send_customer_body(
    store: Store, sleep: RecordingSleep, tmp_path: Path, receiver: Receiver
) -> None:

    accounts = AccountWarehouse(tmp_path / "accounts.db")
    accounts.seed()
    job = accounts.job({"webhook_url": receiver.url}, send_profile_changes=True)
    runner = Runner(store, sleep=sleep)
    runner.run(job)
    receiver.records.clear()

    with sqlite3.connect(tmp_path / "accounts.db") as db:
        db.execute("UPDATE accounts SET website = 'https://new.example' WHERE group_id = 'g02'")
    report = runner.run(job)
    assert report.delivered == 1
    (body,) = receiver.accepted()
    assert body["type"] == "Send Customer" and body["group_id"] == "g02" and body["website"] == "https://new.example"
    assert "custom_attributes" not in body
