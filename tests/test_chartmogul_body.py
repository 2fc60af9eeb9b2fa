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
