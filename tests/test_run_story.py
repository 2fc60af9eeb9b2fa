"""What a run tells afterwards: `runs` and `runs show` with status, trigger, duration, phases, the whole error,
the guard's verdict, alerts and the job's definition; a run that delivered nothing is called failed, naming
the destination's host and the cause."""

import json
from pathlib import Path

import pytest

from sync.audit.queries import RUN_DETAIL_FIELDS, RUN_FIELDS, run_detail, run_record
from sync.dev.receiver import Faults, Receiver
from sync.run.alerts import Alerts
from sync.run.report import RunOptions
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, make_job
from tests.test_alerts import config_with_alerts, hooks  # noqa: F401 - the fixture is used by name
from tests.test_cli import cli, seeded, write_config  # noqa: F401 - the fixture is used by name
from tests.test_unattended import closed_port

USERS = [f"u{i}" for i in range(30)]


def test_a_run_against_a_closed_port_is_failed_naming_the_host_and_the_cause(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    warehouse.set_members("vip", USERS[:3])
    job = make_job(warehouse, f"http://127.0.0.1:{closed_port()}/hook/s3cret-token", max_attempts=2,
                   audiences=[warehouse.audience("VIP", "vip")])  # fmt: skip
    report = Runner(store, sleep=sleep).run(job)
    assert report.status == "failed" and report.exit_code == 1
    assert report.delivered == 0 and report.failed == 3
    assert report.error is not None
    assert "the ChartMogul webhook at http://127.0.0.1:" in report.error
    assert "the connection was refused" in report.error and "×3" in report.error
    assert "s3cret" not in report.error and "/hook" not in report.error
    assert store.pending_updates(job.name) == 3  # nothing lost: the next run sends them


def test_a_run_whose_every_update_got_a_500_is_failed_and_its_alert_says_why_in_words(
    store: Store,
    warehouse: Warehouse,
    sleep: RecordingSleep,
    hooks: tuple[Receiver, Receiver],  # noqa: F811
) -> None:
    generic, slack = hooks
    warehouse.set_members("vip", USERS)
    with Receiver(faults=Faults(error_rate=1.0, error_statuses=(500,))) as failing:
        config = config_with_alerts(warehouse, failing.url, hooks)
        job = config.jobs[0].model_copy(
            update={"destination": config.jobs[0].destination.model_copy(update={"max_attempts": 2})}
        )
        report = Runner(store, sleep=sleep, alerts=Alerts(config.notify)).run(job)
    assert (report.status, report.delivered, report.failed) == ("failed", 0, 30)
    assert report.error is not None and "HTTP 500" in report.error and "×30" in report.error
    text = slack.records[0].body["text"]
    assert f"job contacts run {report.run_id} failed: the run failed. " in text
    assert "accepted none of the 30 updates sent (HTTP 500" in text
    detail = run_detail(store, report.run_id)
    assert len(detail["alerts"]) == 2 and "the run failed" in detail["alerts"][0]
    assert detail["failure_reasons"][0]["updates"] == 30 and detail["failure_reasons"][0]["http_status"] == 500
    assert len(detail["failures"]) == 10


def test_a_partial_run_is_still_partial(store: Store, warehouse: Warehouse, sleep: RecordingSleep) -> None:
    warehouse.set_members("vip", USERS[:10])
    with Receiver() as receiver:
        receiver.faults.respond = lambda body: 422 if body["user_id"] == "u1" else None
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
        report = Runner(store, sleep=sleep).run(job)
    assert (report.status, report.delivered, report.failed) == ("partial", 9, 1)
    assert report.error is None


def test_runs_show_has_phases_the_whole_error_the_guard_and_the_definition_without_secrets(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    many = [f"u{i}" for i in range(200)]
    warehouse.set_members("vip", many)
    with Receiver() as receiver:
        secret = receiver.url.replace("/webhook", "/hook/s3cret-token")
        job = make_job(warehouse, secret, audiences=[warehouse.audience("VIP", "vip")])
        runner = Runner(store, sleep=sleep)
        first = runner.run(job)
        warehouse.set_members("vip", many[:10])  # 190 of 200 leave: the guard stops the run
        blocked = runner.run(job)
    assert blocked.status == "blocked"
    shown = run_detail(store, blocked.run_id)
    assert shown["guard"]["stopped"] is True and "vip" in shown["guard"]["findings"][0]
    assert shown["run"]["error"] == blocked.error  # whole, not a first line
    assert [p["phase"] for p in shown["phases"]] == ["querying", "planning", "recording"]
    passed = run_detail(store, first.run_id)
    assert passed["guard"] == {"stopped": False, "findings": []}
    assert [p["phase"] for p in passed["phases"]] == ["querying", "planning", "sending", "recording"]
    assert all(p["seconds"] >= 0 for p in passed["phases"])
    definition = passed["definition"]
    assert definition["destination"]["webhook_url"] == receiver.url.rsplit("/", 1)[0]
    assert "s3cret" not in json.dumps(shown) and "s3cret" not in json.dumps(passed)
    assert definition["audiences"][0]["name"] == "VIP"


@pytest.mark.parametrize("options,trigger", [(RunOptions(), "manual"), (RunOptions(trigger="retry"), "retry")])
def test_a_run_record_has_every_documented_field_and_its_trigger(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep, options: RunOptions, trigger: str
) -> None:
    warehouse.set_members("vip", USERS[:2])
    with Receiver() as receiver:
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
        report = Runner(store, sleep=sleep).run(job, options)
    run = store.run(report.run_id)
    assert run is not None
    record = run_record(run)
    assert tuple(record) == RUN_FIELDS
    assert record["trigger"] == trigger and record["duration_s"] is not None and record["dry_run"] is False


def test_runs_lists_status_trigger_duration_and_the_errors_first_line_and_runs_show_the_rest(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    failed = cli(config, "run", "contacts", webhook=f"http://127.0.0.1:{closed_port()}/hook/s3cret-token")
    assert failed.returncode == 1
    with Receiver() as receiver:
        assert cli(config, "run", "contacts", "--full", webhook=receiver.url).returncode == 0
    listed = [json.loads(line) for line in cli(config, "runs", "contacts", "--json").stdout.splitlines()]
    assert [(r["status"], r["trigger"]) for r in listed] == [("succeeded", "full"), ("failed", "manual")]
    assert all(tuple(r) == RUN_FIELDS for r in listed)
    assert "connection was refused" in listed[1]["error"]
    table = cli(config, "runs", "contacts").stdout
    assert "trigger" in table and "duration" in table and "connection was refused" not in table.splitlines()[0]
    assert "the ChartMogul webhook at" in table
    only_failed = cli(config, "runs", "--status", "failed", "--json").stdout.splitlines()
    assert [json.loads(line)["run_id"] for line in only_failed] == [listed[1]["run_id"]]
    shown = cli(config, "runs", "show", str(listed[1]["run_id"]))
    assert shown.returncode == 0
    for part in ("phases", "querying", "error", "the connection was refused", "job definition in effect"):
        assert part in shown.stdout
    assert "s3cret" not in shown.stdout
    as_json = json.loads(cli(config, "runs", "show", str(listed[1]["run_id"]), "--json").stdout)
    assert tuple(as_json) == RUN_DETAIL_FIELDS and as_json["progress"] == {"failed": 4}
    missing = cli(config, "runs", "show", "999")
    assert missing.returncode == 2 and "no run with id 999" in missing.stderr


def test_a_full_resync_that_failed_half_way_is_finished_by_the_next_run_and_a_new_full_starts_over(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    users = [f"u{i}" for i in range(100)]
    warehouse.set_members("vip", users)
    with Receiver() as receiver:
        job = make_job(warehouse, receiver.url, max_attempts=1, audiences=[warehouse.audience("VIP", "vip")])
        runner = Runner(store, sleep=sleep)
        assert runner.run(job).status == "succeeded"
        refused = set(users[50:])
        receiver.faults.respond = lambda body: 500 if body["user_id"] in refused else None
        receiver.records.clear()
        full = runner.run(job, RunOptions(full=True, trigger="full"))
        assert (full.kind, full.status, full.delivered, full.failed, full.full_left) == ("full", "partial", 50, 50, 50)
        resync = store.full_resync(job.name)
        assert resync is not None and (resync.run_id, resync.remaining) == (full.run_id, 50)
        receiver.faults.respond = None
        receiver.records.clear()
        resumed = runner.run(job)  # a plain run goes on with the resync: only the 50 not delivered
        assert (resumed.kind, resumed.status, resumed.delivered) == ("full", "succeeded", 50)
        assert {r.body["user_id"] for r in receiver.records} == refused
        assert store.full_resync(job.name) is None
        receiver.records.clear()
        assert runner.run(job).updates == 0  # finished: back to incremental runs
        receiver.faults.respond = lambda body: 500 if body["user_id"] in refused else None
        runner.run(job, RunOptions(full=True))
        receiver.faults.respond = None
        receiver.records.clear()
        again = runner.run(job, RunOptions(full=True))  # a new --full starts over: everyone again
    assert (again.kind, again.status, again.delivered) == ("full", "succeeded", 100)
    assert store.full_resync(job.name) is None


def test_status_says_how_much_of_a_full_resync_is_left(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    with Receiver() as receiver:
        assert cli(config, "run", "contacts", webhook=receiver.url).returncode == 0
        receiver.faults.respond = lambda body: 500 if body["user_id"] in {"u1", "u2"} else None
        full = cli(config, "run", "contacts", "--full", webhook=receiver.url)
    assert full.returncode == 3 and "the full resync is not finished: 2 subjects left" in full.stderr
    status = json.loads(cli(config, "status", "--json").stdout)
    assert status["full_resync"]["left"] == 2
    assert "full resync: 2 left" in cli(config, "status").stdout


def test_a_running_runs_lease_names_its_run_from_the_start(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    import threading

    from sync.audit.status import job_status, table_row
    from tests.conftest import Gate

    warehouse.set_members("vip", USERS[:2])
    gate = Gate()
    with Receiver() as receiver:
        receiver.faults.respond = gate
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
        reports = []
        thread = threading.Thread(target=lambda: reports.append(Runner(store, sleep=sleep).run(job)))
        thread.start()
        try:
            assert gate.arrived.wait(20)
            lease = store.lease(job.name)
            running = store.runs(job.name, 1)[0]
            assert lease is not None and lease.run_id == running.id  # not at the first renewal, 20 s later
            row = table_row(job_status(store, job, running.started_at))
            assert row["running"].startswith(f"run {running.id} on ")
        finally:
            gate.open()
            thread.join(30)
    assert reports[0].status == "succeeded"


def test_after_a_429_the_whole_destination_slows_down_and_the_run_counts_the_429s(
    store: Store, warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    warehouse.set_members("vip", USERS)
    # The receiver takes 10 requests/s (none saved up at first); the job is configured for 40.
    with Receiver(faults=Faults(rate_limit=10, retry_after=1)) as receiver:
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")],
                       requests_per_second=40, max_connections=20, max_attempts=10)  # fmt: skip
        with caplog.at_level(logging.INFO, logger="sync"):
            report = Runner(store).run(job)  # real time: the receiver's limit is in real time
        refused = sum(r.status == 429 for r in receiver.records)
    assert (report.status, report.delivered) == ("succeeded", 30)
    assert report.throttled == refused > 0
    assert refused <= 5  # 39 before: each request found out for itself
    assert "the destination is rate limiting (HTTP 429): slowing to 20 requests/s" in caplog.text
    run = store.run(report.run_id)
    assert run is not None and run.throttled == refused
