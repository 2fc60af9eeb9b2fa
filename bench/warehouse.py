"""The warehouse engine against the local engine, on one PostgreSQL warehouse and the same acknowledged state.

    .venv/bin/python bench/warehouse.py --users 1000000 [--churn 0.001 0.01 0.1] [--repeat 3]

The warehouse (schema ``bench_wh_src`` of the machine's PostgreSQL): N users, 10 audiences with 5–40 %
membership, a number trait (98 % of users) and a text trait (all), profiles with an email; generated in SQL,
deterministically. Each engine has a state store of its own (PostgreSQL schemas ``bench_wh_local`` and
``bench_wh_pushdown``) seeded with every user acknowledged as the warehouse has them, with that engine's
fingerprints (seeding is not measured). Churn ``c`` rewrites the tables the job reads: a share ``c`` of the
users flips its membership of one audience and another ``c`` gets a new number.

Each measured run is an incremental dry run (it plans and records the plan, sends nothing and leaves the
state as it was, so every repetition sees the same churn) in a process of its own, whose own peak RSS
(``VmHWM``) is reported. For the warehouse engine the time the warehouse spent and the rows read out are
reported too. Figures are medians of ``--repeat`` runs, engines interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sync.config import JobConfig, parse_config  # noqa: E402
from sync.run.report import RunOptions  # noqa: E402
from sync.sources import computations  # noqa: E402

BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SOURCE, LOCAL, PUSHDOWN = "bench_wh_src", "bench_wh_local", "bench_wh_pushdown"
SESSION: list[str] = []  # source.session of both engines' jobs (--session)


def sized(users: int) -> None:
    """Schemas of their own per size, so that a smoke run never replaces a large run's warehouse."""
    global SOURCE, LOCAL, PUSHDOWN
    SOURCE, LOCAL, PUSHDOWN = (f"bench_wh{users}_{part}" for part in ("src", "local", "pushdown"))


SHARES = [0.05 + i * 0.35 / 9 for i in range(10)]
PLANS = ("free", "starter", "growth", "enterprise")


def url(schema: str) -> str:
    return make_url(BASE).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)


def state(engine: str) -> str:
    return url(LOCAL if engine == "local" else PUSHDOWN)


def job(engine: str) -> JobConfig:
    audiences = [{"name": f"audience_{k}", "query": f"SELECT user_id FROM aud_{k}"} for k in range(10)]
    audiences[0]["query"] = "SELECT user_id FROM aud_0_c"
    raw = {
        "name": "bench",
        "space_id": "spa_bench",
        "source": {
            "url": url(SOURCE),
            "engine": engine,
            "schema": PUSHDOWN + "_copy",
            "profiles": "SELECT user_id, email FROM users",
            "session": list(SESSION),
        },
        "audiences": audiences,
        "traits": [
            {"name": "ltv", "query": "SELECT user_id, value FROM ltv_c"},
            {"name": "plan", "query": "SELECT user_id, value FROM plan"},
        ],
        "destination": {"type": "chartmogul", "webhook_url": "http://127.0.0.1:9/hook"},
    }
    return parse_config({"state_url": state(engine), "jobs": [raw]}, {}, ROOT).jobs[0]


