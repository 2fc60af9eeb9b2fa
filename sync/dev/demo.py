"""The demo: a small SQLite shop warehouse, synced twice to a loopback receiver, with the results shown.

Day 0 is the initial sync; then a day of activity happens (orders, sign-ups, plan changes, deletions)
and an incremental sync sends only what changed.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console

from sync.audit.display import print_table
from sync.audit.queries import CHANGE_FIELDS, RUN_TABLE_FIELDS, change_records, run_record, run_table_row
from sync.config import ChartMogulApiConfig, JobConfig, load_config
from sync.dev.chartmogul_account import Account
from sync.dev.chartmogul_api import ChartMogulApiReceiver
from sync.dev.receiver import Receiver
from sync.errors import ConfigError, SyncError
from sync.reconcile.reconcile import Options, reconcile
from sync.run.report import EXIT_FAILED, EXIT_USAGE, RunOptions, RunReport
from sync.run.runner import Runner
from sync.store import AuditFilter, Store

DEMO_JOB = "contacts"
DEMO_ACCOUNTS_JOB = "accounts"  # an account-level job, when the configuration has one: group calls
DEMO_USERS = 3000
DEMO_API_KEY = "demo-api-key"  # the loopback ChartMogul-API-compatible receiver's key
# Loopback only; against ChartMogul the job's own limit (40 requests/s by default) applies.
DEMO_REQUESTS_PER_SECOND = 1000.0
START = date(2026, 1, 1)
FIRST_NAMES = (
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Ken",
    "Margaret",
    "Linus",
    "Frances",
    "Dennis",
    "Radia",
    "Guido",
    "Hedy",
    "Tim",
    "Katherine",
    "Niklaus",
    "Sophie",
    "Donald",
    "Anita",
    "John",
)
LAST_NAMES = (
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Thompson",
    "Hamilton",
    "Torvalds",
    "Allen",
    "Ritchie",
    "Perlman",
    "van Rossum",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Wirth",
    "Wilson",
    "Knuth",
    "Borg",
    "McCarthy",
)
PLANS = ("free", "starter", "growth", "enterprise")


@dataclass
class Shop:
    """A handle on the demo warehouse with a seeded random source, so every demo run is the same."""

    path: Path
    rng: random.Random

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)


def build_warehouse(path: Path, users: int = DEMO_USERS, seed: int = 7) -> Shop:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    shop = Shop(path, random.Random(seed))
    with shop.connect() as db:
        db.executescript("""
            CREATE TABLE meta (as_of TEXT NOT NULL);
            CREATE TABLE users (user_id TEXT PRIMARY KEY, anonymous_id TEXT, email TEXT, first_name TEXT,
                                last_name TEXT, company_id TEXT, company_name TEXT, plan TEXT, signed_up TEXT);
            CREATE TABLE orders (order_id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, amount REAL NOT NULL,
                                 ordered_at TEXT NOT NULL);
            CREATE INDEX orders_by_time ON orders (ordered_at, user_id);
        """)
        today = START + timedelta(days=200)
        db.execute("INSERT INTO meta VALUES (?)", (today.isoformat(),))
        for number in range(1, users + 1):
            _add_user(db, shop.rng, number, START + timedelta(days=shop.rng.randrange(200)))
        for day in range(200):
            _add_orders(db, shop.rng, START + timedelta(days=day), orders=shop.rng.randrange(40, 80))
    return shop


def advance_one_day(shop: Shop) -> None:
    """A day of activity: new orders and sign-ups, a few plan changes, a few users deleted."""
    rng = shop.rng
    with shop.connect() as db:
        (as_of,) = db.execute("SELECT as_of FROM meta").fetchone()
        today = date.fromisoformat(as_of) + timedelta(days=1)
        db.execute("UPDATE meta SET as_of = ?", (today.isoformat(),))
        (last,) = db.execute("SELECT COUNT(*) FROM users").fetchone()
        for number in range(last + 1, last + 26):
            _add_user(db, rng, number, today)
        _add_orders(db, rng, today, orders=160)
        ids = [row[0] for row in db.execute("SELECT user_id FROM users ORDER BY user_id")]
        for user_id in rng.sample(ids, 40):
            db.execute("UPDATE users SET plan = ? WHERE user_id = ?", (rng.choice(PLANS), user_id))
        for user_id in rng.sample(ids, 5):
            db.execute("DELETE FROM orders WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))


def _add_user(db: sqlite3.Connection, rng: random.Random, number: int, signed_up: date) -> None:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    company = rng.randrange(1, 400) if rng.random() < 0.7 else None
    email = f"{first}.{last}{number}@example.com".lower().replace(" ", "")
    db.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            f"u{number:05d}",
            f"anon-{number:05d}",
            email,
            first,
            last,
            f"c{company:04d}" if company else None,
            f"Company {company}" if company else None,
            rng.choice(PLANS),
            signed_up.isoformat(),
        ),
    )


def _add_orders(db: sqlite3.Connection, rng: random.Random, day: date, orders: int) -> None:
    ids = [row[0] for row in db.execute("SELECT user_id FROM users WHERE signed_up <= ?", (day.isoformat(),))]
    if not ids:
        return
    rows = [(rng.choice(ids), round(rng.lognormvariate(3.5, 0.9), 2), day.isoformat()) for _ in range(orders)]
    db.executemany("INSERT INTO orders (user_id, amount, ordered_at) VALUES (?, ?, ?)", rows)


def run_demo(workdir: Path, console: Console, config_path: Path | None = None, destination: str = "chartmogul") -> int:
    """The README's first command: build, sync, change, sync again, and show both runs and the diff.

    ``destination`` ``chartmogul_api`` syncs to a ChartMogul-API-compatible receiver instead of the webhook:
    nine in ten of the shop's users are ChartMogul customers there (by external id), and their audiences and
    traits become typed custom attributes."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "state.db").unlink(missing_ok=True)
    given = config_path is not None
    config_path = config_path or demo_config(workdir)
    console.print(f"[bold]1. Building the demo warehouse[/bold] ({DEMO_USERS} users, 200 days of orders) in {workdir}")
    shop = build_warehouse(workdir / "warehouse.db")
    api = destination == "chartmogul_api"
    server = (
        ChartMogulApiReceiver(
            _customers_of(shop),
            api_key=DEMO_API_KEY,
            out=_fresh(workdir / "received.jsonl"),
            requests_per_second=DEMO_REQUESTS_PER_SECOND,  # the demo's pace, as for the webhook receiver
        )
        if api
        else Receiver(out=_fresh(workdir / "received.jsonl"))
    )
    with server as receiver:
        try:
            config = load_config(config_path, env={**os.environ, **_demo_env(workdir, receiver.url)})
            job = _for_loopback(config.job(DEMO_JOB), receiver.url if api else None)
            accounts = [
                _for_loopback(j, receiver.url if api else None) for j in config.jobs if j.name == DEMO_ACCOUNTS_JOB
            ]
        except ConfigError as exc:
            console.print("\n".join(f"config error: {p}" for p in exc.problems))
            return EXIT_USAGE
        where = "ChartMogul-API-compatible receiver" if api else "receiver"
        console.print(
            f"   {where} listening on 127.0.0.1 (writes recorded in {workdir / 'received.jsonl'}); "
            f"the demo allows {DEMO_REQUESTS_PER_SECOND:g} requests/s to it"
        )
        store = Store.open(config.state_url)
        try:
            runner = Runner(store)
            console.print("[bold]2. Initial sync[/bold]: every current member of every audience, every trait")
            first = _show(console, runner.run(job, RunOptions()))
            reports = [_show(console, runner.run(account_job, RunOptions()), "accounts") for account_job in accounts]
            console.print("[bold]3. A day passes[/bold]: 160 orders, 25 sign-ups, 40 plan changes, 5 deletions")
            advance_one_day(shop)
            console.print("[bold]4. Incremental sync[/bold]: only users whose membership or traits changed")
            second = _show(console, runner.run(job, RunOptions()))
            reports += [_show(console, runner.run(account_job, RunOptions()), "accounts") for account_job in accounts]
            command = f"audience-sync --config {_shown(config_path)}"
            if given:  # the demo's state store is not the one that configuration names
                command = f"AUDIENCE_SYNC_STATE_URL=sqlite:///{workdir / 'state.db'} {command}"
            if isinstance(receiver, ChartMogulApiReceiver):
                _explain(console, command, store, second, len(receiver.writes()))
                _show_customer(console, receiver, store, second)
                _reconcile(console, receiver, store, job, command)
            else:
                _explain(console, command, store, second, len(receiver.accepted()))
        except SyncError as exc:
            console.print(f"error: {exc}")
            return EXIT_FAILED
        finally:
            store.close()
    return max(first.exit_code, second.exit_code, *(r.exit_code for r in reports))


