"""The web console against a real store made by real runs, served by uvicorn on 127.0.0.1 and read with httpx:
its pages, its JSON (the CLI's shapes), cursors that return every row once, errors as answers, the token."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sync.audit.queries import CHANGE_FIELDS, RUN_FIELDS, ChangeFilter, change_records
from sync.config import JobOutline, Outline
from sync.console.app import Settings
from sync.console.server import ConsoleServer
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import AuditFilter, Store
from tests.conftest import RecordingSleep, Warehouse, make_job

USERS = [f"u{i:03d}" for i in range(120)]
SECRET = "/hook/s3cret-token-42"


@pytest.fixture
def synced(store: Store, warehouse: Warehouse, sleep: RecordingSleep) -> Iterator[Store]:
    """Two runs of one job: an initial sync of 120 users, then 30 exits and a subject id holding markup."""
    odd = "<script>alert(1)</script>"
    warehouse.set_members("vip", USERS)
    warehouse.set_members("beta", USERS[::2])
    with Receiver() as receiver:
        job = make_job(
            warehouse,
            receiver.url.replace("/webhook", SECRET),
            audiences=[warehouse.audience("VIP", "vip"), warehouse.audience("Beta", "beta")],
        )
        runner = Runner(store, sleep=sleep)
        assert runner.run(job).status == "succeeded"
        warehouse.set_members("vip", [*USERS[30:], odd])
        receiver.faults.respond = lambda body: 422 if body["user_id"] == "u010" else None
        assert runner.run(job).status == "partial"
    yield store


@pytest.fixture
def console(synced: Store) -> Iterator[str]:
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with ConsoleServer(Settings(outline), synced) as server:
        yield server.url


def get(url: str, **params: Any) -> httpx.Response:
    return httpx.get(url, params=params or None, timeout=30)


def test_every_page_answers_and_holds_no_secret(console: str) -> None:
    pages = ["/", "/jobs/contacts", "/runs/2", "/runs/2/messages", "/jobs/contacts/subjects/u010",
             "/jobs/contacts/failures", "/search?q=u010", "/runs/2?change=exited&key=vip"]  # fmt: skip
    for page in pages:
        answer = get(console + page)
        assert answer.status_code == 200, page
        assert "text/html" in answer.headers["content-type"]
        assert "s3cret" not in answer.text and "default-src 'none'" in answer.headers["content-security-policy"]
    assert "<script>alert(1)</script>" not in get(console + "/runs/2").text  # markup in data is text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in get(console + "/runs/2").text


def test_the_api_gives_the_clis_shapes(console: str) -> None:
    (job,) = get(console + "/api/v1/jobs").json()
    assert job["job"] == "contacts" and job["last_run"]["run_id"] == 2
    recent = {key["key"]: (key["size"], [r["delivered_exited"] for r in key["runs"]]) for key in job["audiences"]}
    assert recent["vip"] == (92, [0, 29]) and recent["beta"][0] == 60  # members now, exits per recent run
    keys = {key["key"]: key for key in get(console + "/api/v1/jobs/contacts").json()["audiences"]}
    # vip: 120, less 29 exits acknowledged (u010 was refused), plus the odd id
    assert (keys["vip"]["size"], keys["beta"]["size"]) == (92, 60) and len(keys["vip"]["runs"]) == 2
    page = get(console + "/jobs/contacts").text
    assert '<svg class="spark"' in page and "vip: 92 (max 120)" in page  # entries and exits; sizes over time
    overview = get(console + "/").text
    assert re.search(r'<span class="name">vip</span> <span class="num">92</span> <svg class="spark"', overview)
    runs = get(console + "/api/v1/jobs/contacts/runs").json()
    assert [tuple(r) for r in runs["items"]] == [RUN_FIELDS, RUN_FIELDS] and runs["next"] is None
    detail = get(console + "/api/v1/runs/2").json()
    assert detail["run"]["exited"] == 30 and detail["failure_reasons"][0]["http_status"] == 422
    assert "s3cret" not in json.dumps(detail)
    subject = get(console + "/api/v1/jobs/contacts/subjects/u010").json()
    assert subject["timeline"][-1]["status"] == "failed"
    failures = get(console + "/api/v1/jobs/contacts/failures").json()
    assert [(f["user_id"], f["state"]) for f in failures["items"]] == [("u010", "rejected")]
    found = get(console + "/api/v1/search", q="u010").json()
    assert [(f["job"], f["last_run_id"]) for f in found["items"]] == [("contacts", 2)]


def test_paging_a_runs_changes_returns_every_row_exactly_once_with_any_filter(console: str, synced: Store) -> None:
    for filters in ({}, {"change": "exited"}, {"key": "beta"}, {"status": "failed"}, {"subject": "u001"}):
        rows: list[dict[str, Any]] = []
        cursor = None
        for _ in range(100):  # bounded: 240 changes at most, 7 a page
            page = get(console + "/api/v1/runs/1/changes", limit=7, cursor=cursor or "", **filters).json()
            assert all(tuple(row) == CHANGE_FIELDS for row in page["items"])
            rows += page["items"]
            cursor = page["next"]
            if cursor is None:
                break
        keep = ChangeFilter(filters.get("key"), filters.get("change"))
        audit = AuditFilter(run_id=1, status=filters.get("status"), user_id=filters.get("subject"))
        expected = [{f: r[f] for f in CHANGE_FIELDS} for r in change_records(synced, audit, keep)]
        assert rows == expected, filters


def test_messages_page_through_what_was_sent(console: str) -> None:
    first = get(console + "/api/v1/runs/2/messages", limit=10).json()
    rest = get(console + "/api/v1/runs/2/messages", limit=1000, cursor=first["next"]).json()
    bodies = first["items"] + rest["items"]
    assert len(bodies) == 31 and all(body["type"] == "Send Contact" for body in bodies)  # 30 exits and the odd id
    assert rest["next"] is None


@pytest.mark.parametrize(
    "path,status,said",
    [
        ("/api/v1/runs/999", 404, "no run with id 999"),
        ("/api/v1/jobs/nope/runs", 404, "no job named 'nope'"),
        ("/api/v1/jobs/contacts/subjects/nobody", 404, "has no subject 'nobody'"),
        ("/api/v1/runs/2/changes?cursor=bm90LWEtY3Vyc29y", 400, "malformed cursor"),
        ("/api/v1/runs/2/changes?change=sideways", 400, "change must be one of"),
        ("/api/v1/runs/2/changes?limit=0", 400, "limit must be a whole number from 1 to 1000"),
        ("/api/v1/nothing-here", 404, "no such page"),
    ],
)
def test_bad_input_gets_a_clear_answer(console: str, path: str, status: int, said: str) -> None:
    answer = get(console + path)
    assert answer.status_code == status and said in answer.json()["error"]


def test_a_state_store_that_went_away_is_a_503_that_says_so(synced: Store, tmp_path: Path) -> None:
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    gone = Store.open(f"sqlite:///{tmp_path / 'gone.db'}")
    (tmp_path / "gone.db").unlink()
    (tmp_path / "gone.db").mkdir()  # the file is now a folder: every query fails
    gone.engine.dispose()
    with ConsoleServer(Settings(outline), gone) as server:
        answer = get(server.url + "/api/v1/runs/1")
        page = get(server.url + "/runs/1")
    assert answer.status_code == 503 and "the state store is not answering" in answer.json()["error"]
    assert page.status_code == 503 and "the state store is not answering" in page.text


def test_a_token_guards_every_page_and_answer(synced: Store) -> None:
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with pytest.raises(ConfigError, match="give it a token"):
        ConsoleServer(Settings(outline), synced, host="0.0.0.0")
    with ConsoleServer(Settings(outline, token="t0ken"), synced) as server:
        assert get(server.url + "/api/v1/jobs").status_code == 401
        wrong = httpx.get(server.url + "/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.get(server.url + "/api/v1/jobs", headers={"Authorization": "Bearer t0ken"})
        assert right.status_code == 200
        page = httpx.get(server.url + "/jobs/contacts", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        with httpx.Client(base_url=server.url) as browser:
            assert browser.post("/login", data={"token": "nope"}).status_code == 401
            signed = browser.post("/login", data={"token": "t0ken"}, follow_redirects=False)
            assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
            assert "samesite=strict" in signed.headers["set-cookie"].lower()
            assert browser.get("/jobs/contacts").status_code == 200


@pytest.mark.parametrize("page", ["/", "/jobs/contacts", "/runs/2", "/jobs/contacts/subjects/u010"])
def test_pages_render_in_chromium_at_1280_px(console: str, tmp_path: Path, page: str) -> None:
    from PIL import Image

    from tests.test_report import chromium

    shot = tmp_path / "page.png"
    chromium("--window-size=1280,900", f"--screenshot={shot}", console + page)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 900)
    dark = sum(image.histogram()[:128])
    assert dark > 2000, f"{page} rendered nearly blank"  # text and tables drawn, not an error page


def test_a_running_run_shows_its_progress_and_its_page_follows_it(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    import threading

    from tests.conftest import Gate

    warehouse.set_members("vip", USERS[:10])
    gate = Gate(after=4)
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    with Receiver() as receiver, ConsoleServer(Settings(outline), store) as server:
        receiver.faults.respond = gate
        job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], max_connections=1)
        thread = threading.Thread(target=lambda: Runner(store, sleep=sleep).run(job))
        thread.start()
        try:
            assert gate.arrived.wait(20)
            detail = get(server.url + "/api/v1/runs/1").json()
            page = get(server.url + "/runs/1").text
        finally:
            gate.open()
            thread.join(30)
        done = get(server.url + "/api/v1/runs/1").json()
    assert detail["run"]["status"] == "running"
    assert detail["progress"]["delivered"] == 4 and detail["progress"]["pending"] >= 1
    assert '<meta http-equiv="refresh" content="2">' in page and "4 delivered" in page
    assert done["run"]["status"] == "succeeded" and done["progress"] == {"delivered": 10}


def test_the_scheduler_serves_the_console_beside_it(tmp_path: Path, warehouse: Warehouse) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import job_dict

    warehouse.set_members("vip", USERS[:3])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Receiver() as receiver:
        job = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
        job["schedule"] = {"every": "1h", "jitter": "0s"}
        config = tmp_path / "jobs.yaml"
        config.write_text(yaml.safe_dump({"state_url": f"sqlite:///{tmp_path / 'state.db'}", "jobs": [job]}))
        env = {k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}
        process = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(config), "schedule", "--console-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            jobs: list[dict[str, Any]] = []
            for _ in range(300):  # bounded: the initial sync of three users takes about a second
                try:
                    jobs = get(f"http://127.0.0.1:{port}/api/v1/jobs").json()
                except httpx.HTTPError:
                    jobs = []
                if jobs and jobs[0]["last_run"] and jobs[0]["last_run"]["status"] == "succeeded":
                    break
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert jobs and jobs[0]["last_run"]["delivered"] == 3 and jobs[0]["scheduler"]["alive"] is True
    assert process.returncode == 0, err


def _acting_console(store: Store, warehouse: Warehouse, receiver: Receiver, allow: bool) -> ConsoleServer:
    from sync.config import Config
    from sync.console.actions import Actions
    from tests.conftest import job_dict, make_config

    raw = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])

    def load(job: str) -> Config:
        return make_config("sqlite://", [raw])

    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))
    return ConsoleServer(Settings(outline, actions=Actions(store, load) if allow else None), store)


def test_actions_run_the_clis_code_paths_and_answer_409_while_a_run_goes(
    store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    import time

    from tests.conftest import Gate

    warehouse.set_members("vip", USERS[:5])
    with _acting_console(store, warehouse, receiver, allow=True) as server:
        gate = Gate(after=2)
        receiver.faults.respond = gate
        started = httpx.post(server.url + "/api/v1/jobs/contacts/runs", json={"full": False})
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        assert gate.arrived.wait(20)
        busy = httpx.post(server.url + "/api/v1/jobs/contacts/runs", json={})
        assert busy.status_code == 409 and "is running now" in busy.json()["error"]
        gate.open()
        for _ in range(200):  # bounded: five updates
            if get(server.url + f"/api/v1/runs/{run_id}").json()["run"]["status"] != "running":
                break
            time.sleep(0.05)
        run = get(server.url + f"/api/v1/runs/{run_id}").json()["run"]
        assert (run["status"], run["trigger"], run["delivered"]) == ("succeeded", "console", 5)
        paused = httpx.post(server.url + "/api/v1/jobs/contacts/pause", json={})
        assert paused.status_code == 200 and store.schedule("contacts").paused  # type: ignore[union-attr]
        wrong_type = httpx.post(server.url + "/api/v1/jobs/contacts/runs", data={"full": "true"})
        assert wrong_type.status_code == 415  # a cross-site form cannot send JSON
        foreign = httpx.post(
            server.url + "/api/v1/jobs/contacts/runs", json={}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        page = get(server.url + "/jobs/contacts").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        no_csrf = httpx.post(server.url + "/jobs/contacts/actions", data={"action": "plan"})
        assert no_csrf.status_code == 403
        planned = httpx.post(server.url + "/jobs/contacts/actions", data={"action": "plan", "csrf": csrf})
        assert planned.status_code == 303 and planned.headers["location"].startswith("/runs/")


def test_without_allow_actions_every_action_is_403(store: Store, warehouse: Warehouse, receiver: Receiver) -> None:
    with _acting_console(store, warehouse, receiver, allow=False) as server:
        for path in ("/api/v1/jobs/contacts/runs", "/api/v1/jobs/contacts/pause", "/api/v1/jobs/contacts/retry"):
            answer = httpx.post(server.url + path, json={})
            assert answer.status_code == 403 and "--allow-actions" in answer.json()["error"]
        assert "Run now" not in get(server.url + "/jobs/contacts").text
    assert store.runs("contacts") == [] and store.schedule("contacts") is None


def test_the_console_command_refuses_an_unset_token_and_an_open_address_without_one(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "jobs.yaml"
    config.write_text(f"state_url: sqlite:///{tmp_path / 'state.db'}\njobs: []\n")
    env = {k: v for k, v in os.environ.items() if k not in ("AUDIENCE_SYNC_STATE_URL", "UNSET_TOKEN")}
    for args, said in (
        (["--token-env", "UNSET_TOKEN"], "--token-env: environment variable UNSET_TOKEN is not set"),
        (["--host", "0.0.0.0", "--port", "0"], "the console binds to 0.0.0.0, beyond this machine: give it a token"),
    ):
        command = [sys.executable, "-m", "sync", "--config", str(config), "console", *args]
        refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert refused.returncode == 2 and said in refused.stderr


def test_the_overviews_kept_sizes_follow_new_and_forgotten_runs(
    synced: Store, warehouse: Warehouse, sleep: RecordingSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sync.console.app.SPARK_RUNS", 1)  # the runs before the last one are kept between requests
    outline = Outline(state_url="unused://", jobs=(JobOutline(name="contacts"),))

    def vip(answer: httpx.Response) -> int:
        (job,) = answer.json()
        return next(key["size"] for key in job["audiences"] if key["key"] == "vip")

    with ConsoleServer(Settings(outline), synced) as server:
        assert vip(get(server.url + "/api/v1/jobs")) == 92
        with Receiver() as receiver:  # a third run: 20 more exits, acknowledged
            warehouse.set_members("vip", USERS[50:])
            job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
            assert Runner(synced, sleep=sleep).run(job).status == "succeeded"
        assert vip(get(server.url + "/api/v1/jobs")) == 70
        synced.forget_job("contacts", runs=True)
        assert get(server.url + "/api/v1/jobs").json()[0]["audiences"] == []
        with Receiver() as receiver:  # run ids used again (SQLite), other sizes
            for members in (USERS[:10], USERS[:7], USERS[:8]):
                warehouse.set_members("vip", members)
                job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
                assert Runner(synced, sleep=sleep).run(job).status == "succeeded"
        if synced.engine.dialect.name == "sqlite":
            assert [r.id for r in synced.runs("contacts")] == [3, 2, 1]
        assert vip(get(server.url + "/api/v1/jobs")) == 8
