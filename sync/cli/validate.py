"""``audience-sync validate``: the configuration alone, without the modules a run loads, so that a bad file
is answered at once."""

from __future__ import annotations

import click

from sync.cli.common import job_config


@click.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check jobs.yaml and report every problem at once (exit 2 when there is one)."""
    config = job_config(ctx)
    for job in config.jobs:
        keys = ", ".join(job.audience_keys() + job.trait_keys())
        click.echo(f"job {job.name}: {len(job.audiences)} audience(s), {len(job.traits)} trait(s): {keys}")
    click.echo("configuration is valid")
