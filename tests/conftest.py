"""Shared fixtures: real SQLite files, the real PostgreSQL (a fresh schema per test) and a loopback receiver."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from sync.config import Config, JobConfig, parse_config
from sync.dev.receiver import Faults, Receiver
from sync.run.runner import Runner
from sync.store import Store

POSTGRES_URL = os.environ.get("AUDIENCE_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_or_skip() -> str:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
    except OperationalError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL is required in CI: {exc}") from exc
        pytest.skip("PostgreSQL is not reachable (set AUDIENCE_SYNC_TEST_POSTGRES_URL)")
    return POSTGRES_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a schema of its own, dropped after the test."""
    base = _postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(state_url: str) -> Iterator[Store]:
    opened = Store.open(state_url)
    yield opened
    opened.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def faulty_receiver() -> Iterator[Receiver]:
    """A receiver whose faults the test sets through ``receiver.faults``."""
    with Receiver(faults=Faults()) as running:
        yield running


class Warehouse:
    """A real SQLite warehouse with generic tables that tests fill: profiles, members, trait_values."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        with self._db() as db:
            db.executescript("""
                CREATE TABLE profiles (user_id TEXT, anonymous_id TEXT, email TEXT, first_name TEXT,
                                       last_name TEXT, company_id TEXT, company_name TEXT);
                CREATE TABLE members (audience TEXT, user_id TEXT);
                CREATE TABLE trait_values (trait TEXT, user_id TEXT, value);
            """)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)

    def set_profiles(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM profiles")
            for row in rows:
                columns = ", ".join(row)
                db.execute(f"INSERT INTO profiles ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))

    def set_members(self, audience: str, user_ids: Sequence[str]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM members WHERE audience = ?", (audience,))
            db.executemany("INSERT INTO members VALUES (?, ?)", [(audience, u) for u in user_ids])

    def set_trait(self, trait: str, values: Mapping[str, Any]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM trait_values WHERE trait = ?", (trait,))
            db.executemany("INSERT INTO trait_values VALUES (?, ?, ?)", [(trait, u, v) for u, v in values.items()])

    def audience(self, name: str, audience: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "query": f"SELECT user_id FROM members WHERE audience = '{audience}'", **extra}

    def trait(self, name: str, trait: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "query": f"SELECT user_id, value FROM trait_values WHERE trait = '{trait}'", **extra}


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse.db")


def make_config(state_url: str, jobs: Sequence[Mapping[str, Any]], base_dir: Path | None = None) -> Config:
    return parse_config({"state_url": state_url, "jobs": list(jobs)}, {}, base_dir or Path("."))


def job_dict(
    warehouse: Warehouse,
    webhook_url: str,
    *,
    audiences: Sequence[Mapping[str, Any]] = (),
    traits: Sequence[Mapping[str, Any]] = (),
    name: str = "contacts",
    profiles: bool = True,
    **destination: Any,
) -> dict[str, Any]:
    source: dict[str, Any] = {"url": warehouse.url}
    if profiles:
        source["profiles"] = (
            "SELECT user_id, anonymous_id, email, first_name, last_name, company_id, company_name FROM profiles"
        )
    return {
        "name": name,
        "space_id": "spa_test",
        "source": source,
        "audiences": list(audiences),
        "traits": list(traits),
        "destination": {
            "type": "chartmogul",
            "webhook_url": webhook_url,
            "backoff_initial": "10ms",
            "backoff_max": "50ms",
            "timeout": "2s",
            "requests_per_second": 2000,  # loopback; tests of the rate limit set their own
            **destination,
        },
    }


def make_job(warehouse: Warehouse, webhook_url: str, **kwargs: Any) -> JobConfig:
    return make_config("sqlite://", [job_dict(warehouse, webhook_url, **kwargs)]).jobs[0]


class RecordingSleep:
    """Backoff sleeps are recorded and skipped: tests control time instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def runner(store: Store, sleep: RecordingSleep) -> Runner:
    return Runner(store, sleep=sleep)


class Gate:
    """A receiver hook that holds requests until ``open()``; ``arrived`` is set when the first one is held.

    ``after`` requests pass before the gate starts holding. Every wait is bounded by ``timeout``.
    """

    def __init__(self, after: int = 0, timeout: float = 20.0) -> None:
        self.after = after
        self.timeout = timeout
        self.seen = 0
        self.arrived = threading.Event()
        self._open = threading.Event()
        self._lock = threading.Lock()

    def open(self) -> None:
        self._open.set()

    def __call__(self, body: Mapping[str, Any]) -> None:
        with self._lock:
            self.seen += 1
            hold = self.seen > self.after
        if hold:
            self.arrived.set()
            self._open.wait(self.timeout)
        return None


