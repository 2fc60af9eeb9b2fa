import json
from typing import Any

import pytest

from sync.destinations.chartmogul import MAX_BODY_BYTES, encode_body, send_contact_body
from sync.errors import PermanentDeliveryError


def call(traits: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "identify",
        "messageId": "as-1",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sentAt": "2026-11-22T06:00:01.000Z",
        "userId": "u1",
        "traits": {"vip": True, **(traits or {})},
        "context": {"personas": {"computations": [{"computation_class": "audience", "computation_key": "vip"}]}},
    }
    base.update(top)
    return base


def test_every_send_contact_field_is_mapped() -> None:
    body = send_contact_body(
        call(
            {
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
            anonymousId="anon-1",
        )
    )
    assert body == {
        "type": "Send Contact",
        "message_id": "as-1",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sent_at": "2026-11-22T06:00:01.000Z",
        "user_id": "u1",
        "anonymous_id": "anon-1",
        "email": "a@x.io",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "name": "Ada L",
        "title": "CTO",
        "phone": "+1",
        "linked_in": "https://li/ada",
        "twitter": "@ada",
        "company": {"id": "c1", "name": "Analytical"},
        "custom_attributes": {"vip": True},
    }


def test_absent_values_are_left_out_and_a_company_without_id_is_dropped() -> None:
    body = send_contact_body(call({"email": None, "company": {"name": "No Id Ltd"}}))
    assert body == {
        "type": "Send Contact",
        "message_id": "as-1",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sent_at": "2026-11-22T06:00:01.000Z",
        "user_id": "u1",
        "custom_attributes": {"vip": True},
    }


def test_custom_attributes_carry_only_the_computations_of_the_update() -> None:
    message = call({"total_revenue": 9.5})
    message["context"]["personas"]["computations"].append(
        {"computation_class": "trait", "computation_key": "total_revenue"}
    )
    assert send_contact_body(message)["custom_attributes"] == {"vip": True, "total_revenue": 9.5}
    assert send_contact_body(call({"vip": False}))["custom_attributes"] == {"vip": False}


def test_enriched_traits_travel_as_custom_attributes_beside_the_computations() -> None:
    message = call({"plan": "gold", "country": "DE", "email": "a@example.com", "firstName": "Ada"})
    body = send_contact_body(message)
    assert body["custom_attributes"] == {"vip": True, "plan": "gold", "country": "DE"}
    assert body["email"] == "a@example.com" and body["first_name"] == "Ada"  # standard fields stay fields


def test_a_body_is_compact_json() -> None:
    assert json.loads(encode_body(call())) == send_contact_body(call())
    unicode = call({"email": "zoë@example.com", "vip": True})
    assert (
        encode_body(unicode)
        == json.dumps(send_contact_body(unicode), separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_values_beyond_64_bits_are_sent_exactly() -> None:
    message = call({"total_revenue": 2**70})
    message["context"]["personas"]["computations"].append(
        {"computation_class": "trait", "computation_key": "total_revenue"}
    )
    assert json.loads(encode_body(message))["custom_attributes"]["total_revenue"] == 2**70


def test_a_call_without_any_identifier_is_rejected_before_sending() -> None:
    with pytest.raises(PermanentDeliveryError, match="user_id or anonymous_id must be present"):
        encode_body(call(userId=None))


def test_a_call_that_carries_nothing_but_identifiers_is_rejected() -> None:
    message = call()
    message["context"]["personas"]["computations"] = []
    message["traits"] = {}
    with pytest.raises(PermanentDeliveryError, match="carries nothing but identifiers"):
        encode_body(message)


def test_a_body_over_32_kb_is_rejected_with_its_size() -> None:
    with pytest.raises(PermanentDeliveryError, match=f"over the {MAX_BODY_BYTES}-byte limit"):
        encode_body(call({"vip": "x" * MAX_BODY_BYTES}))


def test_first_and_last_name_are_read_as_the_published_action_reads_them_then_as_the_spec_names_them() -> None:
    both = send_contact_body(call({"first_name": "Ada", "firstName": "A.", "last_name": "Lovelace"}))
    assert (both["first_name"], both["last_name"]) == ("Ada", "Lovelace")  # the action's default: traits.first_name
    spec = send_contact_body(call({"firstName": "Ada", "lastName": "Lovelace"}))
    assert (spec["first_name"], spec["last_name"]) == ("Ada", "Lovelace")  # Segment's spec names, not dropped


@pytest.mark.parametrize(
    ("email", "sent"),
    [
        ("ada@example.com", True),
        ("Ada.Lovelace+vip@mail.example.co.uk", True),
        ("zoë@example.com", True),
        ("not-an-email", False),
        ("ada@localhost", False),
        ("ada @example.com", False),
        ("@example.com", False),
        ("ada@@example.com", False),
    ],
)
def test_an_email_that_is_not_an_address_is_left_out_and_the_rest_sent(email: str, sent: bool) -> None:
    body = send_contact_body(call({"email": email}))
    assert ("email" in body) is sent and body["custom_attributes"] == {"vip": True}


@pytest.mark.parametrize(
    ("linked_in", "sent"),
    [
        ("https://www.linkedin.com/in/ada", True),
        ("http://linkedin.com/in/ada", True),
        ("linkedin.com/in/ada", False),
        ("ada lovelace", False),
        ("https://linkedin.com/in/ada lovelace", False),
    ],
)
def test_a_linked_in_that_is_not_a_uri_is_left_out_and_the_rest_sent(linked_in: str, sent: bool) -> None:
    body = send_contact_body(call({"linkedIn": linked_in, "email": "ada@example.com"}))
    assert ("linked_in" in body) is sent and body["email"] == "ada@example.com"


def group(traits: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "group",
        "messageId": "as-2",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sentAt": "2026-11-22T06:00:01.000Z",
        "userId": "owner-1",
        "groupId": "g1",
        "traits": {"enterprise": True, **(traits or {})},
        "context": {"personas": {"computations": [{"computation_class": "audience", "computation_key": "enterprise"}]}},
    }
    base.update(top)
    return base


def test_every_send_customer_field_is_mapped_as_the_published_action_maps_it() -> None:
    traits = {
        "name": "Acme",
        "description": "Rockets",
        "email": "billing@acme.example",
        "website": "https://acme.example",
        "createdAt": "2024-03-01T00:00:00Z",
        "address": {"street": "1 Main St", "city": "Berlin", "state": "BE", "postalCode": "10115", "country": "DE"},
    }
    assert json.loads(encode_body(group(traits))) == {
        "type": "Send Customer",  # default of the action's `type` field
        "message_id": "as-2",  # $.messageId
        "timestamp": "2026-11-22T06:00:00.000Z",  # $.timestamp
        "sent_at": "2026-11-22T06:00:01.000Z",  # $.sentAt
        "user_id": "owner-1",  # $.userId, required
        "group_id": "g1",  # $.groupId, required
        "name": "Acme",  # $.traits.name
        "description": "Rockets",  # $.traits.description
        "email": "billing@acme.example",  # $.traits.email (format email)
        "website": "https://acme.example",  # $.traits.website (format uri-reference)
        "created_at": "2024-03-01T00:00:00Z",  # $.traits.createdAt (datetime)
        "address": {  # $.traits.address.{street, city, state, postalCode → postal_code, country}
            "street": "1 Main St",
            "city": "Berlin",
            "state": "BE",
            "postal_code": "10115",
            "country": "DE",
        },
        "custom_attributes": {"enterprise": True},  # audience-sync's addition, as on Send Contact
    }


# Where the published action refuses or misbehaves, and what audience-sync does instead (README).
@pytest.mark.parametrize(
    ("call", "upstream", "ours"),
    [
        (group(), 'sends "address": {} when the group has no address', {"address": None}),
        (group({"email": "not-an-address"}), "refuses the event (email format)", {"email": None}),
        (group({"website": "acme dot com"}), "refuses the event (uri-reference format)", {"website": None}),
        (group({"createdAt": "last tuesday"}), "refuses the event (datetime)", {"created_at": None}),
        (group({"address": {"city": "Berlin"}}), "sends the parts it has", {"address": {"city": "Berlin"}}),
    ],
)
def test_send_customer_where_the_published_action_refuses_or_misbehaves(
    call: dict[str, Any], upstream: str, ours: dict[str, Any]
) -> None:
    body = json.loads(encode_body(call))
    for field, expected in ours.items():
        assert body.get(field) == expected, upstream
    assert body["group_id"] == "g1" and body["custom_attributes"] == {"enterprise": True}


def test_send_customer_without_a_user_or_group_is_refused_before_sending_as_upstream_refuses_it() -> None:
    without_user = group()
    del without_user["userId"]
    with pytest.raises(PermanentDeliveryError, match="needs a user_id"):
        encode_body(without_user)
    with pytest.raises(PermanentDeliveryError, match="needs a group_id"):
        encode_body(group(groupId=""))
