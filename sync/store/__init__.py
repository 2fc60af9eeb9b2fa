"""The state store: acknowledged state per user, runs and their updates (the audit trail)."""

from sync.store.audit import AuditFilter, AuditRow, ChangeRow
from sync.store.common import store_reason
from sync.store.repository import Store
from sync.store.runs import TROUBLE
from sync.store.state import Baseline

__all__ = ["TROUBLE", "AuditFilter", "AuditRow", "Baseline", "ChangeRow", "Store", "store_reason"]
