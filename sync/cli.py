"""The ``audience-sync`` command line.

Exit status: 0 success; 1 the run (or the command) failed; 2 usage or configuration error;
3 some updates failed (or the run was interrupted) and wait for the next run; 4 the job was busy;
5 the mass-change guard stopped the run before anything was sent.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError

from sync import __version__, logs
from sync.audit import CHANGE_FIELDS, change_records, identify_calls, run_record
from sync.config import Config, load_config, load_state_url
from sync.destinations.chartmogul import utc_now
from sync.display import print_rows
from sync.errors import ConfigError, StoreError, SyncError
from sync.messages import iso
from sync.receiver import Faults, Receiver
from sync.runner import EXIT_FAILED, EXIT_USAGE, Runner, RunOptions
from sync.scheduler import Daemon
from sync.status import STATUS_FIELDS, status_rows, table_row
from sync.store import Store
from sync.store.repository import store_reason

log = logging.getLogger("sync.cli")
# Without a terminal, progress is logged at most this often.
PROGRESS_LOG_INTERVAL_S = 10.0


def _stdout() -> Console:
    # Piped output keeps full cells; a terminal gets its own width.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="jobs.yaml to use (default: $AUDIENCE_SYNC_CONFIG or ./jobs.yaml).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.version_option(__version__, prog_name="audience-sync")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str, log_format: str) -> None:
    """Sync warehouse audiences and computed traits to ChartMogul, the way Engage does."""
    logs.configure(log_level, log_format)
    ctx.obj = config_path


def _config(ctx: click.Context) -> Config:
    try:
        return load_config(ctx.obj)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        sys.exit(EXIT_USAGE)


def _state_url(ctx: click.Context) -> str:
    """The state store alone: audit commands work without the jobs' secrets in the environment."""
    try:
        return load_state_url(ctx.obj)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        sys.exit(EXIT_USAGE)


@contextmanager
def _store(state_url: str) -> Iterator[Store]:
    try:
        store = Store.open(state_url)
    except StoreError as exc:
        _fail(str(exc))
    try:
        yield store
    except SyncError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"the state store failed: {store_reason(exc)}")
    finally:
        store.close()


@cli.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check jobs.yaml and report every problem at once (exit 2 when there is one)."""
    config = _config(ctx)
    for job in config.jobs:
        keys = ", ".join(job.audience_keys() + job.trait_keys())
        click.echo(f"job {job.name}: {len(job.audiences)} audience(s), {len(job.traits)} trait(s): {keys}")
    click.echo("configuration is valid")


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the state store's schema."""
    with _store(_state_url(ctx)) as store:
        click.echo(f"state store {store.label} is up to date")


@cli.command()
@click.argument("job")
@click.option("--full", is_flag=True, help="Resend every current member and trait value (exits still send false).")
@click.option("--dry-run", is_flag=True, help="Compute and record the plan; send nothing, advance nothing.")
@click.option("--force", is_flag=True, help="Send even if the mass-change guard would stop the run.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON describing the run.")
@click.pass_context
def run(ctx: click.Context, job: str, full: bool, dry_run: bool, force: bool, as_json: bool) -> None:
    """Run JOB once now."""
    sys.exit(_run(ctx, job, RunOptions(full=full, dry_run=dry_run, force=force), as_json, show_changes=False))


FAILED_FIELDS = (
    "user_id",
    "message_id",
    "failed_runs",
    "dead",
    "http_status",
    "error",
    "first_failed_at",
    "last_failed_at",
    "last_run_id",
)


