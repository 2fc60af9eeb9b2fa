"""``audience-sync reconcile JOB``: is ChartMogul right? Read it back, compare, record, and repair."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sync.audit.display import print_rows
from sync.cli.common import fail, job_config, open_store, stdout_console, stop_on_signals
from sync.errors import ConfigError
from sync.reconcile.compare import DRIFT_FIELDS, DRIFTS, Drift
from sync.reconcile.read import READS
from sync.reconcile.reconcile import SAMPLE, Busy, Options, Reconciliation, type_advice
from sync.reconcile.reconcile import reconcile as reconcile_job
from sync.run.report import EXIT_BUSY, EXIT_DRIFT, EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, RunOptions
from sync.text import plural


@click.command()
@click.argument("job")
@click.option("--repair", is_flag=True, help="Have the next run resend what drifted (and look up records again).")
@click.option("--now", is_flag=True, help="With --repair: run that next run at once.")
@click.option("--limit", type=click.IntRange(min=1), help="Check at most N subjects (in user id order).")
@click.option(
    "--sample", type=click.FloatRange(0, 1, min_open=True), help="Check this share of the subjects, at random."
)
@click.option("--seed", type=int, help="The random seed of --sample, to check the same subjects again.")
@click.option("--read", "how", type=click.Choice(READS), default="auto", show_default=True,
              help="Read every record page by page (list), the job's records one by one (each), or whichever "
                   "takes fewer requests (auto).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Every drifted row as JSON lines.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl", "parquet"]), default="table",
              show_default=True, help="How the drifted rows are written (table: counts and a sample).")  # fmt: skip
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows to FILE.")
@click.pass_context
def reconcile(
    ctx: click.Context,
    job: str,
    repair: bool,
    now: bool,
    limit: int | None,
    sample: float | None,
    seed: int | None,
    how: str,
    as_json: bool,
    fmt: str,
    output: Path | None,
) -> None:
    """Read JOB's records back from ChartMogul and compare them with what it acknowledged (chartmogul_api).

    Each drifted key is missing, differs or of another type; a whole record is gone (deleted or merged) or
    found (a subject that had none now has one). The reconciliation is recorded as a run of its own kind:
    `runs show ID` gives its counts and requests, `diff ID` its rows. Exit codes: 0 no drift, 6 drift found,
    3 the reading was cut short, 1 it failed, 4 the job is running.
    """
    if now and not repair:
        raise click.UsageError("--now runs the repairing run at once: give --repair with it")
    fmt = "jsonl" if as_json else fmt
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    config = job_config(ctx, job)
    try:
        settings = config.job(job)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    options = Options(repair=repair, limit=limit, sample=sample, read=how, seed=seed)
    stop = stop_on_signals()
    with open_store(config.state_url) as store:
        try:
            result = reconcile_job(store, settings, options, stop=stop)
        except ConfigError as exc:
            fail("; ".join(exc.problems), EXIT_USAGE)
        except Busy as exc:
            fail(str(exc), EXIT_BUSY)
        rows = ({**d.__dict__, "run_id": result.run_id} for d in result.drifts)
        if fmt == "table":
            _summary(result)
        else:
            written = print_rows(stdout_console(), rows, DRIFT_FIELDS, fmt, output)
            if output is not None:
                click.echo(f"{written} rows written to {output}", err=True)
            _summary(result, err=True)
        code = _exit_code(result)
        if repair and now and result.status != "failed" and (result.repaired or result.looked_up):
            click.echo("running the repair now", err=True)
            from sync.run.alerts import Alerts  # a run loads what diffing needs; a reconciliation does not
            from sync.run.runner import Runner

            report = Runner(store, stop=stop, alerts=Alerts(config.notify)).run(
                settings, RunOptions(trigger="reconcile")
            )
            click.echo(
                f"run {report.run_id} {report.status}: {plural(report.delivered, 'update')} delivered, "
                f"{report.failed} failed, {report.unmatched} unmatched (audience-sync runs show {report.run_id})",
                err=True,
            )
            code = report.exit_code or code
    sys.exit(code)


def _exit_code(result: Reconciliation) -> int:
    if result.status == "failed":
        return EXIT_FAILED
    if result.status == "partial":
        return EXIT_PARTIAL
    return EXIT_DRIFT if result.drifts else EXIT_OK


def _summary(result: Reconciliation, err: bool = False) -> None:
    """Counts per key and drift, a sample of each, and what the repair did or what to do."""

    def say(text: str = "") -> None:
        click.echo(text, err=err)

    how = "page by page (every record of the account)" if result.how == "list" else "record by record"
    say(
        f"reconciliation {result.run_id} of {result.job} {result.status}: {plural(result.checked, 'subject')} "
        f"checked, read {how} in {plural(result.requests, 'request')} ({result.seconds:.1f} s)"
    )
    if result.error:
        say(f"  {result.error}")
    if result.status == "failed":
        return
    if not result.drifts:
        say("  no drift: ChartMogul holds what it acknowledged")
        return
    by_key: dict[tuple[str, str], list[Drift]] = {}
    for drift in result.drifts:
        by_key.setdefault((drift.drift, drift.key or "(record)"), []).append(drift)
    for name in DRIFTS:
        for (kind, key), found in sorted(by_key.items()):
            if kind != name:
                continue
            say(f"  {kind:<8} {key:<24} {len(found):>8}")
            for drift in found[:SAMPLE]:
                say(f"      {_row(drift)}")
    if any(d.drift == "type" for d in result.drifts):
        say(f"  type: {type_advice(result.job)}")
    if result.repaired or result.looked_up:
        say(
            f"  repair: the next run resends {plural(result.repaired, 'subject')} and looks "
            f"{plural(result.looked_up, 'subject')} up again (audience-sync run {result.job}, or --repair --now)"
        )
    else:
        say(f"  audience-sync diff {result.run_id} lists every row; --repair has the next run resend them")


def _row(drift: Drift) -> str:
    d = drift.__dict__
    if d["drift"] == "gone":
        return f"{d['user_id']}: record {d['remote_id']} no longer exists"
    if d["drift"] == "found":
        return f"{d['user_id']}: record {d['remote_id']} now has its id"
    if d["drift"] == "missing":
        return f"{d['user_id']}: expected {d['expected']!r}, the attribute is absent"
    if d["drift"] == "type":
        return f"{d['user_id']}: created as {d['expected']}, holds a {d['found']}"
    return f"{d['user_id']}: expected {d['expected']!r}, holds {d['found']!r}"
