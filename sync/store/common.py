"""What the state store's modules share: how values are written as JSON, and how a database error is told."""

from __future__ import annotations

import orjson
from sqlalchemy.exc import SQLAlchemyError


def dumps(value: object) -> str:
    """Compact JSON with sorted keys; orjson, because runs write tens of thousands of these at a time."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()


def store_reason(exc: SQLAlchemyError) -> str:
    """The driver's first line, without SQLAlchemy's statement and parameters (they may hold profile data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