def _for_loopback(job: JobConfig, api_url: str | None = None) -> JobConfig:
    """The demo's receiver is on this machine: lift ChartMogul's 40 requests/s so the demo takes seconds. With
    ``api_url``, the job writes to ChartMogul's API there (customers by external id) instead."""
    if api_url is not None:
        settings = ChartMogulApiConfig(
            type="chartmogul_api",
            api_key=SecretStr(DEMO_API_KEY),
            base_url=api_url,
            target="customer",
            requests_per_second=DEMO_REQUESTS_PER_SECOND,
        )
        return job.model_copy(update={"destination": settings})
    faster = job.destination.model_copy(update={"requests_per_second": DEMO_REQUESTS_PER_SECOND})
    return job.model_copy(update={"destination": faster})


def _customers_of(shop: Shop) -> Account:
    """Nine in ten of the shop's users as ChartMogul customers, each with one contact; and every company."""
    account = Account()
    with shop.connect() as db:
        for user_id, email, first in db.execute("SELECT user_id, email, first_name FROM users ORDER BY user_id"):
            if int(user_id[1:]) % 10:
                customer = account.add_customer(user_id, email, first)
                account.add_contact(customer, email, first_name=first)
        query = "SELECT DISTINCT company_id, company_name FROM users WHERE company_id IS NOT NULL ORDER BY 1"
        for company, name in db.execute(query):
            account.add_customer(company, None, name)
    return account


