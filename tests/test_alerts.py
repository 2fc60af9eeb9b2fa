"""Alerts reach loopback receivers once when a condition begins and once on recovery, never once per run."""

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from sync.config import NotifyConfig
from sync.dev.receiver import Receiver
from sync.run.alerts import Alerts, RunFacts, conditions
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config

USERS = [f"u{i}" for i in range(200)]


@pytest.fixture
def hooks() -> Iterator[tuple[Receiver, Receiver]]:
    with Receiver() as generic, Receiver() as slack:
        yield generic, slack


def config_with_alerts(warehouse: Warehouse, url: str, hooks: tuple[Receiver, Receiver], **target: Any) -> Any:
    generic, slack = hooks
    raw = job_dict(warehouse, url, audiences=[warehouse.audience("VIP", "vip")])
    config = make_config("sqlite://", [raw])
    notify = [
        NotifyConfig.model_validate(
            {"type": "webhook", "url": generic.url.replace("/webhook", "/alerts/t0ken"), **target}
        ),
        NotifyConfig.model_validate(
            {"type": "slack", "url": slack.url.replace("/webhook", "/services/T0/B0/s3cret"), **target}
        ),
    ]
    return config.model_copy(update={"notify": tuple(notify)})


def events(receiver: Receiver) -> list[tuple[str, tuple[str, ...]]]:
    return [(r.body["event"], tuple(r.body["conditions"])) for r in receiver.records]


def test_a_blocked_job_alerts_once_escalates_once_and_recovers_once(
    store: Store,
    warehouse: Warehouse,
    receiver: Receiver,
    hooks: tuple[Receiver, Receiver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    generic, slack = hooks
    config = config_with_alerts(warehouse, receiver.url, hooks)
    job = config.jobs[0]
    runner = Runner(store, alerts=Alerts(config.notify))
    warehouse.set_members("vip", USERS)
    with caplog.at_level(logging.DEBUG, logger="sync"):
        assert runner.run(job).status == "succeeded"
        assert events(generic) == []
        warehouse.set_members("vip", USERS[:10])
        statuses = [runner.run(job).status for _ in range(4)]
        assert statuses == ["blocked"] * 4
        assert events(generic) == [("alert", ("blocked",)), ("alert", ("blocked", "failing"))]
        warehouse.set_members("vip", USERS[:150])  # a change the guard lets through
        assert runner.run(job).status == "succeeded"
        assert runner.run(job).status == "succeeded"
    assert events(generic) == [("alert", ("blocked",)), ("alert", ("blocked", "failing")), ("recovered", ())]
    assert "mass-change guard" in generic.records[0].body["error"]
    assert [set(r.body) for r in slack.records] == [{"text"}] * 3
    assert "recovered" in slack.records[-1].body["text"] and "blocked" in slack.records[0].body["text"]
    assert "t0ken" not in caplog.text and "s3cret" not in caplog.text
    assert "notification sent" in caplog.text


def test_a_high_failed_share_and_an_unreachable_destination_alert(
    store: Store,
    warehouse: Warehouse,
    faulty_receiver: Receiver,
    hooks: tuple[Receiver, Receiver],
    sleep: RecordingSleep,
) -> None:
    from sync.destinations.breaker import Breaker
    from tests.test_unattended import closed_port

    generic, _ = hooks
    warehouse.set_members("vip", USERS[:20])
    faulty_receiver.faults.respond = lambda body: 422 if body["user_id"] in {"u1", "u2", "u3"} else None
    config = config_with_alerts(warehouse, faulty_receiver.url, hooks, failed_share=0.1)
    runner = Runner(store, sleep=sleep, alerts=Alerts(config.notify), breaker=lambda: Breaker(10, 0.0))
    assert runner.run(config.jobs[0]).status == "partial"  # 3 of 20 rejected: 15 %
    assert events(generic) == [("alert", ("failed_share",))]
    dead = config_with_alerts(warehouse, f"http://127.0.0.1:{closed_port()}/hook", hooks, failed_share=0.1)
    warehouse.set_members("vip", USERS[:40])
    assert runner.run(dead.jobs[0]).status == "failed"
    assert events(generic)[-1] == ("alert", ("unreachable",))


def test_a_user_count_far_from_recent_runs_alerts() -> None:
    target = NotifyConfig.model_validate({"type": "webhook", "url": "https://alerts.example.com/x"})
    facts = RunFacts("j", 9, "succeeded", None, False, 400, 10, 0, 0, [1000, 1010, 990])
    assert conditions(facts, target) == ["user_count_change"]
    calm = RunFacts("j", 9, "succeeded", None, False, 980, 10, 0, 0, [1000, 1010, 990])
    assert conditions(calm, target) == []
    only_failed = NotifyConfig.model_validate({"type": "slack", "url": "https://hooks.example.com/x", "on": ["failed"]})
    assert conditions(facts, only_failed) == []


def test_a_notification_target_that_fails_never_fails_the_run(
    store: Store, warehouse: Warehouse, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_unattended import closed_port

    raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    config = make_config("sqlite://", [raw])
    target = NotifyConfig.model_validate({"type": "webhook", "url": f"http://127.0.0.1:{closed_port()}/alerts"})
    warehouse.set_members("vip", USERS)
    runner = Runner(store, alerts=Alerts([target]))
    runner.run(config.jobs[0])
    warehouse.set_members("vip", [])
    with caplog.at_level(logging.WARNING, logger="sync"):
        assert runner.run(config.jobs[0]).status == "blocked"
    assert "could not send a notification" in caplog.text
