"""Alerts: what a run's end says about its job, announced once when a condition begins and once when the
job recovers, to a generic JSON webhook or a Slack-compatible incoming webhook.

Conditions, per notification target's thresholds:

- ``failed``: the run failed (its error says why); ``unreachable``: it failed because the destination
  stopped answering;
- ``blocked``: the mass-change guard stopped it;
- ``failed_share``: more than ``failed_share`` of the updates it sent were not delivered;
- ``failing``: the job failed or was blocked three runs in a row;
- ``user_count_change``: the snapshot's size moved more than ``user_count_change`` (a share) away from the
  median of the last five completed runs.

The job's active conditions are kept in the state store (``job_alerts``): a run that finds the same ones
sends nothing; one that finds new ones sends an alert listing all of them; a completed run with none left
sends one recovery. Notification URLs are secrets: only their host is ever logged.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from sync.config import NotifyConfig
from sync.redact import public_label
from sync.store import Store

log = logging.getLogger(__name__)

# A job failed or blocked this many runs in a row is FAILING: logged loudly by the daemon, shown by `status`.
FAILING_AFTER = 3
# Runs whose snapshot sizes make the baseline of `user_count_change`.
RECENT_RUNS = 5
# Statuses that leave the alert state as it is: nothing was learnt about the job.
_SILENT = ("interrupted", "skipped", "planned", "running")
# Statuses after which a job with no condition left has recovered.
_HEALTHY = ("succeeded", "partial")


@dataclass(frozen=True)
class RunFacts:
    """What the conditions are judged on: the run's end, and the job's recent history."""

    job: str
    run_id: int
    status: str
    error: str | None
    unreachable: bool
    users: int
    delivered: int
    failed: int
    consecutive_failures: int
    recent_users: Sequence[int]


def conditions(facts: RunFacts, target: NotifyConfig) -> list[str]:
    """The conditions ``facts`` show, of those ``target`` listens to (pure)."""
    found: list[str] = []
    if facts.status == "failed":
        found.append("unreachable" if facts.unreachable else "failed")
    if facts.status == "blocked":
        found.append("blocked")
    answered = facts.delivered + facts.failed
    if facts.status == "partial" and answered and facts.failed / answered > target.failed_share:
        found.append("failed_share")
    if facts.consecutive_failures >= FAILING_AFTER:
        found.append("failing")
    if facts.status in _HEALTHY and len(facts.recent_users) >= 2:
        baseline = statistics.median(facts.recent_users)
        if baseline and abs(facts.users - baseline) / baseline > target.user_count_change:
            found.append("user_count_change")
    return [c for c in found if c in target.on]


def message(facts: RunFacts, found: Sequence[str], target: NotifyConfig) -> dict[str, Any]:
    """The JSON body of an alert (``found`` not empty) or a recovery (``found`` empty)."""
    kind = "alert" if found else "recovered"
    if found:
        text = f"audience-sync: job {facts.job} run {facts.run_id} {facts.status}: {', '.join(found)}"
        if facts.error:
            text += f" ({facts.error[:300]})"
        if "user_count_change" in found:
            text += f"; {facts.users} users against a median of {statistics.median(facts.recent_users):g}"
    else:
        text = f"audience-sync: job {facts.job} recovered: run {facts.run_id} {facts.status}"
    if target.type == "slack":
        return {"text": text}
    return {
        "event": kind,
        "job": facts.job,
        "run_id": facts.run_id,
        "status": facts.status,
        "conditions": list(found),
        "error": facts.error,
        "users": facts.users,
        "delivered": facts.delivered,
        "failed": facts.failed,
        "consecutive_failures": facts.consecutive_failures,
        "text": text,
    }


class Alerts:
    """Judges each run's end and notifies the targets whose conditions began or ended."""

    def __init__(self, targets: Sequence[NotifyConfig], client: httpx.Client | None = None) -> None:
        self.targets = list(targets)
        self._client = client

    def after_run(self, store: Store, facts: RunFacts, now: Any) -> None:
        if facts.status in _SILENT:
            return
        judged = [(t, conditions(facts, t)) for t in self.targets if not t.jobs or facts.job in t.jobs]
        if not judged:
            return
        found = sorted({c for _, mine in judged for c in mine})
        active = store.alert_state(facts.job)
        if found == active or (not found and facts.status not in _HEALTHY):
            return
        store.set_alert_state(facts.job, found, now, facts.run_id)
        for target, mine in judged:  # new conditions are announced; fewer ones, still in trouble, are not news
            if set(mine) - set(active) or (not found and set(active) & set(target.on)):
                self._send(target, message(facts, mine, target))

    def _send(self, target: NotifyConfig, body: dict[str, Any]) -> None:
        where = public_label(target.url.get_secret_value())
        client = self._client or httpx.Client(follow_redirects=False)
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(httpx.HTTPError),
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.5, max=4),
                reraise=True,
            ):
                with attempt:
                    response = client.post(
                        target.url.get_secret_value(), json=body, timeout=target.timeout.total_seconds()
                    )
                    response.raise_for_status()
            log.info("notification sent", extra={"event": "notified", "to": where, "kind": body.get("event", "slack")})
        except httpx.HTTPError as exc:
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            log.warning(
                "could not send a notification",
                extra={"to": where, "http_status": status, "reason": type(exc).__name__},
            )
        finally:
            if self._client is None:
                client.close()
