"""Rendering an update as the calls a destination takes."""

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from sync.calls import CallSpec, Mode, call_id, call_ids, render
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


def test_track_events_are_engage_s_audience_entered_exited_and_trait_computed() -> None:
    spec = replace(SEGMENT, events="track")
    calls = render(update(), spec, timestamp=NOW)
    assert [(c["type"], c["event"]) for c in calls] == [
        ("track", "Audience Entered"),
        ("track", "Audience Exited"),
        ("track", "Trait Computed"),
    ]
    assert [c["properties"] for c in calls] == [
        {"audience_key": "vip", "vip": True},
        {"audience_key": "churn", "churn": False},
        {"trait_key": "ltv", "ltv": 2.5},
    ]
    assert all(c["context"]["traits"] == {"email": "a@example.com"} for c in calls)
    assert calls[0]["context"]["personas"]["computation_id"] == "aud_given"
    assert "traits" not in render(update(profile={}), spec, timestamp=NOW)[0]["context"]  # no email, none added
    renamed = replace(spec, event_names={"audience_entered": "Joined VIP", "trait_computed": "LTV Updated"})
    assert [c["event"] for c in render(update(), renamed, timestamp=NOW)] == [
        "Joined VIP",
        "Audience Exited",
        "LTV Updated",
    ]


def test_both_sends_identify_calls_then_track_events_with_ids_of_their_own() -> None:
    modes: tuple[tuple[Mode, int], ...] = (("per_computation", 3), ("per_user", 1))
    for mode, identifies in modes:
        calls = render(update(), replace(SEGMENT, mode=mode, events="both"), timestamp=NOW)
        assert [c["type"] for c in calls] == ["identify"] * identifies + ["track"] * 3
        ids = [c["messageId"] for c in calls]
        assert len(set(ids)) == len(ids) and all(len(i) < 100 for i in ids)
        again = [c["messageId"] for c in render(update(), replace(SEGMENT, mode=mode, events="both"), timestamp=NOW)]
        assert again == ids  # a retry sends the same ids
    assert CallSpec.from_json(replace(SEGMENT, events="both").to_json(), CallSpec()).events == "both"


def test_call_ids_are_blake2b_of_the_update_id_keyed_with_the_installation() -> None:
    # A retry after an upgrade must carry the ids the first attempt had: the scheme the README gives, pinned.
    def keyed(size: int) -> str:
        return hashlib.blake2b(b"as-update", digest_size=size, key=b"installation-1").hexdigest()

    assert call_ids("installation-1", "as-update", ["vip", "ltv", "churn"]) == [
        f"as-{keyed(18)}-2",
        f"as-{keyed(18)}-1",
        f"as-{keyed(18)}-0",
    ]
    assert call_id("installation-1", "as-update") == f"as-{keyed(20)}"
    assert call_ids("installation-2", "as-update", ["vip"]) != call_ids("installation-1", "as-update", ["vip"])
