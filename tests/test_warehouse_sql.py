"""The warehouse engine's statements: run on PostgreSQL and DuckDB, whose hashes must agree with each other
and with the scheme computed here; compiled, not run, by the Snowflake, BigQuery, Redshift and Trino
dialects (installed from the package index), and each statement parsed back by sqlglot in that dialect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from sync.config import JobConfig
from sync.snapshot import pushdown
from sync.snapshot.warehouse import compiled
from tests.conftest import make_config


def warehouse_job(url: str = "duckdb:///w.duckdb", **extra: Any) -> JobConfig:
    job = {
        "name": "contacts",
        "space_id": "spa",
        "source": {"url": url, "engine": "warehouse", "profiles": "SELECT user_id, email, plan FROM people"},
        "audiences": [{"name": "VIP", "query": "SELECT user_id FROM vips"}],
        "traits": [{"name": "LTV", "query": "SELECT user_id, value FROM ltv"}],
        "destination": {"type": "chartmogul", "webhook_url": "http://127.0.0.1:9/hook"},
        **extra,
    }
    return make_config("sqlite://", [job]).jobs[0]


def scheme_fingerprint(*texts: str) -> int:
    return sum(pushdown.constant(t) for t in texts) % pushdown.MODULUS


QUERIES = [
    pushdown.Query("SELECT 'u1' AS user_id UNION ALL SELECT 'u2' AS user_id", "user_id", (pushdown.Item("vip", None),)),
    pushdown.Query(
        "SELECT 'u1' AS user_id, 'gold' AS value UNION ALL SELECT 'u3' AS user_id, NULL AS value",
        "user_id",
        (pushdown.Item("plan", "value"),),
    ),
    pushdown.Query("SELECT 'u4' AS user_id, 'x' AS email", "user_id", ()),
]


def run_fingerprints(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {str(s): int(f) for s, f, _ in connection.execute(pushdown.fingerprints(QUERIES))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("warehouse", ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_fingerprints_follow_the_scheme_on_real_warehouses(
    warehouse: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"duckdb:///{tmp_path / 'w.duckdb'}" if warehouse == "duckdb" else request.getfixturevalue("postgres_url")
    assert run_fingerprints(url) == {
        "u1": scheme_fingerprint("vip:", "plan:gold"),
        "u2": scheme_fingerprint("vip:"),
        "u3": 0,  # a null value adds nothing, but the subject is there
        "u4": 0,  # a profile alone: counted, nothing to send
    }


DIALECTS = {
    "snowflake://account/db": ("snowflake", "TO_NUMBER(SUBSTR(MD5("),
    "bigquery://project/dataset": ("bigquery", "CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5("),
    "redshift+psycopg2://host/db": ("redshift", "STRTOL(SUBSTRING(MD5("),
    "trino://host/catalog": ("trino", "from_base(substr(to_hex(md5(to_utf8("),
    "postgresql+psycopg://host/db": ("postgres", "CAST(CAST('x' || substr(md5("),
    "duckdb:///w.duckdb": ("duckdb", "CAST('0x' || substr(md5("),
    "hive://host:10000/default": ("spark", "CAST(conv(substr(md5("),
    "databricks://token:x@host?http_path=/sql/1.0/warehouses/w&catalog=main&schema=default": (
        "databricks",
        "CAST(conv(substr(md5(",
    ),
}


@pytest.mark.filterwarnings("ignore:Trino does not support PRIMARY KEY")
@pytest.mark.parametrize("url", list(DIALECTS))
def test_every_statement_compiles_and_parses_in_its_dialect(url: str) -> None:
    reader, hashing = DIALECTS[url]
    job = warehouse_job(send_profile_changes=True, enrich=["plan"])
    statements = compiled(job, make_url(url).get_dialect()())
    assert {"fingerprint", "compare", "read out 0", "read out 2", "patch copy 0", "count members"} <= set(statements)
    for what, sql in statements.items():
        parsed = sqlglot.parse_one(sql, read=reader)
        assert parsed is not None, what
    fingerprint = statements["fingerprint"]
    assert hashing in fingerprint
    assert "FULL OUTER JOIN" in statements["compare"]
    assert "'ltv:'" in fingerprint and "'profile.plan:'" in fingerprint  # the profile field, hashed as a trait
    assert str(pushdown.constant("vip:")) in fingerprint  # a membership is a constant, no hashing per row


def test_values_are_cast_to_whole_text_where_a_bare_varchar_is_short() -> None:
    redshift = compiled(warehouse_job(), make_url("redshift+psycopg2://host/db").get_dialect()())
    assert "AS VARCHAR(65535))" in redshift["fingerprint"]
    bigquery = compiled(warehouse_job(), make_url("bigquery://project/dataset").get_dialect()())
    assert "AS STRING)" in bigquery["fingerprint"] and "`audience_sync`.`as_contacts_" in bigquery["compare"]


def test_what_a_warehouse_cannot_do_decides_how_the_copy_is_patched() -> None:
    """Spark's plain tables take no DELETE: the copy is rewritten and swapped in; Databricks' Delta tables are
    patched by one MERGE; the others delete and insert."""
    spark = compiled(warehouse_job(), make_url("hive://host:10000/default").get_dialect()())
    patch = [spark[k] for k in sorted(spark) if k.startswith("patch copy")]
    assert [p.split(" ")[0] for p in patch] == ["DROP", "CREATE", "DROP", "ALTER"]
    assert "LEFT OUTER JOIN" in patch[1] and "UNION ALL" in patch[1] and "RENAME TO" in patch[3]
    assert "PRIMARY KEY" not in spark["create copies table"]
    databricks = compiled(
        warehouse_job(), make_url("databricks://token:x@host?http_path=/p&catalog=c&schema=s").get_dialect()()
    )
    merge = [databricks[k] for k in databricks if k.startswith("patch copy")]
    assert len(merge) == 1 and merge[0].startswith("MERGE INTO")
    postgres = compiled(warehouse_job(), make_url("postgresql+psycopg://host/db").get_dialect()())
    assert [postgres[k].split(" ")[0] for k in sorted(postgres) if k.startswith("patch copy")] == ["DELETE", "INSERT"]


def test_another_dialect_is_refused_when_compiling() -> None:
    with pytest.raises(NotImplementedError, match="does not run on mysql"):
        compiled(warehouse_job(), make_url("mysql+pymysql://host/db").get_dialect()())
