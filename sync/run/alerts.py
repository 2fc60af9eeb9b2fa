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
        said = "; ".join(_in_words(condition, facts) for condition in found)
        text = f"audience-sync: job {facts.job} run {facts.run_id} {facts.status}: {said}"
        if facts.error:
            text += f". {facts.error[:300]}"
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


def _in_words(condition: str, facts: RunFacts) -> str:
    """What a condition means for this run, as an operator would say it."""
    answered = facts.delivered + facts.failed
    if condition == "failed_share":
        return f"{facts.failed} of {answered} updates were not delivered"
    if condition == "failing":
        return f"{facts.consecutive_failures} runs in a row failed or were blocked"
    if condition == "user_count_change":
        baseline = statistics.median(facts.recent_users)
        return f"the snapshot has {facts.users} subjects against a median of {baseline:g} in recent runs"
    return _WORDS[condition]


_WORDS = {
    "failed": "the run failed",
    "unreachable": "the destination is unreachable",
    "blocked": "the mass-change guard stopped the run before anything was sent",
}


class Alerts:
    """Judges each run's end and notifies the targets whose conditions began or ended."""

    def __init__(self, targets: Sequence[NotifyConfig], client: httpx.Client | None = None) -> None:
        self.targets = list(targets)
        self._client = client

    def after_run(self, store: Store, facts: RunFacts, now: Any) -> list[str]:
        """Judge the run's end, notify whom it concerns; the texts of the notifications sent."""
        if facts.status in _SILENT:
            return []
        judged = [(t, conditions(facts, t)) for t in self.targets if not t.jobs or facts.job in t.jobs]
        if not judged:
            return []
        found = sorted({c for _, mine in judged for c in mine})
        active = store.alert_state(facts.job)
        if found == active or (not found and facts.status not in _HEALTHY):
            return []
        store.set_alert_state(facts.job, found, now, facts.run_id)
        sent: list[str] = []
        for target, mine in judged:  # new conditions are announced; fewer ones, still in trouble, are not news
            if set(mine) - set(active) or (not found and set(active) & set(target.on)):
                body = message(facts, mine, target)
                if self._send(target, body):
                    sent.append(f"{public_label(target.url.get_secret_value())}: {body['text']}")
        return sent

    def _send(self, target: NotifyConfig, body: dict[str, Any]) -> bool:
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
            return True
        except httpx.HTTPError as exc:
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            log.warning(
                "could not send a notification",
                extra={"to": where, "http_status": status, "reason": type(exc).__name__},
            )
            return False
        finally:
            if self._client is None:
                client.close()
