"""Prometheus metrics of the daemon (``schedule --metrics-port``), with the official ``prometheus_client``.

Everything lives in one ``CollectorRegistry`` owned by a ``Metrics`` object that is passed in explicitly:
no process-wide registry that tests must reset. What the state store knows (pending and dead updates, the
lease holder, the last success) is read from it when scraped, so that several workers report the same truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sync.destinations.base import DeliveryResult
from sync.store import Store

# Seconds from handing an update to the destination to its final answer: the rate-limit wait and retries included.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, store: Store | None = None, jobs: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "audience_sync_runs", "Runs by job, final status and trigger.", ["job", "status", "trigger"],
            registry=self.registry,
        )  # fmt: skip
        self.updates = Counter(
            "audience_sync_updates", "Updates by job and outcome: planned, delivered, failed, dead (left out).",
            ["job", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "audience_sync_delivery_latency_seconds",
            "From handing an update over to its final answer, rate-limit wait and retries included.",
            ["job"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rate_wait = Counter(
            "audience_sync_rate_limit_wait_seconds", "Time requests waited for the destination's rate limit.",
            ["job"], registry=self.registry,
        )  # fmt: skip
        if store is not None:
            self.registry.register(_StoreCollector(store, list(jobs)))

    def results(self, job: str, results: Iterable[DeliveryResult]) -> None:
        for result in results:
            outcome = "delivered" if result.delivered else "unmatched" if result.unmatched else "failed"
            self.updates.labels(job, outcome).inc()
            if result.sent_at is not None:
                self.latency.labels(job).observe(max(0.0, (result.finished_at - result.sent_at).total_seconds()))

    def run_finished(self, job: str, status: str, trigger: str, planned: int, parked: int) -> None:
        self.runs.labels(job, status, trigger).inc()
        self.updates.labels(job, "planned").inc(planned)
        self.updates.labels(job, "dead").inc(parked)

    def waited(self, job: str, seconds: float) -> None:
        self.rate_wait.labels(job).inc(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; ``shutdown()`` the server to stop."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _StoreCollector(Collector):
    """Per job, read from the state store at scrape time: the last success, pending and dead updates, and who
    holds the lease."""

    def __init__(self, store: Store, jobs: list[str]) -> None:
        self.store, self.jobs = store, jobs

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "audience_sync_last_success_timestamp_seconds", "End of the job's last succeeded run.", labels=["job"]
        )
        pending = GaugeMetricFamily(
            "audience_sync_pending_updates", "Updates the next run sends again.", labels=["job"]
        )
        dead = GaugeMetricFamily(
            "audience_sync_dead_updates", "Updates parked after repeated rejections.", labels=["job"]
        )
        failures = GaugeMetricFamily(
            "audience_sync_consecutive_failures", "Runs in a row that failed or were blocked.", labels=["job"]
        )
        lease = GaugeMetricFamily(
            "audience_sync_lease_held",
            "1 while a worker holds the job's lease, labelled with it.",
            labels=["job", "holder"],
        )
        for job in self.jobs:
            last = self.store.last_run(job, ("succeeded",))
            if last is not None and last.finished_at is not None:
                success.add_metric([job], last.finished_at.timestamp())
            pending.add_metric([job], self.store.pending_updates(job))
            dead.add_metric([job], self.store.dead_count(job))
            failures.add_metric([job], self.store.consecutive_failures(job))
            held = self.store.lease(job)
            if held is not None:
                lease.add_metric([job, held.owner], 1.0)
        yield from (success, pending, dead, failures, lease)
