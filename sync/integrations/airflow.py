"""Airflow 3 (``pip install 'audience-sync[airflow]'``): ``AudienceSyncOperator`` runs one job once through
``sync.api.run`` and pushes what ``runs show --json`` says of the run to XCom (its return value).

    from sync.integrations.airflow import AudienceSyncOperator

    AudienceSyncOperator(task_id="sync_contacts", job="contacts", config="/opt/sync/jobs.yaml")

A run whose status is in ``fail_on`` (failed or blocked by default; add ``"partial"`` to fail on any update
not delivered) fails the task with the run's reason; any other is a success, with a warning in the task's log
when not everything was delivered. ``job`` and ``config`` are templated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from sync import api

FAIL_ON = ("failed", "blocked", "interrupted")


class AudienceSyncOperator(BaseOperator):
    """Run an audience-sync job once; XCom: the run as ``runs show --json`` gives it."""

    template_fields: Sequence[str] = ("job", "config")
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        job: str,
        config: str | None = None,
        full: bool = False,
        dry_run: bool = False,
        retry: bool = False,
        fail_on: Sequence[str] = FAIL_ON,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.config = config
        self.full = full
        self.plan_only = dry_run  # BaseOperator has a dry_run method of its own
        self.retry = retry
        self.fail_on = tuple(fail_on)

    def execute(self, context: Any) -> dict[str, Any]:
        result = api.run(
            self.config, self.job, full=self.full, dry_run=self.plan_only, retry=self.retry, trigger="airflow"
        )
        counts = result.counts
        self.log.info(
            "run %s of %s %s: %s updates, %s delivered, %s failed",
            result.run_id,
            result.job,
            result.status,
            counts.get("updates", 0),
            counts.get("delivered", 0),
            counts.get("failed", 0),
        )
        if result.status in self.fail_on:
            raise AirflowException(f"run {result.run_id} of {result.job} {result.status}: {result.error or ''}")
        if not result.ok:
            self.log.warning("run %s of %s %s: %s", result.run_id, result.job, result.status, result.error)
        return result.detail
