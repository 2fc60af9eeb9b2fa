"""What differs between the databases the state store runs on: SQLite and PostgreSQL, and nothing else.

Every dialect-specific statement is built here. A store on any other database is refused when it is opened,
with the list of those supported, rather than treated as one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, event
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


# Driver parameter styles that take values in order (a tuple) rather than by name (a dict).
_POSITIONAL = ("qmark", "numeric", "format")


def positional(compiled: Any, paramstyle: str) -> Any:
    """The bound values of a compiled statement in the form the driver's cursor takes."""
    params = compiled.params
    if paramstyle in _POSITIONAL:
        return tuple(params[name] for name in compiled.positiontup)
    return params


class Bulk:
    """One statement run for many rows by the driver's own ``executemany``, its SQL compiled once for the
    engine: with SQLAlchemy's per-row parameter processing (values checked and converted one by one,
    datetimes formatted), recording an answer on SQLite took 1.7 × as long (bench/README.md). Rows give the
    values of ``keys``, with datetimes already as ``moment`` makes them; any other parameter is the
    statement's own constant."""

    def __init__(self, engine: Engine, statement: Any, keys: Sequence[str]) -> None:
        compiled = statement.compile(dialect=engine.dialect, column_keys=list(keys))
        self.sql = str(compiled)
        self.keys = tuple(keys)
        fixed = {name: value for name, value in compiled.params.items() if name not in self.keys}
        self._fixed = fixed
        self._order: tuple[str, ...] | None = None
        if engine.dialect.paramstyle in _POSITIONAL:
            self._order = tuple(compiled.positiontup or ())
        missing = set(self._order or compiled.params) - set(self.keys) - set(fixed)
        if missing:
            raise ValueError(f"bulk statement without values for {sorted(missing)}")

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        order, fixed = self._order, self._fixed
        if order is not None:
            values = [tuple(row[n] if n in row else fixed[n] for n in order) for row in rows]
            connection.exec_driver_sql(self.sql, values)
        else:
            connection.exec_driver_sql(self.sql, [{**fixed, **row} for row in rows] if fixed else list(rows))


def moment(engine: Engine) -> Callable[[datetime | None], Any]:
    """Datetimes as the store's UTC columns keep them (``models.UTCDateTime``), for ``Bulk`` rows: on
    SQLite the naive UTC text SQLAlchemy writes, on PostgreSQL the aware datetime itself."""
    if engine.dialect.name == "sqlite":
        return _sqlite_moment
    return _aware


def _sqlite_moment(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = _aware(value).astimezone(UTC)  # type: ignore[union-attr]
    return value.isoformat(" ", "microseconds")[:-6]  # without its "+00:00"


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime given to the state store")
    return value


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


# A run's updates for the sync log, in the run's order: ``user_id, message_id, changes, status, http_status, error,
# finished_at`` (``dead`` for a parked one), for the driver's own cursor: its parameters in the driver's style,
# and the time as text with its zone on SQLite, which keeps none.
_RUN_UPDATE_ROWS = """
    SELECT u.user_id, u.message_id, u.changes, CASE WHEN f.dead THEN 'dead' ELSE u.status END,
           u.http_status, u.error, {finished_at}
    FROM run_updates AS u
    LEFT JOIN failed_updates AS f
           ON f.job = {job} AND f.user_id = u.user_id AND f.message_id = u.message_id AND f.dead
    WHERE u.run_id = {run_id}
    ORDER BY u.id
"""
_RUN_UPDATE_PARTS = {
    "sqlite": {"finished_at": "u.finished_at || '+00:00'", "job": ":job", "run_id": ":run_id"},
    "postgresql": {"finished_at": "u.finished_at", "job": "%(job)s", "run_id": "%(run_id)s"},
}


def run_update_rows_sql(engine: Engine) -> str:
    """The statement that reads a run's updates for the sync log, for the driver's own cursor."""
    return _RUN_UPDATE_ROWS.format(**_RUN_UPDATE_PARTS[engine.dialect.name])
