"""The warehouse engine on a Spark cluster: scale-out, rows read out, memory, and the local engine beside it.

    .venv/bin/python bench/spark.py --users 1000000 [--churn 0.01] [--repeat 3]

Two clusters from the installed pyspark (scripts/spark.sh), each a standalone master, its workers of one core
and its Thrift server: one with ONE worker, one with TWO. Each holds the same generated tables (N users, ten
audiences of 5–40 % of them, a text trait of every user; ``aud_0_c`` is audience 0 with a share ``churn`` of the
users flipped), written by Spark itself from ``range(N)``. One state store (PostgreSQL) holds every user
acknowledged as the tables are before the churn, with the fingerprints Spark computes (the engine's own
statement); each cluster's copy of them is built by an unmeasured first run.

Measured, interleaved ``--repeat`` times, each an incremental dry run in a process of its own (it plans and
records the plan, sends nothing, leaves the state as it was): the warehouse engine on one worker and on two,
and the local engine (every row read out through the Thrift server) on two. Reported: medians, the two-worker
time as a share of the one-worker time, the rows read out, each process's peak RSS, and the seconds spent
inside Spark (the ``warehouse diff`` part of a run). Beside them, the floor: a query Spark can spread perfectly
(a distinct count over 30 N generated rows) on one worker and on two, what this machine's two cores can give.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sync.config import JobConfig, parse_config  # noqa: E402
from sync.sources import computations  # noqa: E402

POSTGRES = os.environ.get("AUDIENCE_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STATES = {"warehouse": "bench_spark_wh", "local": "bench_spark_local"}  # a state store per engine
DATABASE = "bench"
SHARES = [0.05 + i * 0.35 / 9 for i in range(10)]


def state_url(engine: str) -> str:
    options = {"options": f"-csearch_path={STATES[engine]}"}
    return make_url(POSTGRES).update_query_dict(options).render_as_string(hide_password=False)


def job(url: str, engine: str) -> JobConfig:
    audiences = [{"name": f"audience_{k}", "query": f"SELECT user_id FROM aud_{k}"} for k in range(10)]
    audiences[0]["query"] = "SELECT user_id FROM aud_0_c"
    raw = {
        "name": "bench",
        "source": {"url": url, "engine": engine, "schema": DATABASE, "profiles": "SELECT user_id, email FROM users"},
        "audiences": audiences,
        "traits": [{"name": "plan", "query": "SELECT user_id, value FROM plan"}],
        "destination": {"type": "chartmogul", "webhook_url": "http://127.0.0.1:9/hook"},
    }
    return parse_config({"state_url": state_url(engine), "jobs": [raw]}, {}, ROOT).jobs[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster(folder: Path, workers: int) -> tuple[str, dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SPARK_DIR": str(folder),
        "SPARK_WORKERS": str(workers),
        "SPARK_WORKER_MEMORY": "2g",
        "SPARK_THRIFT_PORT": str(port),
        "SPARK_MASTER_PORT": str(free_port()),
        "SPARK_WEBUI_PORT": str(free_port()),
    }
    subprocess.run(["bash", str(ROOT / "scripts" / "spark.sh"), "start"], env=env, check=True)
    return f"hive://127.0.0.1:{port}/{DATABASE}", env


def spark(url: str, *statements: str) -> None:
    engine = create_engine(make_url(url).set(database="default"))
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for statement in statements:
            cursor.execute(statement)  # no parameters: PyHive leaves % alone
    engine.dispose()


def generate(url: str, users: int, churn: float) -> None:
    """The tables, written by Spark from range(N); the same formulas as the state store's seed."""
    every = round(1 / churn) if churn else 0
    statements = [
        f"DROP DATABASE IF EXISTS {DATABASE} CASCADE",
        f"CREATE DATABASE {DATABASE}",
        f"CREATE TABLE {DATABASE}.users USING parquet AS SELECT id AS n, concat('u', lpad(CAST(id AS STRING), 10, "
        f"'0')) AS user_id, concat('u', CAST(id AS STRING), '@example.com') AS email FROM range({users})",
    ]
    for k, share in enumerate(SHARES):
        statements.append(
            f"CREATE TABLE {DATABASE}.aud_{k} USING parquet AS SELECT n, user_id FROM {DATABASE}.users "
            f"WHERE pmod(n * 31 + {k} * 7919, 1000) < {int(share * 1000)}"
        )
    flipped = f"n % {every} = 3" if every else "false"
    statements += [
        f"CREATE TABLE {DATABASE}.plan USING parquet AS SELECT n, user_id, element_at(array('free', 'starter', "
        f"'growth', 'enterprise'), CAST(n % 4 AS INT) + 1) AS value FROM {DATABASE}.users",
        f"CREATE TABLE {DATABASE}.aud_0_c USING parquet AS SELECT user_id FROM {DATABASE}.aud_0 WHERE NOT ({flipped}) "
        f"UNION ALL SELECT u.user_id FROM {DATABASE}.users u LEFT ANTI JOIN {DATABASE}.aud_0 a ON a.n = u.n "
        f"WHERE {flipped.replace('n %', 'u.n %')}",
    ]
    spark(url, *statements)


