"""``audience-sync reconcile JOB``: read ChartMogul back, compare it with the acknowledged state, record what
drifted as a run of the kind ``reconcile``, and (``repair``) ask the next run to resend what drifted.

The reconciliation holds the job's lease while it reads: a run sending at the same time would show its
updates in flight as drift. It never changes an acknowledged state; a repair marks subjects to be resent
(their fingerprints not known, their kept record ids forgotten for those ``gone``), and the run that
resends them advances their state as any run does, once ChartMogul acknowledges.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from sync.clock import Clock, Sleep, utc_now
from sync.config import ChartMogulApiConfig, JobConfig
from sync.destinations.factory import build_destination, remote_ids
from sync.destinations.transport import ClientFactory, default_client
from sync.errors import ConfigError, SyncError
from sync.reconcile.compare import DRIFTS, RECONCILE, Comparer, Drift, Subject
from sync.reconcile.read import READS, Reader, Reading
from sync.run import lease
from sync.store import Store, store_reason

log = logging.getLogger(__name__)

# What the text output shows of each drift class.
SAMPLE = 5
# What to do about an attribute of another type: ChartMogul cannot change a type through its API.
TYPE_ADVICE = (
    "ChartMogul cannot change an attribute's type through its API: delete the attribute in ChartMogul "
    "(Settings → Custom attributes) and run `audience-sync forget {job}` then a full sync, or rename the key "
    "in jobs.yaml (`key:`) so that a new attribute is created"
)


class Busy(SyncError):
    """The job is running: its updates in flight would show as drift."""


@dataclass(frozen=True)
class Options:
    repair: bool = False
    limit: int | None = None  # check at most this many subjects (in user id order)
    sample: float | None = None  # check this share of the subjects, picked at random
    read: str = "auto"  # auto, list or each
    seed: int | None = None


@dataclass
class Reconciliation:
    """What a reconciliation did: its run, status, what it checked and read, the drift it found."""

    run_id: int
    job: str
    status: str = "running"
    checked: int = 0
    reading: Reading = field(default_factory=lambda: Reading(""))
    drifts: list[Drift] = field(default_factory=list)
    repaired: int = 0
    looked_up: int = 0
    error: str | None = None
    seconds: float = 0.0

    @property
    def how(self) -> str:
        return self.reading.how

    @property
    def requests(self) -> int:
        return self.reading.requests

    @property
    def pages(self) -> int:
        return self.reading.pages

    @property
    def complete(self) -> bool:
        return self.reading.complete

    @property
    def cut_short(self) -> str | None:
        return self.reading.cut_short

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(d.drift for d in self.drifts)
        return {name: found.get(name, 0) for name in DRIFTS}

    def summary(self) -> dict[str, Any]:
        """What ``runs show`` tells of it (``runs.reconcile``)."""
        return {
            "checked": self.checked,
            "read": self.how,
            "requests": self.requests,
            "pages": self.pages,
            "complete": self.status == "succeeded",  # everything it needed was read
            "cut_short": self.cut_short,
            "drift": self.counts,
            "drifted_subjects": len({d.user_id for d in self.drifts}),
            "repaired": self.repaired,
            "looked_up_again": self.looked_up,
        }


def reconcile(
    store: Store,
    job: JobConfig,
    options: Options,
    *,
    clients: ClientFactory = default_client,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = utc_now,
    stop: threading.Event | None = None,
    owner: str | None = None,
) -> Reconciliation:
    """Reconcile one ``chartmogul_api`` job; ConfigError for another destination, Busy while it runs."""
    settings = job.destination
    if not isinstance(settings, ChartMogulApiConfig):
        raise ConfigError(
            [
                f"job {job.name!r}: reconcile reads the destination back, which only a chartmogul_api destination "
                f"can; this job's destination is {settings.type}"
            ]  # fmt: skip
        )
    if options.read not in READS:
        raise ConfigError([f"--read must be one of {', '.join(READS)}, not {options.read!r}"])
    owner = owner or lease.process_owner()
    if not lease.acquire(store, job.name, owner, clock):
        held = store.lease(job.name)
        raise Busy(f"job {job.name!r} is running ({held.owner if held else '?'}); reconcile when it is done")
    stop = stop or threading.Event()
    heartbeat = lease.Heartbeat(store, job.name, owner, clock, lease.LEASE_TTL, stop)
    heartbeat.start()
    try:
        return _reconcile(store, job, settings, options, clients, sleep, clock, stop, heartbeat)
    finally:
        heartbeat.finish()
        lease.release(store, job.name, owner)


def _reconcile(
    store: Store,
    job: JobConfig,
    settings: ChartMogulApiConfig,
    options: Options,
    clients: ClientFactory,
    sleep: Sleep,
    clock: Clock,
    stop: threading.Event,
    heartbeat: lease.Heartbeat,
) -> Reconciliation:
    started = time.monotonic()
    run_id = store.start_run(job.name, RECONCILE, False, clock(), job.space_id, "manual", definition=job.definition())
    heartbeat.attach(run_id)
    result = Reconciliation(run_id, job.name)
    log.info("reconciliation started", extra={"event": "reconcile_started", "job": job.name, "run_id": run_id})
    try:
        scope = remote_ids(settings)
        assert scope is not None  # a chartmogul_api destination keeps record ids
        kinds = {key: kind for key, kind in store.tracked_keys(job.name).items() if kind in ("audience", "trait")}
        subjects = _subjects(store, job, settings, scope.scope, options)
        types = store.remote_attributes(job.name, scope.scope) if settings.target == "customer" else {}
        comparer = Comparer(subjects, kinds, types, settings.match)
        del subjects
        result.checked = comparer.checked
        if not comparer.by_uuid and not comparer.by_value:  # nothing acknowledged or looked up yet: nothing to read
            result.reading = Reading("each", complete=True)
        else:
            result.reading = asyncio.run(_read(settings, comparer, options.read, clients, sleep, clock, stop))
        result.drifts = comparer.drifts(result.complete)
        result.status = "succeeded" if result.cut_short is None else "partial"
        if result.cut_short is not None:
            result.error = f"the reading was cut short ({result.cut_short}): only what was read is judged"
        if options.repair:
            _repair(store, job.name, kinds, result, clock)
    except SyncError as exc:  # a ReadError too: an answer that cannot be judged, or a refused key
        result.status, result.error, result.drifts = "failed", str(exc), []
    except SQLAlchemyError as exc:
        result.status, result.error, result.drifts = "failed", f"the state store failed: {store_reason(exc)}", []
    result.seconds = time.monotonic() - started
    store.record_drifts(run_id, (d.__dict__ for d in result.drifts))
    store.set_reconcile_summary(run_id, result.summary())
    counts = {"users": result.checked}  # what it found is in its summary and its drift rows, not update counts
    store.finish_run(run_id, result.status, counts, clock(), result.error, phases={"reconciling": result.seconds})
    level = {"succeeded": logging.INFO, "partial": logging.WARNING}.get(result.status, logging.ERROR)
    drifted = {k: v for k, v in result.counts.items() if v}
    log.log(
        level,
        "reconciliation finished: %s subjects checked, %s",
        result.checked,
        ", ".join(f"{v} {k}" for k, v in drifted.items()) or "no drift",
        extra={
            "event": "reconcile_finished",
            "job": job.name,
            "run_id": run_id,
            "status": result.status,
            "requests": result.requests,
            "error": result.error,
        },  # fmt: skip
    )
    return result


def _subjects(
    store: Store, job: JobConfig, settings: ChartMogulApiConfig, scope: str, options: Options
) -> Iterator[Subject]:
    """The subjects to check, streamed from the store: every acknowledged one and every one found to have no
    record, bounded by ``limit`` or ``sample``."""
    with closing(store.subjects_to_check(job.name, scope)) as rows:
        yield from _chosen(store, job, settings, options, rows)


def _chosen(
    store: Store,
    job: JobConfig,
    settings: ChartMogulApiConfig,
    options: Options,
    rows: Iterator[tuple[str, str, str | None]],
) -> Iterator[Subject]:
    rng = random.Random(options.seed)
    chosen = rows
    if options.sample is not None:
        share = options.sample
        chosen = (row for row in chosen if rng.random() < share)
    if options.limit is not None:
        chosen = islice(chosen, options.limit)
    if settings.match == "external_id":
        yield from (Subject(user, state, remote, user) for user, state, remote in chosen)
        return
    unmatched: list[tuple[str, str, str | None]] = []
    for user, state, remote in chosen:  # by email: the emails of those without a record come from their updates
        if remote == "":
            unmatched.append((user, state, remote))
        else:
            yield Subject(user, state, remote)
    emails = store.last_profiles(job.name, [user for user, _, _ in unmatched])
    for user, state, remote in unmatched:
        email = emails.get(user, {}).get("email")
        yield Subject(user, state, remote, email if isinstance(email, str) else None)


async def _read(
    settings: ChartMogulApiConfig,
    comparer: Comparer,
    how: str,
    clients: ClientFactory,
    sleep: Sleep,
    clock: Clock,
    stop: threading.Event,
) -> Reading:
    async with clients(settings.max_connections) as client:
        destination = build_destination(settings, client, sleep=sleep, clock=clock)
        reader = Reader(destination, settings.base_url, settings.target, stop)
        return await reader.read(comparer, how)


def _repair(store: Store, job: str, kinds: Mapping[str, str], result: Reconciliation, clock: Clock) -> None:
    """Ask the next run to resend what drifted: ``missing`` and ``differs`` keys, every key of a subject
    whose record is ``gone`` (looked up again first), and a ``found`` subject looked up now rather than
    after ``rematch_after``. ``type`` drift is left for the user (``TYPE_ADVICE``)."""
    resend: dict[str, set[str]] = {}
    look_up: set[str] = set()
    for drift in result.drifts:
        if drift.drift in ("missing", "differs") and drift.key is not None:
            resend.setdefault(drift.user_id, set()).add(drift.key)
        elif drift.drift == "gone":
            look_up.add(drift.user_id)
            resend.setdefault(drift.user_id, set()).update(kinds)  # every key the job writes
        elif drift.drift == "found":
            look_up.add(drift.user_id)
    store.request_repairs(job, result.run_id, {u: sorted(k) for u, k in resend.items()}, sorted(look_up), clock())
    result.repaired, result.looked_up = len(resend), len(look_up)


def type_advice(job: str) -> str:
    return TYPE_ADVICE.format(job=job)
