"""The Segment-compatible batch destination, end to end against the loopback receiver in Segment mode."""

import base64
import json
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sync.audit.queries import run_calls, run_messages
from sync.calls.identify import derived_id
from sync.clock import iso
from sync.config import SEGMENT_MAX_CALLS, SEGMENT_MAX_REQUEST_BYTES, SegmentConfig
from sync.destinations.base import Outgoing
from sync.destinations.segment import SegmentBatch
from sync.dev.receiver import Action, Faults, Receiver
from sync.errors import ConfigError
from sync.run.delivery import WINDOW_PER_CONNECTION
from sync.run.runner import Runner, RunOptions
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, kill_run_when, make_config

WRITE_KEY = "wk_live_5ecret_segment_key"
USERS = [f"u{i:03d}" for i in range(60)]


@pytest.fixture
def segment() -> Iterator[Receiver]:
    with Receiver(mode="segment", write_key=WRITE_KEY) as receiver:
        yield receiver


def segment_job(warehouse: Warehouse, receiver: Receiver, **destination: Any) -> Any:
    raw = job_dict(
        warehouse,
        receiver.url,
        audiences=[warehouse.audience("VIP", "vip", id="aud_explicit1"), warehouse.audience("Churn", "churn")],
        traits=[warehouse.trait("LTV", "ltv")],
    )
    raw["destination"] = {
        "type": "segment",
        "write_key": WRITE_KEY,
        "endpoint": receiver.url,
        "backoff_initial": "10ms",
        "backoff_max": "50ms",
        "requests_per_second": 2000,
        **destination,
    }
    return make_config("sqlite://", [raw]).jobs[0]


