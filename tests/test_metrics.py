"""The daemon's Prometheus metrics, scraped over real HTTP after real runs."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sync.dev.receiver import Receiver
from sync.run.runner import Runner, RunOptions
from sync.scheduler.metrics import Metrics
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def served(store: Store) -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics(store, ["contacts"])
    port = free_port()
    server = metrics.serve(port)
    yield metrics, port
    server.shutdown()
    server.server_close()


def test_a_scrape_shows_runs_updates_latency_and_state(
    store: Store, warehouse: Warehouse, faulty_receiver: Receiver, sleep: RecordingSleep, served: tuple[Metrics, int]
) -> None:
    metrics, port = served
    warehouse.set_members("vip", [f"u{i}" for i in range(10)])
    faulty_receiver.faults.respond = lambda body: 422 if body["user_id"] == "u3" else None
    job = make_job(warehouse, faulty_receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    runner = Runner(store, sleep=sleep, metrics=metrics)
    assert runner.run(job, RunOptions(trigger="scheduled")).status == "partial"
    faulty_receiver.faults.respond = None
    assert runner.run(job).status == "succeeded"
    samples = scrape(port)
    assert (
        samples[("audience_sync_runs_total", (("job", "contacts"), ("status", "partial"), ("trigger", "scheduled")))]
        == 1
    )
    assert (
        samples[("audience_sync_runs_total", (("job", "contacts"), ("status", "succeeded"), ("trigger", "manual")))]
        == 1
    )
    assert samples[("audience_sync_updates_total", (("job", "contacts"), ("outcome", "planned")))] == 11
    assert samples[("audience_sync_updates_total", (("job", "contacts"), ("outcome", "delivered")))] == 10
    assert samples[("audience_sync_updates_total", (("job", "contacts"), ("outcome", "failed")))] == 1
    assert samples[("audience_sync_delivery_latency_seconds_count", (("job", "contacts"),))] == 11
    assert ("audience_sync_rate_limit_wait_seconds_total", (("job", "contacts"),)) in samples
    assert samples[("audience_sync_last_success_timestamp_seconds", (("job", "contacts"),))] > 1.7e9
    assert samples[("audience_sync_pending_updates", (("job", "contacts"),))] == 0
    assert samples[("audience_sync_consecutive_failures", (("job", "contacts"),))] == 0


def test_the_lease_holder_is_a_label_while_a_run_holds_it(store: Store, served: tuple[Metrics, int]) -> None:
    from datetime import UTC, datetime, timedelta

    _, port = served
    assert store.acquire_lease("contacts", "host-a:42:abc", datetime.now(UTC), timedelta(minutes=1))
    assert scrape(port)[("audience_sync_lease_held", (("holder", "host-a:42:abc"), ("job", "contacts")))] == 1
    store.release_lease("contacts", "host-a:42:abc")
    assert not [key for key in scrape(port) if key[0] == "audience_sync_lease_held"]


def _schedule(config: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}
    command = [sys.executable, "-m", "sync", "--config", str(config), "schedule", "--metrics-port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _daemon_config(tmp_path: Path, warehouse: Warehouse, receiver: Receiver) -> Path:
    warehouse.set_members("vip", ["u1", "u2", "u3"])
    job = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    job["schedule"] = {"every": "1h", "jitter": "0s"}
    config = tmp_path / "jobs.yaml"
    config.write_text(yaml.safe_dump({"state_url": f"sqlite:///{tmp_path / 'state.db'}", "jobs": [job]}))
    return config


def test_the_real_daemon_serves_metrics_on_its_port_until_it_stops(
    tmp_path: Path, warehouse: Warehouse, receiver: Receiver
) -> None:
    port = free_port()
    process = _schedule(_daemon_config(tmp_path, warehouse, receiver), port)
    key = ("audience_sync_runs_total", (("job", "contacts"), ("status", "succeeded"), ("trigger", "scheduled")))
    samples: dict[Any, float] = {}
    try:
        deadline = time.monotonic() + 30  # bounded: the initial sync of three users takes about a second
        while time.monotonic() < deadline and samples.get(key) != 1:
            try:
                samples = scrape(port)
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert samples.get(key) == 1, err
    assert samples[("audience_sync_updates_total", (("job", "contacts"), ("outcome", "delivered")))] == 3
    assert process.returncode == 0, err
    with pytest.raises(httpx.TransportError):
        scrape(port)  # the endpoint went with the daemon


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path: Path, warehouse: Warehouse, receiver: Receiver) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        process = _schedule(_daemon_config(tmp_path, warehouse, receiver), taken.getsockname()[1])
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "cannot serve metrics" in err
    assert not receiver.records  # nothing ran
