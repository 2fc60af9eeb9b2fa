"""Dagster (``pip install 'audience-sync[dagster]'``): one asset per job, ``audience_sync/<job>``.

    import dagster as dg
    from sync.integrations.dagster import audience_sync_assets

    defs = dg.Definitions(assets=[*dbt_assets, *audience_sync_assets("jobs.yaml")])

Each asset's upstream are the assets of what its queries read: a dbt model by its name (dagster-dbt's default
key), any other table by its ``[schema, table]`` (``[table]`` when the query names no schema); ``upstream``
maps a ``TableName`` to another key. A materialization runs the job once (``sync.api.run``) and carries the
run id, status, counts and duration as metadata; a failed, blocked or interrupted run fails the asset with its
reason. The run configuration takes ``full`` and ``dry_run``.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from sync import api
from sync.config import Config, JobConfig
from sync.config.dbt import Manifest
from sync.integrations.dbt import refs_of
from sync.tables import TableName, job_reads

GROUP = "audience_sync"
FAILING = ("failed", "blocked", "interrupted")


class SyncRun(dg.Config):
    """What a materialization may ask of the run."""

    full: bool = False
    dry_run: bool = False


def audience_sync_assets(
    config: str | Path | Config | None = None,
    jobs: Sequence[str] | None = None,
    *,
    upstream: Callable[[TableName], dg.AssetKey | None] | None = None,
    fail_on: Sequence[str] = FAILING,
) -> list[dg.AssetsDefinition]:
    """An asset per job of ``config`` (``jobs``: only those)."""
    loaded = api.load(config)
    path = config if isinstance(config, str | Path) or config is None else loaded
    manifest = Manifest.load(loaded.base_dir / loaded.dbt.manifest) if loaded.dbt else None
    chosen = [job for job in loaded.jobs if jobs is None or job.name in jobs]
    return [_asset(path, job, _upstream(job, manifest, upstream), tuple(fail_on)) for job in chosen]


def _upstream(
    job: JobConfig, manifest: Manifest | None, custom: Callable[[TableName], dg.AssetKey | None] | None
) -> list[dg.AssetKey]:
    keys: dict[str, dg.AssetKey] = {}
    if manifest is not None:
        for ref in refs_of(job):
            key = dg.AssetKey([manifest.model(ref).name])
            keys[key.to_user_string()] = key
    for table in job_reads(job).tables:
        found = custom(table) if custom is not None else None
        model = manifest.model_of(table.catalog, table.schema, table.name) if manifest is not None else None
        if found is None and model is not None:
            found = dg.AssetKey([model.name])
        if found is None:
            found = dg.AssetKey([part for part in (table.schema, table.name) if part])
        keys[found.to_user_string()] = found
    return sorted(keys.values(), key=lambda k: k.to_user_string())


def _asset(
    source: str | Path | Config | None, job: JobConfig, deps: list[dg.AssetKey], fail_on: tuple[str, ...]
) -> dg.AssetsDefinition:
    audiences, traits = len(job.audiences), len(job.traits)

    @dg.asset(
        key=dg.AssetKey([GROUP, job.name]),
        deps=deps,
        group_name=GROUP,
        kinds={"chartmogul" if job.destination.type.startswith("chartmogul") else "segment"},
        description=(
            f"audience-sync job {job.name}: {audiences} audience{'s' * (audiences != 1)} and {traits} "
            f"trait{'s' * (traits != 1)} to {job.destination.type}, sending only what changed."
        ),
    )
    def sync(context: dg.AssetExecutionContext, config: SyncRun) -> dg.MaterializeResult:  # type: ignore[type-arg]
        result = api.run(source, job.name, full=config.full, dry_run=config.dry_run, trigger="dagster")
        metadata = _metadata(result)
        if result.status in fail_on:
            raise dg.Failure(
                description=f"run {result.run_id} of {job.name} {result.status}: {result.error or 'no error'}",
                metadata=metadata,
            )
        if not result.ok:
            context.log.warning("run %s of %s %s: %s", result.run_id, job.name, result.status, result.error)
        return dg.MaterializeResult(metadata=metadata)

    return sync


def _metadata(result: api.RunResult) -> dict[str, Any]:
    counts = result.counts
    shown: dict[str, Any] = {
        "run_id": result.run_id,
        "status": result.status,
        "duration_s": dg.MetadataValue.float(result.duration_s or 0.0),
        **{name: counts.get(name, 0) for name in ("users", "entered", "exited", "traits_changed", "updates")},
        **{name: counts.get(name, 0) for name in ("delivered", "failed", "unmatched")},
    }
    if result.error:
        shown["error"] = result.error
    if result.alerts:
        shown["alerts"] = dg.MetadataValue.json(result.alerts)
    return shown
