"""Commands that read the audit trail: ``runs``, ``diff``, ``history``, ``audiences``, ``messages``,
``failed``, ``report`` and ``prune``. They need only the state store, not the jobs' secrets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sync.audit import (
    CHANGE_FIELDS,
    CHANGES,
    HISTORY_FIELDS,
    RUN_TABLE_FIELDS,
    ChangeFilter,
    audience_table_row,
    change_records,
    identify_calls,
    moment,
    prune_job,
    run_record,
)
from sync.audit import audiences as audience_series
from sync.audit import history as user_history
from sync.cli_common import job_config, open_store, state_url_of, stdout_console
from sync.destinations.chartmogul import utc_now
from sync.display import FORMATS, print_rows
from sync.messages import iso
from sync.report import render_report
from sync.store.repository import AuditFilter

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


@click.command()
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def runs(ctx: click.Context, job: str | None, limit: int, as_json: bool) -> None:
    """Run history, newest first."""
    with open_store(state_url_of(ctx)) as store:
        records = [run_record(run) for run in store.runs(job, limit)]
    fields = ("job", *RUN_TABLE_FIELDS)
    print_rows(stdout_console(), records, fields, "jsonl" if as_json else "table")


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option("--job", help="Changes of this job's runs (with --since/--until), when no RUN_ID is given.")
@click.option("--user", "user_id", help="Only this user's changes.")
@click.option("--key", help="Only this audience or trait key.")
@click.option(
    "--status",
    type=click.Choice(["planned", "pending", "delivered", "failed", "dead"]),
    help="Only updates with this delivery status (dead: parked after repeated rejections).",
)
@click.option("--change", type=click.Choice(CHANGES), help="Only entries, exits or trait changes.")
@click.option("--since", help="Runs started at or after this time (2026-11-15, 2026-11-15T08:00) or age (7d, 12h).")
@click.option("--until", help="Runs started before this time or age.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
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
    output: Path | None,
) -> None:
    """What runs changed, one row per (user, key), with each update's delivery outcome.

    Give a RUN_ID for one run, or --job (and --since/--until) for a job's runs. Exports stream: a
    ten-million-row initial sync is written in bounded memory.
    """
    if run_id is None and job is None:
        raise click.UsageError("give a RUN_ID, or --job JOB")
    now = utc_now()
    with open_store(state_url_of(ctx)) as store:
        filters = AuditFilter(
            run_id=run_id,
            job=job,
            user_id=user_id,
            status=status,
            since=moment(since, now) if since else None,
            until=moment(until, now) if until else None,
        )
        rows = change_records(store, filters, ChangeFilter(key, change))
        written = print_rows(stdout_console(), rows, CHANGE_FIELDS, fmt, output)
    if output is not None:
        click.echo(f"{written} rows written to {output}", err=True)


@click.command()
@click.argument("job")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@click.pass_context
def history(ctx: click.Context, job: str, user_id: str, as_json: bool) -> None:
    """USER_ID's timeline in JOB: every run that changed them, each key's old → new, the messageId, the outcome."""
    with open_store(state_url_of(ctx)) as store:
        timeline = user_history(store, job, user_id)
    if as_json:
        click.echo(json.dumps(timeline, ensure_ascii=False, default=str))
        return
    console = stdout_console()
    held = ", ".join(f"{k}={json.dumps(v)}" for k, v in timeline["acknowledged"].items()) or "nothing"
    console.print(f"{user_id} in {job}: ChartMogul acknowledged {held} (version {timeline['version']})")
    print_rows(console, timeline["timeline"], HISTORY_FIELDS, "table")


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with every run's entries and exits.")
@click.pass_context
def audiences(ctx: click.Context, job: str, as_json: bool) -> None:
    """Per audience or trait key of JOB: acknowledged size, entries and exits per run, last change."""
    with open_store(state_url_of(ctx)) as store:
        entries = audience_series(store, job)
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
        output.write_text(render_report(store, job, utc_now()), encoding="utf-8")
    click.echo(f"report written to {output}", err=True)


@click.command()
@click.argument("job", required=False)
@click.option("--days", type=int, help="Keep this many days (default: each job's audit_retention_days).")
@click.pass_context
def prune(ctx: click.Context, job: str | None, days: int | None) -> None:
    """Remove per-update audit rows older than the retention; run summaries and the acknowledged state stay."""
    config = job_config(ctx)
    jobs = [config.job(job)] if job else list(config.jobs)
    with open_store(config.state_url) as store:
        for each in jobs:
            removed = prune_job(store, each, utc_now(), days)
            click.echo(
                f"job {each.name}: removed {removed} update rows older than {days or each.audit_retention_days} days"
            )


@click.command()
@click.argument("run_id", type=int)
@click.option("--user", "user_id", help="Only this user's call.")
@click.pass_context
def messages(ctx: click.Context, run_id: int, user_id: str | None) -> None:
    """RUN_ID's identify calls as JSON lines, exactly as built."""
    with open_store(state_url_of(ctx)) as store:
        for call in identify_calls(store, run_id, user_id):
            click.echo(json.dumps(call, ensure_ascii=False))


@click.command()
@click.argument("job")
@click.option("--all", "every", is_flag=True, help="Also updates still being retried, not only the dead ones.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def failed(ctx: click.Context, job: str, every: bool, as_json: bool) -> None:
    """JOB's updates the destination keeps rejecting: dead ones (parked, no longer sent) and, with --all, the rest."""
    with open_store(state_url_of(ctx)) as store:
        rows = [{f: getattr(row, f) for f in FAILED_FIELDS} for row in store.failed_updates(job, dead_only=not every)]
    for row in rows:
        row["first_failed_at"], row["last_failed_at"] = iso(row["first_failed_at"]), iso(row["last_failed_at"])
    print_rows(stdout_console(), rows, FAILED_FIELDS, "jsonl" if as_json else "table")
