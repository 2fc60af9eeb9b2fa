"""audience-sync from Python: run a job, read its status, its runs and their changes.

Each function takes the configuration as a path to a ``jobs.yaml`` (``None``: ``$AUDIENCE_SYNC_CONFIG`` or
``./jobs.yaml``) or as a loaded ``Config``, and answers in the shapes of the CLI's ``--json`` output (the
README's "JSON output"). Errors are the product's own: ``ConfigError`` (with every problem), ``SourceError``,
``StoreError``, ``DeliveryError``, all ``SyncError``; never ``SystemExit``. A run that fails is not an error:
its ``RunResult`` says so (``ok``, ``status``, ``error``, ``exit_code``); ``raise_for_status()`` makes it one.

    from sync import api

    result = api.run("jobs.yaml", "contacts")
    print(result.run_id, result.status, result.counts["delivered"])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.config import Config, load_config
from sync.errors import StoreError, SyncError
from sync.store import AuditFilter, Store, store_reason

__all__ = ["Config", "RunFailed", "RunResult", "changes", "load", "run", "runs", "status"]

ConfigLike = Config | str | Path | None


class RunFailed(SyncError):
    """A run that did not succeed, raised by ``RunResult.raise_for_status()``."""

    def __init__(self, result: RunResult) -> None:
        first = (result.error or "").strip().splitlines()[0] if result.error else "no error recorded"
        super().__init__(f"run {result.run_id} of {result.job} {result.status}: {first}")
        self.result = result


@dataclass(frozen=True)
class RunResult:
    """One run as ``runs show --json`` gives it: ``run`` (its record), ``phases``, ``guard``, ``alerts``,
    ``failures``, ``failure_reasons``, ``definition`` (no secrets) and ``progress``, with shortcuts."""

    detail: dict[str, Any]
    exit_code: int
    record: dict[str, Any] = field(init=False)
    # What the run reported as it ended (sync.run.report.RunReport): the CLI prints its summary from it.
    report: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", self.detail["run"])

    @property
    def run_id(self) -> int:
        return int(self.record["run_id"])

    @property
    def job(self) -> str:
        return str(self.record["job"])

    @property
    def status(self) -> str:
        """``succeeded``, ``partial``, ``failed``, ``blocked``, ``interrupted``, ``skipped`` or ``planned``."""
        return str(self.record["status"])

    @property
    def error(self) -> str | None:
        error = self.record["error"]
        return None if error is None else str(error)

    @property
    def duration_s(self) -> float | None:
        seconds = self.record["duration_s"]
        return None if seconds is None else float(seconds)

    @property
    def counts(self) -> dict[str, int]:
        """Every count of the run (``users``, ``entered``, ``exited``, ``updates``, ``delivered``, …)."""
        return {
            k: v for k, v in self.record.items() if isinstance(v, int) and not isinstance(v, bool) and k != "run_id"
        }

    @property
    def alerts(self) -> list[str]:
        return list(self.detail["alerts"] or [])

    @property
    def ok(self) -> bool:
        """Everything planned was delivered (or, for a dry run, planned)."""
        return self.exit_code == 0

    def raise_for_status(self) -> RunResult:
        """``RunFailed`` unless ``ok``; the result itself otherwise."""
        if not self.ok:
            raise RunFailed(self)
        return self


def load(config: ConfigLike = None, *jobs: str) -> Config:
    """The configuration (``ConfigError`` listing every problem); with ``jobs``, only those are read, so only
    their secrets must be set."""
    if isinstance(config, Config):
        return config
    return load_config(config, only=jobs or None)


def run(
    config: ConfigLike,
    job: str,
    *,
    full: bool = False,
    dry_run: bool = False,
    retry: bool = False,
    force: bool = False,
    trigger: str = "api",
    parent: str | None = None,
    progress: Any = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Run ``job`` once now, as ``audience-sync run`` does (``retry``: as ``audience-sync retry``), and return
    what ``runs show --json`` says of it. ``parent``: the orchestrator's run, ``namespace/name/run-uuid``, for
    lineage; ``progress`` (a sync.run.delivery.Progress) and ``stop`` (set to stop the run): the CLI's."""
    from sync.audit.queries import run_detail
    from sync.run.alerts import Alerts
    from sync.run.report import RunOptions
    from sync.run.runner import Runner

    loaded = load(config, job)
    settings = loaded.job(job)
    options = RunOptions(full=full, dry_run=dry_run, force=force, trigger="retry" if retry else trigger, parent=parent)
    with _store(loaded) as store:
        runner = Runner(store, alerts=Alerts(loaded.notify), progress=progress, stop=stop)
        report = runner.run(settings, options)
        return RunResult(run_detail(store, report.run_id), report.exit_code, report)


def status(config: ConfigLike = None) -> list[dict[str, Any]]:
    """Each job's status, as ``status --json`` gives it."""
    from sync.audit.status import status_rows
    from sync.clock import utc_now

    loaded = load(config)
    with _store(loaded) as store:
        return status_rows(store, loaded, utc_now())


def runs(
    config: ConfigLike = None,
    job: str | None = None,
    *,
    limit: int = 20,
    statuses: Sequence[str] = (),
    trigger: str | None = None,
) -> list[dict[str, Any]]:
    """Runs newest first, as ``runs --json`` gives them."""
    from sync.audit.queries import run_record

    loaded = load(config)
    with _store(loaded) as store:
        return [run_record(r) for r in store.runs(job, limit=limit, statuses=statuses, trigger=trigger)]


def changes(
    config: ConfigLike = None,
    run_id: int | None = None,
    *,
    job: str | None = None,
    user_id: str | None = None,
    key: str | None = None,
    change: str | None = None,
    status: str | None = None,
) -> Iterator[dict[str, Any]]:
    """What runs changed, one record per (subject, key), as ``diff --json`` gives them; streamed."""
    from sync.audit.queries import CHANGE_FIELDS, ChangeFilter, change_records

    if run_id is None and job is None:
        raise SyncError("give a run_id, or a job")
    loaded = load(config)
    with _store(loaded) as store:
        filters = AuditFilter(run_id=run_id, job=job, user_id=user_id, status=status)
        for record in change_records(store, filters, ChangeFilter(key, change)):
            yield {name: record[name] for name in CHANGE_FIELDS}


@contextmanager
def _store(config: Config) -> Iterator[Store]:
    """The state store, its driver's errors turned into ``StoreError`` (no statement, no parameters)."""
    from sqlalchemy.exc import SQLAlchemyError

    store = Store.open(config.state_url)
    try:
        yield store
    except SQLAlchemyError as exc:
        raise StoreError(f"the state store failed: {store_reason(exc)}") from None
    finally:
        store.close()
