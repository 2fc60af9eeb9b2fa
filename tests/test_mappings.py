"""Mappings (Segment's "build your own mappings"): a ChartMogul webhook's body fields read from other paths of
the call, or set to literals; what is not mapped keeps the published action's defaults."""

import json
from typing import Any

import pytest

from sync.config import MappingsConfig
from sync.destinations.chartmogul import encode_body
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config


def identify(traits: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": "as-1",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sentAt": "2026-11-22T06:00:01.000Z",
        "userId": "u1",
        "traits": {"vip": True, **traits},
        "context": {"personas": {"computations": [{"computation_class": "audience", "computation_key": "vip"}]}},
    }


def test_a_mapped_field_reads_its_path_or_literal_and_the_rest_keep_their_defaults() -> None:
    mappings = MappingsConfig(send_contact={"first_name": "$.traits.given_name", "title": "Customer", "name": "$.nope"})
    call = identify({"given_name": "Ada", "firstName": "Augusta", "email": "ada@example.com", "name": "A. L."})
    body = json.loads(encode_body(call, mappings))
    assert body["first_name"] == "Ada"  # the mapped path, not the default's firstName
    assert body["title"] == "Customer"  # a literal
    assert "name" not in body  # mapped to a path that leads nowhere: left out, not the default
    assert body["email"] == "ada@example.com" and body["user_id"] == "u1"  # defaults
    bad = MappingsConfig(send_contact={"email": "$.traits.work_email"})
    assert "email" not in json.loads(encode_body(identify({"work_email": "not-an-address"}), bad))  # still checked


def test_send_customer_mappings_reach_nested_fields() -> None:
    mappings = MappingsConfig(send_customer={"address.country": "$.traits.hq_country", "website": "$.traits.domain"})
    call = {
        "type": "group",
        "messageId": "as-2",
        "timestamp": "t",
        "sentAt": "s",
        "userId": "owner",
        "groupId": "g1",
        "traits": {"hq_country": "DE", "domain": "acme.example", "enterprise": True},
        "context": {"personas": {"computations": [{"computation_class": "audience", "computation_key": "enterprise"}]}},
    }
    body = json.loads(encode_body(call, mappings))
    assert body["address"] == {"country": "DE"} and body["website"] == "acme.example"


def test_mappings_are_checked_with_every_problem_named(warehouse: Warehouse) -> None:
    raw = job_dict(warehouse, "https://hooks.example.com/x", audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"]["mappings"] = {
        "send_contact": {"nickname": "$.traits.nick", "title": "$traits", **{f"x{i}": "$.a" for i in range(50)}}
    }
    with pytest.raises(ConfigError) as error:
        make_config("sqlite://", [raw])
    (problem,) = error.value.problems
    assert "send_contact.nickname: not a field of the action" in problem
    assert "send_contact.title: '$traits' is not a path like $.traits.first_name" in problem
    assert "52 mappings, over the 50 a destination instance may have" in problem


def test_a_run_sends_the_mapped_bodies(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, receiver: Receiver
) -> None:
    warehouse.set_profiles([{"user_id": "u1", "email": "u1@example.com", "first_name": "Ada"}])
    warehouse.set_members("vip", ["u1"])
    raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"]["mappings"] = {"send_contact": {"title": "Member", "first_name": "$.traits.email"}}
    job = make_config("sqlite://", [raw]).jobs[0]
    assert Runner(store, sleep=sleep).run(job).delivered == 1
    (body,) = receiver.accepted()
    assert (body["title"], body["first_name"], body["email"]) == ("Member", "u1@example.com", "u1@example.com")
