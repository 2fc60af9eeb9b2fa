"""Rendering an update as the calls a destination takes."""

from datetime import UTC, datetime

from sync.calls import CallSpec, render
from sync.calls.identify import derived_id
from sync.destinations.factory import spec_before_specs
from sync.model import KeyChange, Update

NOW = datetime(2026, 11, 30, 6, tzinfo=UTC)
CHANGES = (
    KeyChange("vip", "audience", None, True),
    KeyChange("churn", "audience", True, False),
    KeyChange("ltv", "trait", 1.0, 2.5),
)
SEGMENT = CallSpec("per_computation", "spa_1", {"All": True}, {"vip": "aud_given"}, "installation-a")


def update(changes: tuple[KeyChange, ...] = CHANGES, profile: dict[str, str] | None = None) -> Update:
    return Update("u1", "as-update", changes, profile if profile is not None else {"email": "a@example.com"}, {})


def test_per_computation_renders_one_identify_per_changed_key_as_engage_sends_them() -> None:
    calls = render(update(), SEGMENT, timestamp=NOW)
    assert [c["traits"] for c in calls] == [
        {"vip": True, "email": "a@example.com"},
        {"churn": False, "email": "a@example.com"},
        {"ltv": 2.5, "email": "a@example.com"},
    ]
    personas = [c["context"]["personas"] for c in calls]
    assert personas[0] == {
        "computation_class": "audience",
        "computation_id": "aud_given",
        "computation_key": "vip",
        "namespace": "spa_1",
        "space_id": "spa_1",
    }
    assert (
        personas[1]["computation_id"] == derived_id("audience", "churn") and personas[1]["computation_id"][:4] == "aud_"
    )
    assert personas[2]["computation_class"] == "trait" and personas[2]["computation_id"][:4] == "tra_"
    assert all(c["integrations"] == {"All": True} and c["userId"] == "u1" for c in calls)
    assert render(update(profile={}), SEGMENT, timestamp=NOW)[0]["traits"] == {"vip": True}  # no email, none added


def test_derived_ids_are_stable_and_shaped_like_engage_s() -> None:
    assert derived_id("audience", "vip") == derived_id("audience", "vip")
    assert derived_id("audience", "vip") != derived_id("audience", "vip2")
    assert len(derived_id("trait", "ltv")) == len("tra_") + 27


def test_call_ids_are_unique_stable_for_a_retry_and_whatever_order_the_changes_come_in() -> None:
    ids = {
        c["context"]["personas"]["computation_key"]: c["messageId"] for c in render(update(), SEGMENT, timestamp=NOW)
    }
    again = render(update(tuple(reversed(CHANGES))), SEGMENT, timestamp=NOW)
    assert {c["context"]["personas"]["computation_key"]: c["messageId"] for c in again} == ids
    assert len(set(ids.values())) == 3 and all(len(i) < 100 and i.startswith("as-") for i in ids.values())
    assert "as-update" not in ids.values()
    other = CallSpec("per_computation", "spa_1", {"All": True}, {}, "installation-b")
    assert not {c["messageId"] for c in render(update(), other, timestamp=NOW)} & set(ids.values())


def test_per_user_keeps_the_update_s_id_without_a_salt_and_salts_it_with_one() -> None:
    (plain,) = render(update(), CallSpec(integrations={"All": False, "ChartMogul": True}), timestamp=NOW)
    assert plain["messageId"] == "as-update" and plain["integrations"] == {"All": False, "ChartMogul": True}
    (salted,) = render(update(), CallSpec(integrations={"All": True}, salt="x"), timestamp=NOW)
    assert salted["messageId"] != "as-update" and len(salted["messageId"]) == 43


def test_a_call_spec_survives_the_run_record() -> None:
    assert CallSpec.from_json(SEGMENT.to_json(), CallSpec()) == SEGMENT
    before = spec_before_specs("spa_9")  # runs recorded before specs were kept: ChartMogul's calls, per user
    assert CallSpec.from_json(None, before) == before
    assert before.integrations == {"All": False, "ChartMogul": True} and before.mode == "per_user"