@cli.command()
@click.argument("job")
@click.option("--all", "every", is_flag=True, help="Also updates still being retried, not only the dead ones.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def failed(ctx: click.Context, job: str, every: bool, as_json: bool) -> None:
    """JOB's updates the destination keeps rejecting: dead ones (parked, no longer sent) and, with --all, the rest."""
    with _store(_state_url(ctx)) as store:
        rows = [{f: getattr(row, f) for f in FAILED_FIELDS} for row in store.failed_updates(job, dead_only=not every)]
    for row in rows:
        row["first_failed_at"], row["last_failed_at"] = iso(row["first_failed_at"]), iso(row["last_failed_at"])
    print_rows(_stdout(), rows, FAILED_FIELDS, "jsonl" if as_json else "table")


@cli.command()
@click.argument("job")
@click.option("--dead", is_flag=True, help="Also send the updates parked as dead.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON describing the run.")
@click.pass_context
def retry(ctx: click.Context, job: str, dead: bool, as_json: bool) -> None:
    """Run JOB now to send its failed updates again; --dead un-parks the dead ones first."""
    if dead:
        config = _config(ctx)
        with _store(config.state_url) as store:
            revived = store.revive(config.job(job).name)
        click.echo(f"{revived} dead update(s) will be sent again", err=True)
    sys.exit(_run(ctx, job, RunOptions(), as_json, show_changes=False))


@cli.command()
@click.argument("job")
@click.option("--full", is_flag=True, help="Plan a full resync.")
@click.pass_context
def plan(ctx: click.Context, job: str, full: bool) -> None:
    """Show what a run of JOB would send (a dry run, recorded for the audit trail)."""
    sys.exit(_run(ctx, job, RunOptions(full=full, dry_run=True), False, show_changes=True))


def _run(ctx: click.Context, job_name: str, options: RunOptions, as_json: bool, show_changes: bool) -> int:
    config = _config(ctx)
    try:
        job = config.job(job_name)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    stop = _stop_on_signals()
    with _store(config.state_url) as store, _progress() as progress:
        report = Runner(store, progress=progress, stop=stop).run(job, options)
        if show_changes:
            print_rows(_stdout(), list(change_records(store, report.run_id)), CHANGE_FIELDS, "table")
    extra = {"error": report.error, "skipped_rows": report.skipped_rows, "parked": report.parked}
    _print_report(report.summary() | extra, as_json)
    return report.exit_code


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task("deliver", total=None)
        with bar:
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    import time

    last = [time.monotonic()]

    def log_progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_LOG_INTERVAL_S or done == total:
            last[0] = time.monotonic()
            log.info("delivery progress", extra={"done": done, "total": total})

    yield log_progress


def _print_report(summary: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        keys = (
            "run_id",
            "job",
            "kind",
            "status",
            "users",
            "entered",
            "exited",
            "traits_changed",
            "updates",
            "delivered",
            "failed",
        )
        click.echo(json.dumps({k: summary[k] for k in keys}))
        return
    line = (
        f"run {summary['run_id']} ({summary['job']}, {summary['kind']}): {summary['status']} — "
        f"{summary['users']} users, {summary['entered']} entered, {summary['exited']} exited, "
        f"{summary['traits_changed']} trait changes, {summary['updates']} updates, "
        f"{summary['delivered']} delivered, {summary['failed']} failed"
    )
    if summary.get("skipped_rows"):
        line += f", {summary['skipped_rows']} rows skipped"
    if summary.get("parked"):
        line += f", {summary['parked']} dead updates left out (see `audience-sync failed`)"
    click.echo(line)
    if summary.get("error"):
        click.echo(f"error: {summary['error']}", err=True)


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask the run to stop gracefully; a second one stops at once."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second stop signal: exiting now")
            os._exit(128 + signum)
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


@cli.command()
@click.pass_context
def schedule(ctx: click.Context) -> None:
    """Run every enabled job on its schedule until SIGTERM or SIGINT (the initial sync first)."""
    config = _config(ctx)
    if not any(job.schedule.enabled for job in config.jobs):
        _fail("no job has its schedule enabled", EXIT_USAGE)
    stop = _stop_on_signals()
    with _store(config.state_url) as store:
        Daemon(config, store, stop=stop).serve()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per job: last run, next scheduled run, acknowledged users, updates waiting for retry, lease holder."""
    config = _config(ctx)
    with _store(config.state_url) as store:
        rows = status_rows(store, config, utc_now())
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        print_rows(_stdout(), [table_row(row) for row in rows], STATUS_FIELDS, "table")


@cli.command()
@click.argument("job")
@click.pass_context
def pause(ctx: click.Context, job: str) -> None:
    """Keep the daemon from starting JOB until `resume` (a run in progress finishes)."""
    _control(ctx, job, "paused", paused=True)


@cli.command()
@click.argument("job")
@click.pass_context
def resume(ctx: click.Context, job: str) -> None:
    """Let the daemon run a paused JOB again."""
    _control(ctx, job, "resumed", paused=False)


@cli.command()
@click.argument("job")
@click.pass_context
def skip(ctx: click.Context, job: str) -> None:
    """Skip JOB's next scheduled run; the one after it happens as usual."""
    _control(ctx, job, "will skip its next scheduled run", skip_next=True)


def _control(ctx: click.Context, name: str, said: str, **values: bool) -> None:
    config = _config(ctx)
    try:
        job = config.job(name)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    with _store(config.state_url) as store:
        store.update_schedule(job.name, utc_now(), **values)
    click.echo(f"job {job.name} {said}")


@cli.command()
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def runs(ctx: click.Context, job: str | None, limit: int, as_json: bool) -> None:
    """Run history, newest first."""
    with _store(_state_url(ctx)) as store:
        records = [run_record(run) for run in store.runs(job, limit)]
    fields = (
        "run_id",
        "job",
        "kind",
        "status",
        "started_at",
        "users",
        "entered",
        "exited",
        "traits_changed",
        "updates",
        "delivered",
        "failed",
    )
    print_rows(_stdout(), records, fields, "jsonl" if as_json else "table")


@cli.command()
@click.argument("run_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table", show_default=True)
@click.option("--user", "user_id", help="Only this user's changes.")
@click.option("--key", help="Only this audience or trait key.")
@click.pass_context
def diff(ctx: click.Context, run_id: int, fmt: str, user_id: str | None, key: str | None) -> None:
    """RUN_ID's changes, one row per (user, key), with each update's delivery outcome."""
    with _store(_state_url(ctx)) as store:
        print_rows(_stdout(), change_records(store, run_id, user_id, key), CHANGE_FIELDS, fmt)


@cli.command()
@click.argument("run_id", type=int)
@click.option("--user", "user_id", help="Only this user's call.")
@click.pass_context
def messages(ctx: click.Context, run_id: int, user_id: str | None) -> None:
    """RUN_ID's identify calls as JSON lines, exactly as built."""
    with _store(_state_url(ctx)) as store:
        for call in identify_calls(store, run_id, user_id):
            click.echo(json.dumps(call, ensure_ascii=False))


@cli.command()
@click.option("--port", default=8787, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Append every received body to this JSON-lines file.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500/502/503.")
@click.option("--rate-limit", type=float, help="Requests per second beyond which 429 is answered.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in Retry-After with a 429.")
@click.option("--delay", default=0.0, help="Seconds to wait before each answer.")
@click.option("--drop-rate", default=0.0, help="Share of requests whose connection is dropped.")
@click.option("--seed", default=0, help="Seed of the fault dice.")
def receiver(
    port: int,
    out: Path | None,
    error_rate: float,
    rate_limit: float | None,
    retry_after: float,
    delay: float,
    drop_rate: float,
    seed: int,
) -> None:
    """A ChartMogul-compatible capture server on 127.0.0.1, to try a configuration safely."""
    faults = Faults(
        error_rate=error_rate,
        rate_limit=rate_limit,
        retry_after=retry_after,
        delay=delay,
        drop_rate=drop_rate,
        seed=seed,
    )
    server = Receiver(port, faults, out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    click.echo(f"receiving on {server.url}" + (f", recording to {out}" if out else ""), err=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()


@cli.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path("demo/out"),
    show_default=True,
    help="Where the demo keeps its warehouse, state store and received bodies.",
)
@click.pass_context
def demo(ctx: click.Context, workdir: Path) -> None:
    """Build a demo warehouse, sync it to a loopback receiver twice, and show what happened."""
    from sync.demo import run_demo

    sys.exit(run_demo(workdir, _stdout(), ctx.obj))


def main() -> None:
    cli(prog_name="audience-sync")
