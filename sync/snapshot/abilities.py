"""What each warehouse the warehouse engine runs on can do, decided here and nowhere else: whether its tables
take ``DELETE`` (plain Spark tables, Parquet without Delta, do not: a table is rewritten instead, as a new table
swapped in), whether it has ``MERGE`` (Databricks' Delta tables), how rows are bulk-loaded, and whether its
``CREATE TABLE`` takes constraints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Abilities:
    deletes: bool = True  # DELETE ... WHERE on the engine's tables
    merge: bool = False  # MERGE INTO: the copy is patched by one MERGE
    # How rows go in: PostgreSQL's COPY, DuckDB's scan of an Arrow table, multi-row INSERT ... VALUES
    # statements (Spark: one statement is one job, so rows go in thousands at a time), or batched INSERTs.
    bulk: Literal["copy", "arrow", "values", "insert"] = "insert"
    constraints: bool = True  # NOT NULL and PRIMARY KEY in CREATE TABLE
    # How to tell that a table exists: the dialect's own inspection, or SHOW TABLES (PyHive's inspection knows
    # Hive's answer for a missing table, not Spark's).
    table_check: Literal["inspect", "show tables"] = "inspect"


_ABILITIES = {
    "postgresql": Abilities(bulk="copy"),
    "duckdb": Abilities(bulk="arrow"),
    "hive": Abilities(deletes=False, bulk="values", constraints=False, table_check="show tables"),  # Spark
    "databricks": Abilities(merge=True, bulk="values", constraints=False),
}


def abilities(dialect: str) -> Abilities:
    """The abilities of the warehouse whose SQLAlchemy dialect is called ``dialect``."""
    return _ABILITIES.get(dialect, Abilities())
