"""``audience-sync dbt exposures``: the jobs as dbt exposures, downstream of the models they read."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from sync.cli.common import fail, job_config
from sync.config.dbt import Manifest
from sync.integrations.dbt import exposures as build_exposures
from sync.run.report import EXIT_USAGE
from sync.text import plural


@click.group()
def dbt() -> None:
    """dbt: the jobs as exposures of the project named by dbt.manifest in jobs.yaml."""


@dbt.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (in models/).")
@click.option("--owner", default="audience-sync", show_default=True, help="The exposures' owner name.")
@click.option("--email", help="The owner's email.")
@click.pass_context
def exposures(ctx: click.Context, out: Path | None, owner: str, email: str | None) -> None:
    """Write a dbt exposures YAML: one exposure per job, depending on the dbt models it reads."""
    config = job_config(ctx)
    if config.dbt is None:
        fail("jobs.yaml has no dbt: {manifest: target/manifest.json}; it names the project's models", EXIT_USAGE)
    manifest = Manifest.load(config.base_dir / config.dbt.manifest)
    document, without = build_exposures(config, manifest, owner, email)
    text = "# Written by `audience-sync dbt exposures`; run it again after changing jobs.yaml.\n" + yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True
    )
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {plural(len(document['exposures']), 'exposure')} to {out}", err=True)
    if without:
        click.echo(f"not exposures (they read no dbt model): {', '.join(without)}", err=True)
