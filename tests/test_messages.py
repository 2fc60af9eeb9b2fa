import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from sync.calls import render
from sync.clock import iso
from sync.destinations.factory import spec_before_specs as call_spec_for_chartmogul
from sync.model import Computation, KeyChange, Update
from sync.plan.diff import diff_states
from sync.plan.updates import message_id, plan_updates

NOW = datetime(2026, 11, 22, 6, 0, 0, 123456, tzinfo=UTC)
VIP = Computation("vip_customers", "audience", "VIP")
REV = Computation("total_revenue_180_days", "trait", "Total Revenue 180 Days")


def test_message_id_is_stable_for_the_same_change_and_new_for_a_later_one() -> None:
    enter = [KeyChange("vip", "audience", None, True)]
    exit_ = [KeyChange("vip", "audience", True, False)]
    first = message_id("contacts", "u1", 0, enter)
    assert first == message_id("contacts", "u1", 0, enter)  # a retry before acknowledgement
    assert len(first) < 100
    # enter → exit → enter: the acknowledged version moves on with each acknowledgement
    ids = {first, message_id("contacts", "u1", 1, exit_), message_id("contacts", "u1", 2, enter)}
    assert len(ids) == 3
    assert message_id("contacts", "u2", 0, enter) != first
    assert message_id("other", "u1", 0, enter) != first


def test_one_update_per_user_with_all_changed_keys_and_profile() -> None:
    new = pd.DataFrame(
        {"vip_customers": [True, False], "total_revenue_180_days": [450.0, 3]},
        index=pd.Index(["u1", "u2"], dtype=object),
    ).astype({"total_revenue_180_days": object})
    changes = diff_states(
        pd.DataFrame(columns=["vip_customers", "total_revenue_180_days"]),
        new,
        [VIP, REV],
        force={"vip_customers", "total_revenue_180_days"},
    )
    updates = list(plan_updates("contacts", changes, [VIP, REV], new, {"u1": {"email": "a@x.io"}}, {"u1": 4}))
    assert [u.user_id for u in updates] == ["u1", "u2"]
    assert updates[0].changes == (
        KeyChange("vip_customers", "audience", None, True),
        KeyChange("total_revenue_180_days", "trait", None, 450.0),
    )
    assert updates[0].state == {"vip_customers": True, "total_revenue_180_days": 450.0}
    assert updates[0].profile == {"email": "a@x.io"}
    assert updates[0].message_id == message_id("contacts", "u1", 4, updates[0].changes)
    assert updates[1].state == {"total_revenue_180_days": 3}
    assert updates[1].profile == {}


def identify_call(
    update: Update, *, space_id: str | None, timestamp: datetime, sent_at: datetime | None = None
) -> dict[str, Any]:
    """The one call a ChartMogul job renders an update to."""
    (call,) = render(update, call_spec_for_chartmogul(space_id), timestamp=timestamp, sent_at=sent_at)
    return call


def test_identify_call_follows_the_segment_spec() -> None:
    update = Update(
        "u1",
        "as-1",
        (KeyChange("vip_customers", "audience", None, True), KeyChange("total_revenue_180_days", "trait", 1.0, 450.0)),
        {
            "anonymous_id": "anon-1",
            "email": "a@x.io",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "name": "Ada L",
            "title": "CTO",
            "phone": "+1",
            "linked_in": "https://li/ada",
            "twitter": "@ada",
            "company_id": "c1",
            "company_name": "Analytical",
        },
        {},
    )
    call = identify_call(update, space_id="spa_1", timestamp=NOW)
    assert call == {
        "type": "identify",
        "messageId": "as-1",
        "timestamp": "2026-11-22T06:00:00.123Z",
        "sentAt": "2026-11-22T06:00:00.123Z",
        "userId": "u1",
        "anonymousId": "anon-1",
        "traits": {
            "vip_customers": True,
            "total_revenue_180_days": 450.0,
            "email": "a@x.io",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "name": "Ada L",
            "title": "CTO",
            "phone": "+1",
            "linkedIn": "https://li/ada",
            "twitter": "@ada",
            "company": {"id": "c1", "name": "Analytical"},
        },
        "context": {
            "personas": {
                "computation_class": "audience,trait",
                "computation_key": "vip_customers,total_revenue_180_days",
                "computations": [
                    {"computation_class": "audience", "computation_key": "vip_customers"},
                    {"computation_class": "trait", "computation_key": "total_revenue_180_days"},
                ],
                "space_id": "spa_1",
                "namespace": "spa_1",
            }
        },
        "integrations": {"All": False, "ChartMogul": True},
    }


def test_a_single_computation_uses_engage_s_personas_fields_and_no_anonymous_id_when_unknown() -> None:
    update = Update("u1", "as-1", (KeyChange("vip", "audience", True, False),), {}, {})
    call = identify_call(update, space_id=None, timestamp=NOW, sent_at=datetime(2026, 11, 22, 7, tzinfo=UTC))
    assert "anonymousId" not in call
    assert call["sentAt"] == "2026-11-22T07:00:00.000Z"
    assert call["traits"] == {"vip": False}
    assert call["context"]["personas"]["computation_class"] == "audience"
    assert call["context"]["personas"]["computation_key"] == "vip"
    assert "space_id" not in call["context"]["personas"]


def test_iso_is_utc_with_milliseconds() -> None:
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)) == "2026-01-02T03:04:05.006Z"


def test_message_id_hashes_the_documented_payload_so_ids_survive_an_upgrade() -> None:
    changes = [KeyChange("plan", "trait", "free", "pro"), KeyChange("vip", "audience", False, True)]
    payload = json.dumps(
        ["contacts", "u1", 3, [["plan", "pro"], ["vip", True]]], sort_keys=True, separators=(",", ":"), default=str
    )
    assert payload == '["contacts","u1",3,[["plan","pro"],["vip",true]]]'
    expected = "as-" + hashlib.sha256(payload.encode()).hexdigest()[:40]
    assert message_id("contacts", "u1", 3, list(reversed(changes))) == expected
