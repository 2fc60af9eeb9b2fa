"""``audience-sync validate``: the configuration alone, without the modules a run loads, so that a bad file
is answered at once."""

from __future__ import annotations

import click

from sync.cli.common import job_config
from sync.text import plural


@click.command()
@click.argument("job", required=False)
@click.pass_context
def validate(ctx: click.Context, job: str | None) -> None:
    """Check jobs.yaml (or only JOB) and report every problem at once (exit 2 when there is one)."""
    config = job_config(ctx, *([job] if job else []))
    for each in config.jobs:
        keys = ", ".join(each.audience_keys() + each.trait_keys())
        click.echo(
            f"job {each.name}: {plural(len(each.audiences), 'audience')}, {plural(len(each.traits), 'trait')}: {keys}"
        )
    click.echo("configuration is valid")