class LogWatch:
    """Sets ``seen`` when a log record with this message is emitted, from any thread."""

    def __init__(self, message: str, logger: str = "sync") -> None:
        self.message = message
        self.seen = threading.Event()
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()
        watch = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith(watch.message):
                    with watch._changed:
                        watch.records.append(record)
                        watch.seen.set()
                        watch._changed.notify_all()

        self._handler = Handler()
        self._logger = logging.getLogger(logger)

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        """Wait until ``count`` matching records were emitted."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.records) >= count, timeout)

    def __enter__(self) -> LogWatch:
        self._logger.addHandler(self._handler)
        self._previous = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._previous)


def kill_run_when(config: Path, reached: threading.Event, env: Mapping[str, str] | None = None) -> None:
    """Start `audience-sync run contacts` on ``config`` in a process of its own and SIGKILL it once ``reached``
    is set (within a minute); the process's environment is this one without a state URL override, plus ``env``."""
    environment = {**{k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "run", "contacts"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    try:
        assert reached.wait(60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()


ACCOUNTS = [f"g{i:02d}" for i in range(8)]


class AccountWarehouse:
    """A real SQLite warehouse of accounts: their fields, audience members and trait values by group_id."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self._path = path
        with sqlite3.connect(path) as db:
            db.executescript("""
                CREATE TABLE accounts (group_id TEXT, user_id TEXT, name TEXT, email TEXT, website TEXT,
                                       created_at TEXT, street TEXT, city TEXT, country TEXT);
                CREATE TABLE members (audience TEXT, group_id TEXT);
                CREATE TABLE seats (group_id TEXT, value INTEGER);
            """)

    def seed(self, accounts: list[str] = ACCOUNTS) -> None:
        with sqlite3.connect(self._path) as db:
            db.execute("DELETE FROM accounts")
            for index, group in enumerate(accounts):
                address = ("1 Main St", "Berlin", "DE") if index % 2 == 0 else (None, None, None)
                db.execute(
                    "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (group, f"owner-{group}", f"Company {group}", f"billing@{group}.example",
                     f"https://{group}.example", "2024-03-01T00:00:00Z", *address),
                )  # fmt: skip
        self.members("enterprise", accounts[:5])
        with sqlite3.connect(self._path) as db:
            db.execute("DELETE FROM seats")
            db.executemany("INSERT INTO seats VALUES (?, ?)", [(g, 10 * (i + 1)) for i, g in enumerate(accounts)])

    def members(self, audience: str, groups: list[str]) -> None:
        with sqlite3.connect(self._path) as db:
            db.execute("DELETE FROM members WHERE audience = ?", (audience,))
            db.executemany("INSERT INTO members VALUES (?, ?)", [(audience, g) for g in groups])

    def job(self, destination: dict[str, Any], **extra: Any) -> JobConfig:
        raw = {
            "name": "accounts",
            "subject": "account",
            "space_id": "spa_test",
            "source": {
                "url": self.url,
                "profiles": "SELECT group_id, user_id, name, email, website, created_at, street, city, country "
                "FROM accounts",
            },
            "audiences": [
                {"name": "Enterprise", "query": "SELECT group_id FROM members WHERE audience = 'enterprise'"}
            ],
            "traits": [{"name": "Seats", "query": "SELECT group_id, value FROM seats"}],
            "destination": {
                "backoff_initial": "10ms",
                "backoff_max": "50ms",
                "requests_per_second": 2000,
                **destination,
            },
            **extra,
        }
        return make_config("sqlite://", [raw]).jobs[0]


@pytest.fixture
def accounts(tmp_path: Path) -> AccountWarehouse:
    return AccountWarehouse(tmp_path / "accounts.db")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SparkCluster:
    """The session's Spark cluster: its URL, and (when this session started it) the settings scripts/spark.sh
    was given, to act on its processes."""

    def __init__(self, url: str, env: dict[str, str] | None) -> None:
        self.url, self.env = url, env

    def worker_pid(self, number: int) -> int | None:
        if self.env is None:
            return None
        pids = Path(self.env["SPARK_DIR"]) / "pids"
        found = list(pids.glob(f"*Worker-{number}.pid"))
        return int(found[0].read_text()) if found else None

    def start_worker(self, number: int) -> None:
        """A worker started again (the script's start of it, alone)."""
        assert self.env is not None
        home = subprocess.run(
            [self.env["PYTHON"], "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        master = f"spark://127.0.0.1:{self.env['SPARK_MASTER_PORT']}"
        env = {**self.env, "SPARK_HOME": home, "SPARK_LOG_DIR": f"{self.env['SPARK_DIR']}/logs",
               "SPARK_PID_DIR": f"{self.env['SPARK_DIR']}/pids", "SPARK_IDENT_STRING": "audience-sync",
               "SPARK_WORKER_DIR": f"{self.env['SPARK_DIR']}/work-{number}"}  # fmt: skip
        subprocess.run(
            [f"{home}/sbin/spark-daemon.sh", "start", "org.apache.spark.deploy.worker.Worker", str(number),
             "--host", "127.0.0.1", "--cores", "1", "--memory", "1g", master],
            env=env, capture_output=True, check=True, timeout=60,
        )  # fmt: skip


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark cluster for the session (scripts/spark.sh: a master, two workers of one core, the Thrift
    server), on ports of its own; its URL ``hive://127.0.0.1:PORT/default``. AUDIENCE_SYNC_TEST_SPARK_URL
    names a running one instead. Skipped where Java or pyspark is missing, outside CI only."""
    import shutil

    if os.environ.get("AUDIENCE_SYNC_TEST_SPARK_URL"):
        yield SparkCluster(os.environ["AUDIENCE_SYNC_TEST_SPARK_URL"], None)
        return
    missing = [what for what, ok in (("Java", shutil.which("java")), ("pyspark", _importable("pyspark"))) if not ok]
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError(f"the Spark tests need {' and '.join(missing)} in CI")
        pytest.skip(f"{' and '.join(missing)} not installed: the Spark tests need both")
    folder = tmp_path_factory.mktemp("spark")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SPARK_DIR": str(folder),
        "SPARK_THRIFT_PORT": str(port),
        "SPARK_MASTER_PORT": str(_free_port()),
        "SPARK_WEBUI_PORT": str(_free_port()),
    }
    script = Path(__file__).resolve().parents[1] / "scripts" / "spark.sh"
    started = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield SparkCluster(f"hive://127.0.0.1:{port}/default", env)
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=120)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