def _show_customer(console: Console, api: ChartMogulApiReceiver, store: Store, run: RunReport) -> None:
    matched = run.delivered / max(1, run.delivered + run.unmatched)
    console.print(
        f"[bold]7. In ChartMogul[/bold]: {len(api.account.customer_attributes)} custom attributes "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(api.account.customer_attributes.items()))}); "
        f"run {run.run_id} matched {matched:.0%} of the subjects it wrote "
        f"({run.unmatched} have no ChartMogul customer yet and are tried again by later runs)"
    )
    written = next((c for c in api.writes() if c.method in ("POST", "PUT")), None)
    if written is not None:
        uuid = written.path.split("/")[3]
        console.print(f"   customer {uuid}: {api.account.customers[uuid]['attributes']['custom']}")


def _reconcile(console: Console, api: ChartMogulApiReceiver, store: Store, job: JobConfig, command: str) -> None:
    """Someone edits ChartMogul by hand; reconciliation finds it, the next run repairs it, and a second
    reconciliation finds nothing."""
    customers = api.account.customers
    written = {c.path.split("/")[3] for c in api.writes() if c.path.startswith("/v1/customers/")}
    users = sorted((customers[u]["external_id"], u) for u in written if u in customers)
    (_, edited), (_, deleted) = [pair for pair in users if pair[0].startswith("u")][:2]  # the users' job's own
    custom = api.account.customers[edited]["attributes"]["custom"]
    key = next(k for k, v in sorted(custom.items()) if isinstance(v, bool))
    api.edit(edited, key, not custom[key])
    api.remove(deleted, next(iter(sorted(api.account.customers[deleted]["attributes"]["custom"]))))
    console.print(
        f"[bold]8. Is ChartMogul right?[/bold] Someone flips {key} on customer {edited} by hand and removes an "
        f"attribute from {deleted}; reconciliation reads ChartMogul back:"
    )
    found = reconcile(store, job, Options(repair=True))
    for drift in found.drifts:
        console.print(
            f"   {drift.drift:<8} {drift.user_id} {drift.key or '(record)'}: "
            f"expected {drift.expected!r}, found {drift.found!r}"
        )
    console.print(
        f"   reconciliation {found.run_id}: {found.checked} subjects checked in {found.requests} requests "
        f"({found.how}); --repair asked the next run to resend {found.repaired}"
    )
    repaired = Runner(store).run(job, RunOptions(trigger="reconcile"))
    again = reconcile(store, job, Options())
    console.print(
        f"   run {repaired.run_id} resent {repaired.delivered}; reconciliation {again.run_id}: "
        f"{len(again.drifts)} drifted. Try: {command} runs show {found.run_id}, and {command} diff {found.run_id}"
    )


