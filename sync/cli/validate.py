"""``audience-sync validate``: the configuration alone, without the modules a run loads, so that a bad file
is answered at once."""

from __future__ import annotations

import sys

import click

from sync.cli.common import job_config
from sync.config import Config
from sync.run.report import EXIT_USAGE
from sync.text import plural


@click.command()
@click.argument("job", required=False)
@click.option(
    "--connect",
    is_flag=True,
    help="Also reach the state store, each warehouse (every query run so that it returns no rows, its columns "
    "checked) and each destination (ChartMogul API: GET /v1/ping; webhook and Segment: DNS, TCP and TLS). "
    "Nothing is written anywhere.",
)
@click.pass_context
def validate(ctx: click.Context, job: str | None, connect: bool) -> None:
    """Check jobs.yaml (or only JOB) and report every problem at once (exit 2 when there is one)."""
    config = job_config(ctx, *([job] if job else []))
    for each in config.jobs:
        keys = ", ".join(each.audience_keys() + each.trait_keys())
        click.echo(
            f"job {each.name}: {plural(len(each.audiences), 'audience')}, {plural(len(each.traits), 'trait')}: {keys}"
        )
        if each.destination.type == "chartmogul" and each.audiences:
            click.echo(
                f"  note: the webhook sends {each.name}'s audience and trait keys as custom_attributes, which "
                "ChartMogul may not show on the contact; `type: chartmogul_api` writes them as typed custom "
                "attributes (README: Which ChartMogul destination?)"
            )
    click.echo("configuration is valid")
    if connect:
        _connect(config)


def _connect(config: Config) -> None:
    import httpx

    from sync.preflight import check_job, check_store

    found = [check_store(config.state_url)]
    with httpx.Client(follow_redirects=False) as client:
        found += [check_job(job, client) for job in config.jobs]
    problems = [p for f in found for p in f.problems]
    for note in (n for f in found for n in f.notes):
        click.echo(f"ok: {note}")
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        sys.exit(EXIT_USAGE)
    click.echo("everything a run needs answered")
