"""Warehouses the warehouse engine runs on, for real: a DuckDB file and a schema of the machine's PostgreSQL.

Tables the tests fill: ``profiles``, ``members`` (audience, user_id) and one ``trait_<name>`` table per trait
with a typed ``value`` column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PROFILE_COLUMNS = ("user_id", "anonymous_id", "email", "first_name", "last_name", "company_id", "company_name")


class SqlWarehouse:
    """A warehouse behind a SQLAlchemy URL; ``schema`` is where the engine keeps its tables."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self._execute(
            "CREATE TABLE profiles (" + ", ".join(f"{c} TEXT" for c in PROFILE_COLUMNS) + ")",
            "CREATE TABLE members (audience TEXT, user_id TEXT)",
        )

    def _execute(self, *statements: str, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        engine = create_engine(self.url)
        try:
            with engine.begin() as connection:
                for statement in statements:
                    if rows and ":" in statement:
                        connection.execute(text(statement), list(rows))
                    else:
                        connection.execute(text(statement))
        finally:
            engine.dispose()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(sql))]
        finally:
            engine.dispose()

    def execute(self, sql: str) -> None:
        self._execute(sql)

    def set_profiles(self, rows: Sequence[Mapping[str, Any]]) -> None:
        filled = [{c: row.get(c) for c in PROFILE_COLUMNS} for row in rows]
        insert = f"INSERT INTO profiles VALUES ({', '.join(':' + c for c in PROFILE_COLUMNS)})"
        self._execute("DELETE FROM profiles", *([insert] if filled else []), rows=filled)

    def set_members(self, audience: str, user_ids: Sequence[str]) -> None:
        rows = [{"a": audience, "u": u} for u in user_ids]
        delete = f"DELETE FROM members WHERE audience = '{audience}'"
        self._execute(delete, *(["INSERT INTO members VALUES (:a, :u)"] if rows else []), rows=rows)

    def set_trait(self, trait: str, values: Mapping[str, Any], kind: str = "DOUBLE PRECISION") -> None:
        rows = [{"u": u, "v": v} for u, v in values.items()]
        self._execute(
            f"DROP TABLE IF EXISTS trait_{trait}",
            f"CREATE TABLE trait_{trait} (user_id TEXT, value {kind})",
            *([f"INSERT INTO trait_{trait} VALUES (:u, :v)"] if rows else []),
            rows=rows,
        )

    def audience(self, name: str, audience: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "query": f"SELECT user_id FROM members WHERE audience = '{audience}'", **extra}

    def trait(self, name: str, trait: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "query": f"SELECT user_id, value FROM trait_{trait}", **extra}

    def source(self, engine: str = "warehouse") -> dict[str, Any]:
        return {
            "url": self.url,
            "engine": engine,
            "schema": self.schema,
            "profiles": f"SELECT {', '.join(PROFILE_COLUMNS)} FROM profiles",
        }


def vip_and_plan_job(warehouse: SqlWarehouse, webhook_url: str) -> dict[str, Any]:
    """A job reading the VIP audience and the Plan trait of ``warehouse``, with no profiles query."""
    from tests.conftest import job_dict

    audiences, traits = [warehouse.audience("VIP", "vip")], [warehouse.trait("Plan", "plan")]
    return job_dict(warehouse, webhook_url, audiences=audiences, traits=traits, profiles=False)  # type: ignore[arg-type]


def duckdb_warehouse(path: Path) -> SqlWarehouse:
    return SqlWarehouse(f"duckdb:///{path}", "audience_sync")


def postgres_warehouse(url: str) -> SqlWarehouse:
    """On a URL whose search_path names a schema of its own (the ``postgres_url`` fixture): the engine keeps
    its tables in that schema too, dropped with it."""
    options = make_url(url).query.get("options", "")
    schema = str(options).split("search_path=", 1)[1]
    return SqlWarehouse(url, schema)


def _literal(value: Any) -> str:
    """A value as Spark SQL writes it (strings with backslash escapes)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class SparkWarehouse(SqlWarehouse):
    """A database of the session's Spark cluster (its Thrift server, ``hive://``). Spark's Parquet tables take
    no DELETE: each table is written whole, from what the test set."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self.members: dict[str, list[str]] = {}
        self._execute(
            "CREATE TABLE profiles (" + ", ".join(f"{c} STRING" for c in PROFILE_COLUMNS) + ") USING parquet",
            "CREATE TABLE members (audience STRING, user_id STRING) USING parquet",
        )

    def _overwrite(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            self._execute(f"TRUNCATE TABLE {table}")
            return
        values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        self._execute(f"INSERT OVERWRITE TABLE {table} VALUES {values}")

    def set_profiles(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._overwrite("profiles", [[row.get(c) for c in PROFILE_COLUMNS] for row in rows])

    def set_members(self, audience: str, user_ids: Sequence[str]) -> None:
        self.members[audience] = list(user_ids)
        self._overwrite("members", [[a, u] for a, users in sorted(self.members.items()) for u in users])

    def set_trait(self, trait: str, values: Mapping[str, Any], kind: str = "DOUBLE") -> None:
        self._execute(
            f"DROP TABLE IF EXISTS trait_{trait}",
            f"CREATE TABLE trait_{trait} (user_id STRING, value {kind}) USING parquet",
        )
        self._overwrite(f"trait_{trait}", [[u, v] for u, v in values.items()])


def spark_warehouse(base_url: str, database: str) -> SparkWarehouse:
    """A database of its own on the cluster at ``base_url`` (hive://host:port/default), dropped by the caller;
    the engine keeps its tables in that database too."""
    engine = create_engine(base_url)
    try:
        with engine.connect() as connection:
            connection.execute(text(f"CREATE DATABASE IF NOT EXISTS {database}"))
    finally:
        engine.dispose()
    url = make_url(base_url).set(database=database).render_as_string(hide_password=False)
    return SparkWarehouse(url, database)