def seed(url: str, engine: str) -> None:
    """An engine's state store: every user acknowledged as the tables are before the churn, with that engine's
    fingerprints (the warehouse engine's computed by Spark with its own statement, the local engine's by
    reading every row out once)."""
    from sync.snapshot import pushdown, warehouse
    from sync.sources import read_snapshot
    from sync.store import Store

    schema = STATES[engine]
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()
    now = job(url, engine)
    base = now.model_copy(
        update={"audiences": tuple(a.model_copy(update={"query": f"SELECT user_id FROM aud_{k}"})
                                   for k, a in enumerate(now.audiences))}
    )  # fmt: skip
    store = Store.open(state_url(engine))
    run_id = store.start_run("bench", "initial", False, _now())
    store.set_tracked_keys("bench", computations(base), run_id)
    store.finish_run(run_id, "succeeded", {}, _now(), None, [])
    hive = create_engine(url)
    fingerprints = pushdown.fingerprints(warehouse.queries(base, set())).compile(
        hive, compile_kwargs={"literal_binds": True}
    )
    members = ", ".join(f"'audience_{k}', IF(a{k}.n IS NOT NULL, true, NULL)" for k in range(10))
    joins = " ".join(f"LEFT JOIN aud_{k} a{k} ON a{k}.n = u.n" for k in range(10))
    fp = "f.fp" if engine == "warehouse" else "CAST(NULL AS BIGINT)"
    states = (
        f"SELECT u.user_id, to_json(named_struct({members}, 'plan', p.value)) AS state, "
        f"to_json(named_struct('email', u.email)) AS profile, {fp} AS fp FROM users u {joins} "
        f"LEFT JOIN plan p ON p.n = u.n LEFT JOIN ({fingerprints}) f ON f.sid = u.user_id"
    )
    local: dict[str, int] = {}
    if engine == "local":
        table = read_snapshot(base).everyone().table
        local = dict(zip(table.column("user_id").to_pylist(), table.column("fp").to_pylist(), strict=True))
    pg = create_engine(state_url(engine))
    stamp = _now()
    with hive.connect() as source, pg.begin() as target:
        driver: Any = target.connection.driver_connection
        cursor = source.exec_driver_sql(states)
        with driver.cursor().copy(
            "COPY ack_state (job, user_id, state, profile, version, run_id, updated_at, fingerprint) FROM STDIN"
        ) as copying:
            while rows := cursor.fetchmany(50_000):
                for user_id, state, profile, found in rows:
                    copying.write_row(("bench", user_id, state, profile, 1, run_id, stamp, local.get(user_id, found)))
    hive.dispose()
    pg.dispose()
    store.index_fingerprints("bench", run_id)
    store.close()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def parallel_floor(url: str, rows: int) -> float:
    """Seconds of a query Spark can spread perfectly (a distinct count over ``rows`` generated rows): what two
    one-core workers can gain over one on this machine, beside its own driver and this client."""
    engine = create_engine(url)
    with engine.connect() as connection:
        begun = time.perf_counter()
        connection.exec_driver_sql(f"SELECT count(DISTINCT pmod(hash(id), 1000003)) FROM range({rows})").fetchall()
        took = time.perf_counter() - begun
    engine.dispose()
    return took


def measure(url: str, engine: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", engine, "--url", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def one(url: str, engine: str) -> None:
    from bench.warehouse import dry_run

    print(json.dumps(dry_run(job(url, engine), state_url(engine))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", choices=["local", "warehouse"])
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.one:
        one(args.url, args.one)
        return
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        one_url, one_env = cluster(Path(folder) / "one", 1)
        two_url, two_env = cluster(Path(folder) / "two", 2)
        try:
            for url in (one_url, two_url):
                generate(url, args.users, args.churn)
            for engine in STATES:
                seed(two_url, engine)
            for url in (one_url, two_url):
                measure(url, "warehouse")  # builds that cluster's copy: not measured
            print(f"set up {args.users:,} users in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            runs: dict[str, list[dict[str, Any]]] = {"one worker": [], "two workers": [], "local, two workers": []}
            floor: dict[str, list[float]] = {"one worker": [], "two workers": []}
            for _ in range(args.repeat):
                runs["one worker"].append(measure(one_url, "warehouse"))
                runs["two workers"].append(measure(two_url, "warehouse"))
                runs["local, two workers"].append(measure(two_url, "local"))
                floor["one worker"].append(parallel_floor(one_url, args.users * 30))
                floor["two workers"].append(parallel_floor(two_url, args.users * 30))
        finally:
            for env in (one_env, two_env):
                subprocess.run(["bash", str(ROOT / "scripts" / "spark.sh"), "stop"], env=env, check=False)
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    figures: dict[str, Any] = {"users": args.users, "churn": args.churn, "repeat": args.repeat}
    for name, rs in runs.items():
        figures[f"{name}: median s"] = round(medians[name], 1)
        figures[f"{name}: peak RSS MiB"] = round(max(r["rss_mb"] for r in rs))
        if rs[0]["warehouse_seconds"] is not None:
            figures[f"{name}: in Spark s"] = round(statistics.median(r["warehouse_seconds"] for r in rs), 1)
            figures[f"{name}: rows read out"] = int(rs[0]["rows_read"])
    figures["updates planned"] = runs["two workers"][0]["updates"]
    for name, seconds in floor.items():
        figures[f"{name}: a query with nothing to do but spread, median s"] = round(statistics.median(seconds), 2)
    figures["that query: two workers / one worker (the machine's own scale-out)"] = round(
        statistics.median(floor["two workers"]) / statistics.median(floor["one worker"]), 2
    )
    figures["two workers / one worker"] = round(medians["two workers"] / medians["one worker"], 2)
    figures["warehouse engine / local engine (two workers)"] = round(
        medians["two workers"] / medians["local, two workers"], 2
    )
    from bench.run import print_figures

    print_figures(figures)


if __name__ == "__main__":
    main()