def execute(sql: str, schema: str | None = None) -> None:
    engine = create_engine(url(schema or SOURCE), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for statement in sql.split(";\n"):
            if statement.strip():
                connection.execute(text(statement))
    engine.dispose()


def generate(users: int) -> None:
    execute(f"DROP SCHEMA IF EXISTS {SOURCE} CASCADE;\nCREATE SCHEMA {SOURCE}", "public")
    statements = [
        "CREATE TABLE users AS SELECT n, 'u' || lpad(n::text, 10, '0') AS user_id, "
        f"'u' || n || '@example.com' AS email FROM generate_series(0, {users - 1}) n"
    ]
    for k, share in enumerate(SHARES):
        statements.append(
            f"CREATE TABLE aud_{k} AS SELECT n, user_id FROM users WHERE abs(hashint8(n::bigint * 31 + {k})) % 1000 < "
            f"{int(share * 1000)}"
        )
    statements += [
        "CREATE TABLE ltv AS SELECT n, user_id, ((n::bigint * 7919) % 100000) / 100.0::float8 AS value FROM users "
        "WHERE n % 50 <> 7",
        "CREATE TABLE plan AS SELECT n, user_id, (ARRAY['free','starter','growth','enterprise'])[1 + n % 4] "
        "AS value FROM users",
    ]
    execute(";\n".join(statements))
    churn(0.0)


def churn(share: float) -> None:
    """``aud_0_c`` and ``ltv_c``: the base tables with a share of their users changed (none at 0)."""
    every = round(1 / share) if share else 0
    picked = f"n % {every} = 3" if every else "false"
    valued = f"n % {every} = 5" if every else "false"
    execute(
        ";\n".join(
            [
                "DROP TABLE IF EXISTS aud_0_c",
                "DROP TABLE IF EXISTS ltv_c",
                f"CREATE TABLE aud_0_c AS SELECT user_id FROM aud_0 WHERE NOT ({picked}) UNION ALL "
                f"SELECT user_id FROM users u WHERE {picked} AND NOT EXISTS (SELECT 1 FROM aud_0 a WHERE a.n = u.n)",
                f"CREATE TABLE ltv_c AS SELECT user_id, CASE WHEN {valued} THEN value + 1 ELSE value END AS value "
                "FROM ltv",
                "ANALYZE",
            ]
        )
    )


def seed() -> None:
    """Both state stores: every user acknowledged as the warehouse has them, with each engine's fingerprints."""
    from sync.snapshot import pushdown, warehouse
    from sync.sources import read_snapshot
    from sync.store import Store

    members = ", ".join(f"'audience_{k}', CASE WHEN a{k}.n IS NOT NULL THEN true END" for k in range(10))
    joins = " ".join(f"LEFT JOIN aud_{k} a{k} ON a{k}.n = u.n" for k in range(10))
    states = (
        f"SELECT u.user_id, jsonb_strip_nulls(jsonb_build_object({members}, 'ltv', l.value, 'plan', p.value))::text "
        "AS state, jsonb_build_object('email', u.email)::text AS profile "
        f"FROM users u {joins} LEFT JOIN ltv l ON l.n = u.n LEFT JOIN plan p ON p.n = u.n"
    )
    execute(f"DROP TABLE IF EXISTS seeded;\nCREATE TABLE seeded AS {states}")
    for engine, schema in (("local", LOCAL), ("warehouse", PUSHDOWN)):
        execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE;\nCREATE SCHEMA {schema}", "public")
        found = job(engine)
        store = Store.open(state(engine))
        run_id = store.start_run("bench", "initial", False, _now())
        store.set_tracked_keys("bench", computations(found), run_id)
        store.finish_run(run_id, "succeeded", {}, _now(), None, [])
        execute(
            f"INSERT INTO {schema}.ack_state (job, user_id, state, profile, version, run_id, updated_at) "
            f"SELECT 'bench', user_id, state, profile, 1, {run_id}, now() FROM {SOURCE}.seeded"
        )
        if engine == "local":
            _load_fingerprints(schema, read_snapshot(found).everyone().table.select(["user_id", "fp"]))
            store.index_fingerprints("bench", run_id)
        else:  # the same statement a run sends, inside the warehouse
            engine_ = create_engine(url(SOURCE))
            fingerprints = pushdown.fingerprints(warehouse.queries(found, set())).compile(
                engine_, compile_kwargs={"literal_binds": True}
            )
            engine_.dispose()
            execute(
                f"UPDATE {schema}.ack_state a SET fingerprint = f.fp FROM ({fingerprints}) f "
                "WHERE a.job = 'bench' AND a.user_id = f.sid"
            )
        store.close()


def _load_fingerprints(schema: str, table: pa.Table) -> None:
    engine = create_engine(url(schema))
    with engine.begin() as connection:
        driver: Any = connection.connection.driver_connection
        connection.exec_driver_sql("CREATE TEMP TABLE fps (user_id text, fp bigint)")
        with driver.cursor().copy("COPY fps (user_id, fp) FROM STDIN") as copying:
            for user_id, fp in zip(table.column("user_id").to_pylist(), table.column("fp").to_pylist(), strict=True):
                copying.write_row((user_id, fp))
        connection.exec_driver_sql(
            "UPDATE ack_state a SET fingerprint = f.fp FROM fps f WHERE a.job = 'bench' AND a.user_id = f.user_id"
        )
    engine.dispose()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def measure(engine: str, users: int) -> dict[str, Any]:
    """One incremental dry run in a process of its own."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--one", engine, "--users", str(users)),
            *(a for statement in SESSION for a in ("--session", statement)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def one(engine: str) -> None:
    print(json.dumps(dry_run(job(engine), state(engine))))


def dry_run(found: JobConfig, state_url: str) -> dict[str, Any]:
    """One incremental dry run of ``found`` (forced past the guard): its seconds, this process's peak RSS,
    the updates planned and, for the warehouse engine, the seconds inside the warehouse and the rows read out."""
    import logging

    from bench.memory import peak_rss_mb
    from sync.run.runner import Runner
    from sync.store import Store

    seconds: dict[str, float] = {}

    class Timing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "warehouse diff":
                seconds["warehouse"] = float(record.__dict__["seconds"])
                seconds["rows_read"] = float(record.__dict__["rows_read"])

    logging.getLogger("sync.snapshot.warehouse").addHandler(Timing())
    logging.getLogger("sync.snapshot.warehouse").setLevel(logging.DEBUG)
    store = Store.open(state_url)
    started = time.perf_counter()
    report = Runner(store).run(found, RunOptions(dry_run=True, force=True))
    elapsed = time.perf_counter() - started
    store.close()
    assert report.status == "planned", report.error
    return {
        "seconds": elapsed,
        "rss_mb": peak_rss_mb(),
        "updates": report.updates,
        "users": report.users,
        "warehouse_seconds": seconds.get("warehouse"),
        "rows_read": seconds.get("rows_read"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--churn", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", choices=["local", "warehouse"])
    parser.add_argument("--reuse", action="store_true", help="Keep the warehouse and stores of the last run.")
    parser.add_argument("--session", action="append", default=[], help="a source.session statement (both engines)")
    args = parser.parse_args()
    sized(args.users)
    SESSION[:] = args.session
    if args.one:
        one(args.one)
        return
    if not args.reuse:
        started = time.perf_counter()
        generate(args.users)
        seed()
        print(f"generated and seeded {args.users:,} users in {time.perf_counter() - started:.0f} s", flush=True)
    for share in args.churn:
        churn(share)
        measure("warehouse", args.users)  # brings the warehouse copy up to date: not measured
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "warehouse": []}
        for _ in range(args.repeat):
            for engine in runs:
                runs[engine].append(measure(engine, args.users))
        local = statistics.median(r["seconds"] for r in runs["local"])
        pushed = statistics.median(r["seconds"] for r in runs["warehouse"])
        print(
            f"churn {share:.1%}: updates {runs['local'][0]['updates']:,} (local) / {runs['warehouse'][0]['updates']:,} "
            f"(warehouse); local {local:.1f} s, {max(r['rss_mb'] for r in runs['local']):,.0f} MiB; "
            f"warehouse engine {pushed:.1f} s ({pushed / local:.2f} × local), "
            f"{max(r['rss_mb'] for r in runs['warehouse']):,.0f} MiB, in the warehouse "
            f"{statistics.median(r['warehouse_seconds'] for r in runs['warehouse']):.1f} s, "
            f"{int(runs['warehouse'][0]['rows_read']):,} rows read out "
            f"(medians of {args.repeat})",
            flush=True,
        )
    churn(0.0)


if __name__ == "__main__":
    main()
