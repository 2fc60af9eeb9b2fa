"""The ChartMogul-API-compatible receiver follows ChartMogul's documented API closely enough that the official
``chartmogul`` Python client's own requests succeed against it; and it holds ChartMogul's limits."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chartmogul
import httpx
import pytest

from sync.dev.chartmogul_account import Account, load_account
from sync.dev.chartmogul_api import ChartMogulApiReceiver

API_KEY = "cm_test_key"


@pytest.fixture
def api() -> Iterator[ChartMogulApiReceiver]:
    seeded = Account()
    acme = seeded.add_customer("cus_0001", "adam@acme.example", "Acme")
    seeded.add_contact(acme, "adam@acme.example", first_name="Adam")
    seeded.add_contact(acme, "eve@acme.example", first_name="Eve")
    seeded.add_customer("cus_0002", "bob@beta.example", "Beta")
    with ChartMogulApiReceiver(seeded, api_key=API_KEY, requests_per_second=None) as receiver:
        yield receiver


@pytest.fixture
def config(api: ChartMogulApiReceiver) -> Any:
    config = chartmogul.Config(API_KEY)
    config.uri = api.url  # the client posts to config.uri + path
    return config


def test_the_official_client_finds_customers_and_contacts(api: ChartMogulApiReceiver, config: Any) -> None:
    assert chartmogul.Ping.ping(config).get().data == "pong!"
    found = chartmogul.Customer.all(config, external_id="cus_0001").get()
    assert [c.external_id for c in found.entries] == ["cus_0001"] and found.has_more is False
    assert chartmogul.Customer.all(config, external_id="nobody").get().entries == []
    by_email = chartmogul.Customer.search(config, email="bob@beta.example").get()
    assert [c.name for c in by_email.entries] == ["Beta"]
    with pytest.raises(chartmogul.APIError, match="Customer not found"):
        chartmogul.Customer.search(config, email="nobody@example.com").get()
    acme = found.entries[0].uuid
    contacts = chartmogul.Customer.contacts(config, uuid=acme).get()
    assert sorted(c.email for c in contacts.entries) == ["adam@acme.example", "eve@acme.example"]
    eve = chartmogul.Contact.all(config, email="eve@acme.example").get().entries
    assert [c.first_name for c in eve] == ["Eve"]
    by_customer = chartmogul.Contact.all(config, customer_external_id="cus_0001", per_page=1).get()
    assert len(by_customer.entries) == 1 and by_customer.has_more is True
    rest = chartmogul.Contact.all(config, customer_external_id="cus_0001", cursor=by_customer.cursor).get()
    assert {c.email for c in (*by_customer.entries, *rest.entries)} == {"adam@acme.example", "eve@acme.example"}


def test_the_official_client_adds_and_updates_custom_attributes(api: ChartMogulApiReceiver, config: Any) -> None:
    acme = api.account.customer_by_external_id("cus_0001")
    added = chartmogul.CustomAttributes.add(
        config,
        uuid=acme,
        data={
            "custom": [
                {"type": "Boolean", "key": "vip", "value": True},
                {"type": "Integer", "key": "seats", "value": 8},
            ]
        },
    ).get()
    assert added.custom == {"vip": True, "seats": 8}
    updated = chartmogul.CustomAttributes.update(config, uuid=acme, data={"custom": {"vip": False}}).get()
    assert updated.custom == {"vip": False, "seats": 8}
    retrieved = chartmogul.Customer.retrieve(config, uuid=acme).get()
    assert retrieved.attributes.custom == {"vip": False, "seats": 8}
    with pytest.raises(chartmogul.APIError, match="does not exist"):  # update before add: 422, as documented
        chartmogul.CustomAttributes.update(config, uuid=acme, data={"custom": {"plan": "pro"}}).get()
    with pytest.raises(chartmogul.APIError, match="not a valid Integer"):
        chartmogul.CustomAttributes.update(config, uuid=acme, data={"custom": {"seats": "many"}}).get()
    eve = next(c for c in api.account.contacts.values() if c["email"] == "eve@acme.example")["uuid"]
    contact = chartmogul.Contact.modify(config, uuid=eve, data={"custom": [{"key": "vip", "value": True}]}).get()
    assert contact.custom == {"vip": True}


def test_a_wrong_key_is_answered_401_with_chartmogul_s_error_shape(api: ChartMogulApiReceiver) -> None:
    answer = httpx.get(f"{api.url}/ping", auth=("wrong", ""))
    assert answer.status_code == 401
    assert set(answer.json()) == {"code", "message", "param"}


def test_beyond_40_requests_a_second_it_answers_429_and_beyond_20_connections_503() -> None:
    with ChartMogulApiReceiver(Account(), api_key=API_KEY, max_connections=2) as api:
        with httpx.Client(auth=(API_KEY, "")) as client:
            statuses = [client.get(f"{api.url}/ping").status_code for _ in range(60)]
        assert statuses.count(429) >= 15 and statuses[:40].count(200) >= 39  # a burst of 40 goes through
        time.sleep(0.2)
        clients = [httpx.Client(auth=(API_KEY, "")) for _ in range(3)]
        try:
            answers = []
            for client in clients:  # three keep-alive connections at once: the third is one too many
                answers.append(client.get(f"{api.url}/customers").status_code)
                time.sleep(0.03)
            assert answers[:2] == [200, 200] and answers[2] == 503
            assert api.too_many_connections == 1
        finally:
            for client in clients:
                client.close()


def test_seeds_load_from_json_and_csv(tmp_path: Path) -> None:
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("external_id,email,name\nc1,a@x.example,A\nc2,b@x.example,B\n")
    seeded = load_account(csv_file)
    assert sorted(c["external_id"] for c in seeded.customers.values()) == ["c1", "c2"]
    assert len(seeded.contacts) == 2
    json_file = tmp_path / "customers.json"
    json_file.write_text('{"customers": [{"external_id": "c9", "contacts": [{"email": "z@x.example"}]}]}')
    assert [c["email"] for c in load_account(json_file).contacts.values()] == ["z@x.example"]
    json_file.write_text('{"customers": [{"email": "z@x.example"}]}')
    with pytest.raises(ValueError, match=r"customers\[0\] has no external_id"):
        load_account(json_file)


def test_the_receiver_command_serves_the_api_from_a_seed_file(tmp_path: Path) -> None:
    seed = tmp_path / "customers.csv"
    seed.write_text("external_id,email,name\nc1,a@x.example,A\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "sync", "receiver", "--mode", "chartmogul_api", "--port", str(port)]
    environment = {**os.environ, "CM_KEY": API_KEY}
    process = subprocess.Popen(
        [*command, "--customers", str(seed), "--api-key-env", "CM_KEY", "--out", str(tmp_path / "writes.jsonl")],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):  # bounded: about 10 s for the process to start listening
            try:
                answer = httpx.get(f"{base}/customers", params={"external_id": "c1"}, auth=(API_KEY, ""))
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert answer.status_code == 200 and answer.json()["entries"][0]["email"] == "a@x.example"
        uuid = answer.json()["entries"][0]["uuid"]
        custom = {"custom": [{"type": "Boolean", "key": "vip", "value": True}]}
        assert httpx.post(f"{base}/customers/{uuid}/attributes/custom", json=custom, auth=(API_KEY, "")).is_success
        assert httpx.get(f"{base}/ping", auth=("another", "")).status_code == 401
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "1 customers, 1 contacts" in stderr and API_KEY not in stderr
    written = [json.loads(line) for line in (tmp_path / "writes.jsonl").read_text().splitlines()]
    assert [(w["method"], w["status"], w["body"]) for w in written] == [("POST", 200, custom)]
    wrong = subprocess.run([*command, "--mode", "segment", "--customers", str(seed)], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--mode chartmogul_api" in wrong.stderr