def _demo_env(workdir: Path, webhook_url: str) -> dict[str, str]:
    return {
        "AUDIENCE_SYNC_STATE_URL": f"sqlite:///{workdir / 'state.db'}",
        "WAREHOUSE_URL": f"sqlite:///{workdir / 'warehouse.db'}",
        "CHARTMOGUL_WEBHOOK_URL": webhook_url,
    }


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def _show(console: Console, report: RunReport, subjects: str = "users") -> RunReport:
    console.print(
        f"   run {report.run_id} ({report.job}): {report.kind}, {report.status} — {report.users} {subjects}, "
        f"{report.entered} entered, {report.exited} exited, {report.traits_changed} trait changes "
        f"→ {report.updates} updates, {report.delivered} delivered, {report.failed} failed"
        + (f", {report.unmatched} unmatched" if report.unmatched else "")
    )
    return report


def _explain(console: Console, command: str, store: Store, second: RunReport, received: int) -> None:
    console.print(f"[bold]5. The two runs[/bold] (`{command} runs`) — the receiver accepted {received} bodies")
    records = [run_table_row(run_record(r)) for r in store.runs(DEMO_JOB, 2)]
    print_table(console, records, RUN_TABLE_FIELDS)
    rows = list(change_records(store, AuditFilter(run_id=second.run_id)))
    shown = 25
    console.print(
        f"[bold]6. What run {second.run_id} changed[/bold] (`{command} diff {second.run_id}`), "
        f"first {min(shown, len(rows))} of {len(rows)} rows"
    )
    print_table(console, rows[:shown], CHANGE_FIELDS)
    console.print(
        f"Next: what was sent, `{command} messages {second.run_id}`; the run in full, `{command} runs show "
        f"{second.run_id}`; a user's timeline, `{command} history contacts USER_ID`; the picture, "
        f"`{command} report contacts --output report.html`. The state store is {store.label}.",
        soft_wrap=True,
    )


def shipped_config() -> Path:
    """The demo's jobs.yaml: inside an installed wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_demo" / "jobs.yaml", package.parent / "jobs.yaml"):
        if candidate.is_file():
            return candidate
    raise SyncError("the demo's jobs.yaml is missing from this installation")


def demo_config(workdir: Path) -> Path:
    """The demo's jobs.yaml and files copied into ``workdir``, its state store and warehouse there, so that
    the demo runs from any folder and the commands it suggests read its store."""
    shipped = shipped_config()
    text = shipped.read_text(encoding="utf-8").replace("sqlite:///demo/out/", f"sqlite:///{workdir}/")
    (workdir / "demo").mkdir(exist_ok=True)
    shutil.copyfile(shipped.parent / "demo" / "beta.csv", workdir / "demo" / "beta.csv")
    path = workdir / "jobs.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is below it; absolute otherwise."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())