def seed(warehouse: Warehouse, users: list[str] = USERS) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in users])
    warehouse.set_members("vip", users[: len(users) // 2])
    warehouse.set_members("churn", users[::3])
    warehouse.set_trait("ltv", {u: float(i) for i, u in enumerate(users)})


def calls_by_user(receiver: Receiver) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for call in receiver.accepted_calls():
        found[call["userId"]].append(call)
    return found


def test_an_initial_sync_sends_engage_s_identify_per_computation(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse)
    job = segment_job(warehouse, segment)
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "succeeded" and report.updates == report.delivered == len(USERS)
    calls = calls_by_user(segment)
    assert set(calls) == set(USERS)
    expected = Counter({"ltv": len(USERS), "vip": len(USERS) // 2, "churn": len(USERS[::3])})
    assert Counter(c["context"]["personas"]["computation_key"] for cs in calls.values() for c in cs) == expected
    vip = next(c for c in calls["u000"] if c["context"]["personas"]["computation_key"] == "vip")
    assert vip["type"] == "identify" and vip["traits"] == {"vip": True, "email": "u000@example.com"}
    assert vip["context"]["personas"] == {
        "computation_class": "audience",
        "computation_id": "aud_explicit1",
        "computation_key": "vip",
        "namespace": "spa_test",
        "space_id": "spa_test",
    }
    assert vip["integrations"] == {"All": True}
    churn = next(c for c in calls["u000"] if c["context"]["personas"]["computation_key"] == "churn")
    assert churn["context"]["personas"]["computation_id"] == derived_id("audience", "churn")
    ltv = next(c for c in calls["u001"] if c["context"]["personas"]["computation_key"] == "ltv")
    assert ltv["traits"] == {"ltv": 1.0, "email": "u001@example.com"}
    assert ltv["context"]["personas"]["computation_class"] == "trait"
    assert ltv["context"]["personas"]["computation_id"].startswith("tra_")
    ids = [c["messageId"] for cs in calls.values() for c in cs]
    assert len(set(ids)) == len(ids) and all(len(i) < 100 for i in ids)
    planned = {row.message_id for row in store.updates_of(report.run_id)}
    assert not planned & set(ids)  # salted with the installation: not the update's own id
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert {r.authorization for r in segment.records} == {f"Basic {token}"}
    assert len(segment.records) == 1  # 140 small calls: one batch
    # `messages RUN_ID` shows the calls exactly as sent
    shown = sorted(json.dumps(c, sort_keys=True) for c in run_messages(store, report.run_id))
    assert shown == sorted(json.dumps(c, sort_keys=True) for c in segment.accepted_calls())


def test_message_ids_differ_between_installations_and_stay_the_same_on_retry(
    tmp_path: Path, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse, USERS[:5])
    job = segment_job(warehouse, segment)
    ids = []
    for name in ("staging", "production"):
        with closing(Store.open(f"sqlite:///{tmp_path / name}.db")) as store:
            assert Runner(store, sleep=sleep).run(job).status == "succeeded"
        ids.append({c["messageId"] for c in segment.accepted_calls()})
        segment.records.clear()
    assert ids[0] and not ids[0] & ids[1]
    # A retry of the same updates (nothing acknowledged) carries the same ids.
    segment.faults.respond = lambda body: 500
    with closing(Store.open(f"sqlite:///{tmp_path / 'retry'}.db")) as store:
        runner = Runner(store, sleep=sleep)
        job = segment_job(warehouse, segment, max_attempts=1)
        assert runner.run(job).status == "failed"  # nothing delivered
        first = [c["messageId"] for r in segment.records for c in r.body["batch"]]
        segment.faults.respond = None
        assert runner.run(job).status == "succeeded"
    assert {c["messageId"] for c in segment.accepted_calls()} == set(first)


def test_incremental_runs_send_only_what_changed_exits_new_audiences_full_and_dry_runs(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    job = segment_job(warehouse, segment)
    assert runner.run(job).status == "succeeded"
    segment.records.clear()
    assert runner.run(job).updates == 0 and segment.records == []
    warehouse.set_members("vip", USERS[: len(USERS) // 2 - 3])  # three exits
    report = runner.run(job)
    assert report.exited == 3 and report.delivered == 3
    exits = segment.accepted_calls()
    assert sorted(c["userId"] for c in exits) == USERS[len(USERS) // 2 - 3 : len(USERS) // 2]
    assert all(c["traits"]["vip"] is False for c in exits)
    segment.records.clear()
    dry = runner.run(job, RunOptions(full=True, dry_run=True))
    assert dry.status == "planned" and dry.updates == len(USERS) and segment.records == []
    assert len(list(run_calls(store, dry.run_id))) > len(USERS)  # what a full run would send
    # a new audience: its own initial sync, nothing else
    warehouse.set_members("beta", USERS[:4])
    raw = job.model_dump(mode="python")
    raw["audiences"] = [*raw["audiences"], warehouse.audience("Beta", "beta")]
    raw["destination"]["write_key"] = WRITE_KEY
    job = type(job).model_validate(raw)
    report = runner.run(job)
    assert report.entered == 4 and report.delivered == 4
    assert {c["context"]["personas"]["computation_key"] for c in segment.accepted_calls()} == {"beta"}
    segment.records.clear()
    full = runner.run(job, RunOptions(full=True))
    assert full.status == "succeeded" and full.delivered == len(USERS)
    assert len(segment.accepted_calls()) == len(USERS) + len(USERS) // 2 - 3 + len(USERS[::3]) + 4


def test_a_large_initial_sync_goes_in_batches_segment_takes(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    users = [f"u{i:05d}" for i in range(SEGMENT_MAX_CALLS + 300)]
    warehouse.set_profiles([{"user_id": u} for u in users])
    warehouse.set_members("vip", users)
    raw = job_dict(warehouse, segment.url, audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"] = {"type": "segment", "write_key": WRITE_KEY, "endpoint": segment.url}
    report = Runner(store, sleep=sleep).run(make_config("sqlite://", [raw]).jobs[0])
    assert report.status == "succeeded" and report.delivered == len(users)
    sizes = [len(r.body["batch"]) for r in segment.records]
    assert len(sizes) >= 2 and all(r.status == 200 for r in segment.records)  # none refused as too large
    assert sum(sizes) == len(users) and max(sizes) <= SEGMENT_MAX_CALLS


def test_batches_are_cut_at_the_call_limit() -> None:
    settings = SegmentConfig.model_validate({"type": "segment", "write_key": WRITE_KEY})
    messages = [Outgoing(f"u{i}", f"m{i}", ({"type": "identify", "userId": f"u{i}"},)) for i in range(6000)]
    requests = list(SegmentBatch(settings).requests(iter(messages), lambda: datetime(2026, 11, 30, tzinfo=UTC)))
    assert [len(r.messages) for r in requests] == [SEGMENT_MAX_CALLS, SEGMENT_MAX_CALLS, 1000]
    assert [len(json.loads(r.body)["batch"]) for r in requests] == [SEGMENT_MAX_CALLS, SEGMENT_MAX_CALLS, 1000]


def test_an_update_whose_calls_do_not_fit_one_batch_is_refused_before_sending() -> None:
    settings = SegmentConfig.model_validate({"type": "segment", "write_key": WRITE_KEY})
    calls = tuple({"type": "identify", "userId": "u1", "traits": {f"k{i}": True}} for i in range(SEGMENT_MAX_CALLS + 1))
    small = Outgoing("u2", "m2", ({"type": "identify", "userId": "u2"},))
    requests = list(
        SegmentBatch(settings).requests(iter([Outgoing("u1", "m1", calls), small]), lambda: datetime.now(UTC))
    )
    assert requests[0].refused is not None and "do not fit one batch" in requests[0].refused
    assert requests[1].messages == (small,) and requests[1].refused is None


def test_batches_are_cut_at_the_byte_limit_and_an_update_s_calls_stay_together() -> None:
    settings = SegmentConfig.model_validate({"type": "segment", "write_key": WRITE_KEY})
    padding = "x" * 3000
    messages = [
        Outgoing(
            f"u{i}",
            f"m{i}",
            tuple(
                {"type": "identify", "userId": f"u{i}", "messageId": f"m{i}-{k}", "traits": {k: padding}}
                for k in ("a", "b", "c")
            ),
        )
        for i in range(200)
    ]
    requests = list(SegmentBatch(settings).requests(iter(messages), lambda: datetime(2026, 11, 30, tzinfo=UTC)))
    assert len(requests) >= 2 and all(r.refused is None for r in requests)
    assert all(len(r.body) <= SEGMENT_MAX_REQUEST_BYTES for r in requests)
    assert [m for r in requests for m in r.messages] == messages  # every update once, in order
    for request in requests:
        body = json.loads(request.body)
        assert len(body["batch"]) == 3 * len(request.messages)  # all of an update's calls in its batch
        assert {c["sentAt"] for c in body["batch"]} == {iso(datetime(2026, 11, 30, tzinfo=UTC))}
    # the largest that fit: one more update would have gone over
    first = requests[0]
    assert len(first.body) + 3 * (len(json.dumps(json.loads(first.body)["batch"][0])) + 1) > SEGMENT_MAX_REQUEST_BYTES


def test_a_call_over_32_kb_is_refused_alone_and_the_rest_sent(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse, USERS[:10])
    warehouse.set_trait("ltv", {u: ("y" * 40_000 if u == "u003" else 1.0) for u in USERS[:10]})
    report = Runner(store, sleep=sleep).run(segment_job(warehouse, segment))
    assert report.status == "partial" and report.failed == 1 and report.delivered == 9
    (failed,) = [r for r in store.updates_of(report.run_id) if r.status == "failed"]
    assert failed.user_id == "u003" and "over Segment's 32768-byte limit" in (failed.error or "")
    assert all(r.status == 200 for r in segment.records)


def test_a_400_for_one_batch_does_not_lose_the_others(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    users = [f"u{i:05d}" for i in range(SEGMENT_MAX_CALLS * 2)]
    warehouse.set_profiles([{"user_id": u} for u in users])
    warehouse.set_members("vip", users)
    raw = job_dict(warehouse, segment.url, audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"] = {"type": "segment", "write_key": WRITE_KEY, "endpoint": segment.url, "max_connections": 1}
    job = make_config("sqlite://", [raw]).jobs[0]
    refused: set[str] = set()

    def respond(body: Mapping[str, Any]) -> Action:
        if not refused:
            refused.update(c["userId"] for c in body["batch"])
            return 400
        return None

    segment.faults.respond = respond
    runner = Runner(store, sleep=sleep)
    report = runner.run(job)
    assert report.status == "partial" and report.failed == len(refused) > 0
    assert report.delivered == len(users) - len(refused)
    assert all(store.acknowledged("contacts", u) is None for u in refused)
    assert all(store.acknowledged("contacts", u) is not None for u in users if u not in refused)
    failed = {r.user_id: r for r in store.updates_of(report.run_id) if r.status == "failed"}
    assert set(failed) == refused and all(r.http_status == 400 for r in failed.values())
    again = runner.run(job)  # the next run sends the refused ones again
    assert again.status == "succeeded" and again.delivered == len(refused)


def test_429_with_retry_after_is_honoured(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse)
    seen = [0]

    def respond(body: Mapping[str, Any]) -> Action:
        seen[0] += 1
        return (429, {"Retry-After": "3"}) if seen[0] == 1 else None

    segment.faults.respond = respond
    report = Runner(store, sleep=sleep).run(segment_job(warehouse, segment))
    assert report.status == "succeeded" and 3.0 in sleep.delays
    assert [r.status for r in segment.records] == [429, 200]
    assert segment.records[0].body == segment.records[1].body  # the same batch, the same messageIds


def test_a_wrong_write_key_stops_the_run_and_never_shows_the_key(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    seed(warehouse)
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    # An error page that echoes the credentials it was given.
    faults = Faults(respond=lambda body: 401, error_body=f"bad key {WRITE_KEY} / Basic {token}")
    with (
        Receiver(mode="segment", faults=faults) as echoing,
        caplog.at_level(logging.DEBUG, logger="sync"),
    ):
        users = [f"u{i:05d}" for i in range(SEGMENT_MAX_CALLS * 4)]
        warehouse.set_profiles([{"user_id": u} for u in users])
        warehouse.set_members("vip", users)
        raw = job_dict(warehouse, echoing.url, audiences=[warehouse.audience("VIP", "vip")])
        raw["destination"] = {"type": "segment", "write_key": WRITE_KEY, "endpoint": echoing.url, "max_connections": 1}
        report = Runner(store, sleep=sleep).run(make_config("sqlite://", [raw]).jobs[0])
    assert report.status == "failed"
    assert f"refused the first 3 requests ({report.failed} updates)" in (report.error or "")  # batches, not 3
    assert len(echoing.records) == 3  # stopped after three refusals, not one per batch
    rows = list(store.updates_of(report.run_id))
    texts = [report.error or "", caplog.text, *(r.error or "" for r in rows)]
    for text in texts:
        assert WRITE_KEY not in text and token not in text
    assert any("<redacted>" in (r.error or "") for r in rows)


def test_a_process_killed_mid_run_loses_nothing_and_resends_with_the_first_message_ids(
    tmp_path: Path, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    users = [f"u{i:05d}" for i in range(SEGMENT_MAX_CALLS * 4)]
    warehouse.set_profiles([{"user_id": u} for u in users])
    warehouse.set_members("vip", users)
    state, config = tmp_path / "state.db", tmp_path / "jobs.yaml"
    reached, answered = threading.Event(), [0]

    def count(body: Mapping[str, Any]) -> Action:
        answered[0] += 1
        if answered[0] >= 2:
            reached.set()
        return None

    with Receiver(mode="segment", write_key=WRITE_KEY, faults=Faults(respond=count, delay=0.3)) as segment:
        destination = {"type": "segment", "write_key": "${KEY}", "endpoint": segment.url, "max_connections": 1}
        job: dict[str, Any] = {
            "name": "contacts",
            "source": {"url": warehouse.url},
            "audiences": [warehouse.audience("VIP", "vip")],
        }
        config.write_text(
            yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [{**job, "destination": destination}]})
        )
        kill_run_when(config, reached, {"KEY": WRITE_KEY})
        first = {c["userId"]: c["messageId"] for r in segment.records for c in r.body.get("batch", [])}
        segment.faults.delay = 0.0
        store = Store.open(f"sqlite:///{state}")
        try:
            raw = {**job, "destination": {**destination, "write_key": WRITE_KEY}}
            report = Runner(store, sleep=sleep).run(make_config("sqlite://", [raw]).jobs[0])
            killed = store.run(1)
            assert killed is not None and killed.status == "interrupted"
        finally:
            store.close()
    assert report.status == "succeeded"
    sent = [c for r in segment.records if r.status == 200 for c in r.body["batch"]]
    assert {c["userId"] for c in sent} == set(users)  # nothing lost
    assert all(c["messageId"] == first[c["userId"]] for c in sent if c["userId"] in first)  # first ids kept
    duplicates = len(sent) - len(users)
    assert 0 <= duplicates <= WINDOW_PER_CONNECTION * 1 * SEGMENT_MAX_CALLS


def test_track_mode_sends_engage_s_events_through_runs_and_messages_shows_them(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    names = {"audience_exited": "Left Audience"}
    job = segment_job(warehouse, segment, events="both", event_names=names)
    report = runner.run(job)
    assert report.status == "succeeded" and report.delivered == len(USERS)
    calls = segment.accepted_calls()
    identifies = [c for c in calls if c["type"] == "identify"]
    tracks = [c for c in calls if c["type"] == "track"]
    assert len(identifies) == len(tracks)  # one of each per change
    entered = next(c for c in tracks if c["userId"] == "u000" and c["event"] == "Audience Entered")
    assert entered["properties"] in ({"audience_key": "vip", "vip": True}, {"audience_key": "churn", "churn": True})
    assert entered["context"]["traits"] == {"email": "u000@example.com"}
    segment.records.clear()
    warehouse.set_members("vip", USERS[1 : len(USERS) // 2])  # u000 exits
    report = runner.run(job)
    assert report.exited == 1
    left = [c for c in segment.accepted_calls() if c["type"] == "track"]
    assert [(c["userId"], c["event"], c["properties"]) for c in left] == [
        ("u000", "Left Audience", {"audience_key": "vip", "vip": False})
    ]
    shown = [c for c in run_calls(store, report.run_id) if c["type"] == "track"]
    assert [c["messageId"] for c in shown] == [c["messageId"] for c in left]  # messages shows them as sent
    tracks_only = segment_job(warehouse, segment, events="track")
    segment.records.clear()
    runner.run(tracks_only, RunOptions(full=True))
    assert {c["type"] for c in segment.accepted_calls()} == {"track"}


def test_a_track_call_without_an_event_is_refused_by_the_receiver_as_segment_does(segment: Receiver) -> None:
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    body = {"batch": [{"type": "track", "userId": "u1", "properties": {}}]}
    answer = httpx.post(segment.url, json=body, headers={"Authorization": f"Basic {token}"})
    assert answer.status_code == 400 and "no event" in answer.text


@pytest.mark.parametrize(
    ("destination", "named"),
    [
        ({"type": "chartmogul", "webhook_url": "https://hooks.example.com/x"}, "the ChartMogul webhook (Send Contact)"),
        ({"type": "chartmogul_api", "api_key": "k"}, "the ChartMogul API destination (custom attributes)"),
    ],
)
def test_track_events_to_a_chartmogul_destination_are_a_configuration_error(
    warehouse: Warehouse, destination: dict[str, Any], named: str
) -> None:
    raw = job_dict(warehouse, "https://hooks.example.com/x", audiences=[warehouse.audience("VIP", "vip")])
    raw["destination"] = {**destination, "events": "track"}
    with pytest.raises(ConfigError) as error:
        make_config("sqlite://", [raw])
    assert error.value.problems == [
        f"job 'contacts': destination.events: {named} takes identify calls only; track events go to a "
        "`type: segment` destination"
    ]


def test_track_mode_with_a_new_audience_a_dry_run_and_the_guard(
    store: Store, sleep: RecordingSleep, warehouse: Warehouse, segment: Receiver
) -> None:
    seed(warehouse)
    runner = Runner(store, sleep=sleep)
    job = segment_job(warehouse, segment, events="track")
    runner.run(job)
    segment.records.clear()
    warehouse.set_members("beta", USERS[:3])
    raw = job.model_dump(mode="python")
    raw["audiences"] = [*raw["audiences"], warehouse.audience("Beta", "beta")]
    raw["destination"]["write_key"] = WRITE_KEY
    job = type(job).model_validate(raw)
    dry = runner.run(job, RunOptions(dry_run=True))
    assert dry.status == "planned" and segment.records == []
    assert [c["event"] for c in run_calls(store, dry.run_id)] == ["Audience Entered"] * 3  # what it would send
    report = runner.run(job)
    assert [(c["event"], c["properties"]) for c in segment.accepted_calls()] == [
        ("Audience Entered", {"audience_key": "beta", "beta": True})
    ] * 3
    assert report.entered == 3
    segment.records.clear()
    warehouse.set_members("beta", [])
    assert runner.run(job).status == "blocked" and segment.records == []
