"""Commands that read the audit trail: ``runs``, ``diff``, ``history``, ``audiences``, ``messages``,
``failed``, ``report`` and ``prune``. They need only the state store, not the jobs' secrets."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from sync.audit.display import FORMATS, print_rows, print_run_detail
from sync.audit.queries import (
    CHANGE_FIELDS,
    CHANGES,
    FAILED_FIELDS,
    HISTORY_FIELDS,
    RUN_FIELDS,
    RUN_TABLE_FIELDS,
    ChangeFilter,
    audience_table_row,
    change_records,
    failure_records,
    moment,
    prune_job,
    run_detail,
    run_messages,
    run_record,
    run_table_row,
)
from sync.audit.queries import audiences as audience_series
from sync.audit.queries import history as user_history
from sync.audit.report import render_report
from sync.cli.common import fail, open_store, outline_of, state_url_of, stdout_console
from sync.clock import utc_now
from sync.errors import ConfigError, SyncError
from sync.reconcile.compare import DRIFT_FIELDS, RECONCILE
from sync.run.report import EXIT_USAGE
from sync.store import AuditFilter, Store
from sync.store.models import Run
from sync.text import plural


def known_job(store: Store, job: str) -> str:
    """``job`` when the state store has runs of it; otherwise a usage error (exit 2) listing the jobs it has."""
    names = store.job_names()
    if job not in names:
        fail(f"no job named {job!r} in the state store (jobs: {', '.join(names) or 'none'})", EXIT_USAGE)
    return job


def _moment(option: str, text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return moment(text, now)
    except SyncError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command()
@click.argument("job", required=False)
@click.argument("run_id", required=False, type=int)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs to list.")
@click.option("--status", "statuses", multiple=True, help="Only runs with this status (repeatable).")
@click.option(
    "--trigger",
    help="Only runs started this way: manual, scheduled, retry, full, plan, console, reconcile, api, dagster or "
    "airflow.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def runs(
    ctx: click.Context,
    job: str | None,
    run_id: int | None,
    limit: int,
    statuses: tuple[str, ...],
    trigger: str | None,
    as_json: bool,
) -> None:
    """Run history, newest first: `runs [JOB]`. One run in full: `runs show RUN_ID`.

    A run's status, trigger, duration, counts and the first line of its error; `runs show RUN_ID` adds its
    phases with their timings, the whole error, the mass-change guard's verdict, the alerts it sent, a
    sample of the updates not delivered with their reasons, and the job's definition in effect.
    """
    if job == "show" and run_id is not None:
        _show_run(ctx, run_id, as_json)
        return
    if run_id is not None:
        raise click.UsageError(f"unexpected {run_id}: to see one run, `audience-sync runs show {run_id}`")
    with open_store(state_url_of(ctx)) as store:
        if job is not None:
            known_job(store, job)
        records = [run_record(run) for run in store.runs(job, limit, statuses=statuses, trigger=trigger)]
    if as_json:
        print_rows(stdout_console(), records, RUN_FIELDS, "jsonl")
        return
    rows = [run_table_row(record) for record in records]
    print_rows(stdout_console(), rows, ("job", *RUN_TABLE_FIELDS), "table", empty="no runs")


def _show_run(ctx: click.Context, run_id: int, as_json: bool) -> None:
    with open_store(state_url_of(ctx)) as store:
        if store.run(run_id) is None:
            fail(f"no run with id {run_id} in the state store", EXIT_USAGE)
        detail = run_detail(store, run_id)
    if as_json:
        click.echo(json.dumps(detail, ensure_ascii=False, default=str))
        return
    print_run_detail(stdout_console(), detail)


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option("--job", help="Changes of this job's runs (with --since/--until), when no RUN_ID is given.")
@click.option("--user", "user_id", help="Only this user's changes.")
@click.option("--key", help="Only this audience or trait key.")
@click.option(
    "--status",
    type=click.Choice(["planned", "pending", "delivered", "failed", "unmatched", "dead"]),
    help="Only updates with this delivery status (dead: parked after repeated rejections; unmatched: the "
    "destination has no record for the subject).",
)
@click.option(
    "--change",
    type=click.Choice(CHANGES),
    help="Only entries, exits, trait changes or profile changes (send_profile_changes).",
)
@click.option("--since", help="Runs started at or after this time (2026-11-15, 2026-11-15T08:00) or age (7d, 12h).")
@click.option("--until", help="Runs started before this time or age.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: the same as --format jsonl.")
@click.option("--output", type=click.Path(path_type=Path), help="Write to this file (needed for parquet).")
@click.pass_context
def diff(
    ctx: click.Context,
    run_id: int | None,
    job: str | None,
    user_id: str | None,
    key: str | None,
    status: str | None,
    change: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    as_json: bool,
    output: Path | None,
) -> None:
    """What runs changed, one row per (user, key), with each update's delivery outcome.

    Give a RUN_ID for one run, or --job (and --since/--until) for a job's runs. Exports stream: a
    ten-million-row initial sync is written in bounded memory.
    """
    if run_id is None and job is None:
        raise click.UsageError("give a RUN_ID, or --job JOB")
    fmt = "jsonl" if as_json else fmt
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if fmt == "table" and output is not None:
        raise click.UsageError("a table is for the terminal; use --format csv, jsonl or parquet with --output")
    now = utc_now()
    filters = AuditFilter(
        run_id=run_id,
        job=job,
        user_id=user_id,
        status=status,
        since=_moment("--since", since, now),
        until=_moment("--until", until, now),
    )
    with open_store(state_url_of(ctx)) as store:
        run = store.run(run_id) if run_id is not None else None
        if run_id is not None and run is None:
            fail(f"no run with id {run_id} in the state store", EXIT_USAGE)
        if job is not None:
            known_job(store, job)
        if run is not None and run.kind == RECONCILE:  # what a reconciliation found drifted, filtered alike
            drifts = store.drifts_of(run.id, user_id, key)
            empty = f"reconciliation {run.id} found no drift" + (" that matches" if user_id or key else "")
            written = print_rows(stdout_console(), drifts, DRIFT_FIELDS, fmt, output, empty=empty)
        else:
            rows = change_records(store, filters, ChangeFilter(key, change))
            empty = "no changes match" if run is None else _no_changes(run)
            written = print_rows(stdout_console(), rows, CHANGE_FIELDS, fmt, output, empty=empty)
    if output is not None:
        click.echo(f"{written} rows written to {output}", err=True)


def _no_changes(run: Run) -> str:
    """Why a run lists no changes: it changed nothing, or it ended before it planned any."""
    if not run.error:
        return f"run {run.id} ({run.status}) has no changes" + (" that match" if run.updates else "")
    first = run.error.strip().splitlines()[0]
    return f"run {run.id} {run.status} before recording changes: {first} (`audience-sync runs show {run.id}`)"


@click.command()
@click.argument("job")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@click.pass_context
def history(ctx: click.Context, job: str, user_id: str, as_json: bool) -> None:
    """USER_ID's timeline in JOB: every run that changed them, each key's old → new, the messageId, the outcome."""
    with open_store(state_url_of(ctx)) as store:
        timeline = user_history(store, known_job(store, job), user_id)
    if as_json:
        click.echo(json.dumps(timeline, ensure_ascii=False, default=str))
        return
    console = stdout_console()
    held = ", ".join(f"{k}={json.dumps(v)}" for k, v in timeline["acknowledged"].items()) or "nothing"
    console.print(f"{user_id} in {job}: the destination acknowledged {held} (version {timeline['version']})")
    print_rows(console, timeline["timeline"], HISTORY_FIELDS, "table")


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with every run's entries and exits.")
@click.pass_context
def audiences(ctx: click.Context, job: str, as_json: bool) -> None:
    """Per audience or trait key of JOB: acknowledged size, entries and exits per run, last change."""
    with open_store(state_url_of(ctx)) as store:
        entries = audience_series(store, known_job(store, job))
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry))
        return
    rows = [audience_table_row(entry) for entry in entries]
    print_rows(stdout_console(), rows, list(rows[0]) if rows else ["key"], "table")


@click.command()
@click.argument("job")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="The HTML file to write.")
@click.pass_context
def report(ctx: click.Context, job: str, output: Path) -> None:
    """A self-contained HTML report of JOB: audience sizes over time, entries and exits, runs, failures."""
    with open_store(state_url_of(ctx)) as store:
        output.write_text(render_report(store, known_job(store, job), utc_now()), encoding="utf-8")
    click.echo(f"report written to {output}", err=True)


@click.command()
@click.argument("job", required=False)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    help="Keep this many days, at least 1 (default: each job's audit_retention_days).",
)
@click.pass_context
def prune(ctx: click.Context, job: str | None, days: int | None) -> None:
    """Remove per-update audit rows older than the retention; run summaries and the acknowledged state stay."""
    config = outline_of(ctx)
    try:
        jobs = [config.job(job)] if job else list(config.jobs)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    with open_store(config.state_url) as store:
        for each in jobs:
            removed = prune_job(store, each, utc_now(), days)
            click.echo(
                f"job {each.name}: removed {plural(removed, 'update row')} older than "
                f"{plural(days or each.audit_retention_days, 'day')}"
            )


@click.command()
@click.argument("job")
@click.option("--runs", "with_runs", is_flag=True, help="Also remove its runs and their audit rows.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def forget(ctx: click.Context, job: str, with_runs: bool, yes: bool) -> None:
    """Forget a job removed from jobs.yaml: its acknowledged state, fingerprints, tracked keys, failed updates,
    ChartMogul record ids, schedule and alert state (asks first). Its runs and audit rows stay unless --runs."""
    config = outline_of(ctx)
    configured = any(each.name == job for each in config.jobs)
    with open_store(config.state_url) as store:
        known_job(store, job)
        lease = store.lease(job)
        if lease is not None and lease.expires_at >= utc_now():
            fail(f"job {job!r} is running now ({lease.owner}); stop it first", EXIT_USAGE)
        what = "its state" + (", its runs and their audit rows" if with_runs else " (its runs stay)")
        warning = (
            f"job {job!r} is still in {ctx.obj or 'jobs.yaml'}: its next run will be an initial sync of every member. "
            if configured
            else ""
        )
        if not yes:
            if not sys.stdin.isatty():
                fail("forget asks for confirmation: run it on a terminal, or add --yes", EXIT_USAGE)
            click.confirm(f"{warning}Forget {what} of job {job!r}?", abort=True, err=True)
        removed = store.forget_job(job, runs=with_runs)
    counted = ", ".join(f"{table} {count}" for table, count in removed.items() if count) or "nothing"
    click.echo(f"job {job} forgotten: rows removed: {counted}")


@click.command()
@click.argument("run_id", type=int)
@click.option("--user", "user_id", help="Only what was sent for this subject.")
@click.option("--calls", is_flag=True, help="The Segment-spec calls (identify, track, group) the requests came from.")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="JSON lines (what messages always prints).")
@click.pass_context
def messages(ctx: click.Context, run_id: int, user_id: str | None, calls: bool, as_json: bool) -> None:
    """What RUN_ID sent, as the destination received it, as JSON lines: the ChartMogul webhook's Send Contact
    and Send Customer bodies; the requests made to ChartMogul's API (method, path, body; never the key); the
    calls inside Segment's batches. --calls: the Segment-spec calls they were rendered from."""
    with open_store(state_url_of(ctx)) as store:
        run = store.run(run_id)
        if run is None:
            fail(f"no run with id {run_id} in the state store", EXIT_USAGE)
        shown = 0
        for message in run_messages(store, run_id, user_id, calls):
            click.echo(json.dumps(message, ensure_ascii=False))
            shown += 1
    if not shown:
        click.echo(f"run {run_id} sent nothing{' to ' + user_id if user_id else ''}", err=True)


@click.command()
@click.argument("job")
@click.option("--all", "every", is_flag=True, help="Also updates still being retried, not only the dead ones.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def failed(ctx: click.Context, job: str, every: bool, as_json: bool) -> None:
    """JOB's updates that were not delivered: dead ones (parked, no longer sent) and, with --all, the rest:
    rejected ones sent again each run, and those of the last run still being retried (5xx, 429, timeouts,
    connection errors) or never sent."""
    with open_store(state_url_of(ctx)) as store:
        rows = failure_records(store, known_job(store, job), every)
    empty = "no updates waiting to be delivered" if every else "no dead updates"
    print_rows(stdout_console(), rows, FAILED_FIELDS, "jsonl" if as_json else "table", empty=empty)
