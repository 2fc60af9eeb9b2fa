"""Trait enrichment (Engage's "Customized Setup"): extra profile columns a job lists under ``enrich`` travel as
traits on every call of the subject, and reach each destination as custom attributes."""

from typing import Any

import pytest

from sync.config import JobConfig
from sync.dev.chartmogul_account import Account
from sync.dev.chartmogul_api import ChartMogulApiReceiver
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config

USERS = [f"u{i:03d}" for i in range(6)]
PROFILES = (
    "SELECT user_id, email, CASE WHEN user_id < 'u003' THEN 'gold' ELSE 'basic' END AS tier, "
    "'DE' AS country FROM profiles"
)


def enriched_job(warehouse: Warehouse, url: str, enrich: list[str], **destination: Any) -> JobConfig:
    raw = job_dict(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    raw["source"]["profiles"] = PROFILES
    raw["enrich"] = enrich
    if destination:  # another destination type than the webhook job_dict makes
        raw["destination"] = {"backoff_initial": "10ms", "requests_per_second": 2000, **destination}
    return make_config("sqlite://", [raw]).jobs[0]


def seed(warehouse: Warehouse) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in USERS])
    warehouse.set_members("vip", USERS[:4])


def test_enriched_columns_reach_the_webhook_as_custom_attributes(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    report = Runner(store, sleep=sleep).run(enriched_job(warehouse, receiver.url, ["tier", "country"]))
    assert report.status == "succeeded" and report.delivered == 4
    bodies = {b["user_id"]: b for b in receiver.accepted()}
    assert bodies["u000"]["custom_attributes"] == {"vip": True, "tier": "gold", "country": "DE"}
    assert bodies["u003"]["custom_attributes"] == {"vip": True, "tier": "basic", "country": "DE"}
    assert "tier" not in bodies["u000"]  # not a Send Contact field: only among the custom attributes


def test_enriched_columns_travel_on_every_segment_call(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse)
    with Receiver(mode="segment", write_key="wk") as segment:
        job = enriched_job(
            warehouse,
            segment.url,
            ["tier", "country"],
            type="segment",
            write_key="wk",
            endpoint=segment.url,
            events="both",
        )
        Runner(store, sleep=sleep).run(job)
        calls = [c for c in segment.accepted_calls() if c["userId"] == "u000"]
    identify = next(c for c in calls if c["type"] == "identify")
    track = next(c for c in calls if c["type"] == "track")
    assert identify["traits"] == {"vip": True, "email": "u000@example.com", "tier": "gold", "country": "DE"}
    assert track["context"]["traits"] == {"email": "u000@example.com", "tier": "gold", "country": "DE"}


def test_enriched_columns_become_chartmogul_attributes(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse
) -> None:
    seed(warehouse)
    account = Account()
    for user in USERS:
        account.add_customer(user, f"{user}@example.com")
    with ChartMogulApiReceiver(account, api_key="k", requests_per_second=None) as api:
        job = enriched_job(
            warehouse,
            api.url,
            ["tier", "country"],
            type="chartmogul_api",
            api_key="k",
            base_url=api.url,
            target="customer",
        )
        assert Runner(store, sleep=sleep).run(job).delivered == 4
        uuid = account.customer_by_external_id("u000")
        assert uuid is not None
        assert account.customers[uuid]["attributes"]["custom"] == {"vip": True, "tier": "gold", "country": "DE"}
        assert account.customer_attributes == {"vip": "Boolean", "tier": "String", "country": "String"}


def test_an_undeclared_extra_column_is_refused_naming_the_accepted_ones(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    seed(warehouse)
    report = Runner(store, sleep=sleep).run(enriched_job(warehouse, receiver.url, ["tier"]))
    assert report.status == "failed"
    assert "unknown column country" in (report.error or "") and "tier" in (report.error or "")
    assert receiver.records == []


@pytest.mark.parametrize(
    ("enrich", "problem"),
    [
        (["email"], "enrich[0]: 'email' is a standard profile column; it is sent without enrich"),
        (["vip"], "enrich[0]: 'vip' is already the key of audiences[0]"),
        (["tier", "tier"], "enrich[1]: 'tier' is listed twice"),
        (["no-dash"], "enrich[0]: String should match pattern"),
    ],
)
def test_enrich_is_checked(warehouse: Warehouse, enrich: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        enriched_job(warehouse, "https://hooks.example.com/x", enrich)
    assert any(problem in p for p in error.value.problems), error.value.problems
