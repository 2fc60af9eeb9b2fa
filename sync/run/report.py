"""What a run was asked to do and what it did: its options, its report and its exit status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sync.model import RUN_COUNTS, RUN_SUMMARY_COUNTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_BUSY, EXIT_BLOCKED = 0, 1, 2, 3, 4, 5
EXIT_DRIFT = 6  # `reconcile` found the destination holding something else than it acknowledged

# What `run --json` prints, in this order.
SUMMARY_FIELDS = ("run_id", "job", "kind", "status", *RUN_SUMMARY_COUNTS)


@dataclass(frozen=True)
class RunOptions:
    full: bool = False
    dry_run: bool = False
    force: bool = False  # send even when the mass-change guard would stop the run
    # Who or what started the run, for the audit trail: "manual" (`run`), "scheduled" (the daemon), "retry"
    # (`retry`), "full" (`run --full`), "plan" (`plan`, `run --dry-run`).
    trigger: str = "manual"
    # The orchestrator's run that started this one, for lineage: ``namespace/name/run-uuid``.
    parent: str | None = None


@dataclass
class RunReport:
    run_id: int
    job: str
    kind: str
    dry_run: bool
    status: str = "running"
    users: int = 0
    entered: int = 0
    exited: int = 0
    traits_changed: int = 0
    updates: int = 0
    delivered: int = 0
    failed: int = 0
    unmatched: int = 0  # subjects the destination has no record for: not failures, tried again later
    skipped_rows: int = 0
    parked: int = 0
    throttled: int = 0  # 429 answers: the destination asked to slow down
    error: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)
    key_counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    destination: str | None = None  # the destination's label (no secrets), once the run has sent
    reasons: Counter[str] = field(default_factory=Counter)  # why updates were not delivered, by reason
    rejected: int = 0  # of the failed: refused for the record itself (400, 404, 422…), the destination alive
    guard: list[str] | None = None  # what the mass-change guard found, once the run has planned
    full_left: int | None = None  # an unfinished full resync: the subjects it has yet to deliver

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        if self.status == "skipped":
            return EXIT_BUSY
        if self.status == "blocked":
            return EXIT_BLOCKED
        return EXIT_PARTIAL if self.failed or self.status == "interrupted" else EXIT_OK

    @property
    def answered(self) -> int:
        return self.delivered + self.failed + self.unmatched

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in RUN_COUNTS}

    def summary(self) -> dict[str, Any]:
        """The fields ``run --json`` prints."""
        return {k: getattr(self, k) for k in SUMMARY_FIELDS}
