"""What differs between the databases the state store runs on: SQLite and PostgreSQL, and nothing else.

Every dialect-specific statement is built here. A store on any other database is refused when it is opened,
with the list of those supported, rather than treated as one of them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase

from sync.errors import StoreError

# The dialect's INSERT, with ON CONFLICT.
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
SUPPORTED = tuple(_INSERTS)


def check(engine: Engine) -> None:
    """Refuse a database the store does not support; set up one it does."""
    name = engine.dialect.name
    if name not in _INSERTS:
        raise StoreError(
            f"the state store cannot use a {name} database; use one of: {', '.join(SUPPORTED)} "
            "(sqlite:///path/state.db, postgresql+psycopg://user@host/db)"
        )
    if name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)


def insert(engine: Engine, table: Table | type[DeclarativeBase]) -> Any:
    """An INSERT that takes ``on_conflict_do_update`` / ``on_conflict_do_nothing`` on this engine's database."""
    return _INSERTS[engine.dialect.name](table)


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def positional(compiled: Any, paramstyle: str) -> Any:
    """The bound values of a compiled statement in the form the driver's cursor takes."""
    params = compiled.params
    if paramstyle in ("qmark", "numeric", "format"):
        return tuple(params[name] for name in compiled.positiontup)
    return params


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (status, diff) do not block the running sync
    # Durable across a crash of the process (not of the machine): a lost acknowledgement is resent with the
    # same messageId, and commits stay cheap enough to record every answer as it arrives.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MiB of page cache (the default is 2 MiB): a run looks up thousands of users' rows in tables of
    # millions, and a cache that small reads the same index pages from disk again and again.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
