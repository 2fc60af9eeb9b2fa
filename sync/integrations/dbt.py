"""`audience-sync dbt exposures`: one dbt exposure per job, depending on the dbt models it reads (the ones its
``ref`` settings name and those whose tables its queries read), so that dbt's docs and lineage show the syncs
downstream of the models."""

from __future__ import annotations

from typing import Any

from sync.config import Config, JobConfig
from sync.config.dbt import Manifest, Model
from sync.keys import snake_case
from sync.tables import job_reads


def refs_of(job: JobConfig) -> list[str]:
    """The dbt models ``job`` names by ``ref`` (its audiences' and traits', then its profiles')."""
    refs = [item.ref for item in (*job.audiences, *job.traits) if item.ref is not None]
    if job.source.profiles_ref is not None:
        refs.append(job.source.profiles_ref)
    return refs


def job_models(job: JobConfig, manifest: Manifest) -> list[Model]:
    """The dbt models ``job`` reads, by name."""
    found = {model.unique_id: model for model in map(manifest.model, refs_of(job))}
    for table in job_reads(job).tables:
        model = manifest.model_of(table.catalog, table.schema, table.name)
        if model is not None:
            found[model.unique_id] = model
    return sorted(found.values(), key=lambda m: m.name)


def exposures(
    config: Config, manifest: Manifest, owner: str, email: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The exposures YAML (as data) for the jobs that read dbt models, and the names of those that read none."""
    listed: list[dict[str, Any]] = []
    without: list[str] = []
    for job in config.jobs:
        models = job_models(job, manifest)
        if not models:
            without.append(job.name)
            continue
        listed.append(_exposure(job, models, owner, email))
    return {"version": 2, "exposures": listed}, without


def _exposure(job: JobConfig, models: list[Model], owner: str, email: str | None) -> dict[str, Any]:
    audiences, traits = len(job.audiences), len(job.traits)
    schedule = job.schedule.cron or f"every {_hours(job.schedule.every.total_seconds())}"
    subject = "accounts" if job.subject == "account" else "users"
    return {
        "name": f"audience_sync_{snake_case(job.name)}",
        "label": f"audience-sync: {job.name}",
        "type": "application",
        "maturity": "high",
        "description": (
            f"Syncs {audiences} audience{'s' * (audiences != 1)} and {traits} trait{'s' * (traits != 1)} of "
            f"{subject} to {job.destination.type} ({schedule}), sending only what changed."
        ),
        "owner": {"name": owner, **({"email": email} if email else {})},
        "depends_on": [_ref(model, len({m.package for m in models}) > 1) for model in models],
        "meta": {"audience_sync_job": job.name, "destination": job.destination.type},
    }


def _ref(model: Model, qualify: bool) -> str:
    return f"ref('{model.package}', '{model.name}')" if qualify else f"ref('{model.name}')"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"
