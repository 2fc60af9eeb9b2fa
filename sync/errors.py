"""The exceptions audience-sync raises, and what each means for a run.

::

    SyncError
    ├── ConfigError            bad jobs.yaml or environment; carries every problem at once (exit 2)
    ├── SourceError            the warehouse or a file could not be read, or returned unusable data (run failed)
    ├── StoreError             the state store is unreachable or has an unknown schema (exit 1)
    ├── EngineError            the snapshot engine cannot work within its memory setting (run failed)
    ├── GuardError             a safety guard stopped the run before anything was sent
    └── DeliveryError          one update could not be delivered
        ├── RetriableDeliveryError   408, 423, 429, 5xx but 501, connection errors, timeouts: try again
        └── PermanentDeliveryError   any other non-2xx: recorded with its reason, not retried in this run

Bad rows in a query result (a null ``user_id``, say) are not exceptions: they are skipped, counted and
reported with the run as ``RowIssue`` values (see ``sync.snapshot.normalise``).
"""

from __future__ import annotations

from collections.abc import Sequence


class SyncError(Exception):
    """Base of every error audience-sync raises on purpose."""


class ConfigError(SyncError):
    """The configuration is invalid; ``problems`` lists every problem, each naming its job and field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(SyncError):
    """A query or file of a job's source failed or returned data that cannot be used."""


class StoreError(SyncError):
    """The state store cannot be used (unreachable, or a schema this version does not know)."""


class EngineError(SyncError):
    """The snapshot engine cannot start with its settings or work within its memory."""


class GuardError(SyncError):
    """A safety guard refused the run before anything was sent."""


class DeliveryError(SyncError):
    """One update was not acknowledged by the destination."""

    def __init__(self, reason: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        self.http_status = http_status
        self.attempts: int | None = None  # set when it ends a series of attempts
        super().__init__(reason)


class RetriableDeliveryError(DeliveryError):
    """A transient failure: the same request may succeed later.

    ``retry_after`` is the delay in seconds the destination asked for, when it said one.
    """

    def __init__(self, reason: str, *, http_status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason, http_status=http_status)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The destination rejected the update; sending it again unchanged would fail the same way."""
