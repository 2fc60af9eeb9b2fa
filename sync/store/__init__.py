"""The state store: acknowledged state per user, runs and their updates (the audit trail)."""

from sync.store.repository import Baseline, Store

__all__ = ["Baseline", "Store"]
