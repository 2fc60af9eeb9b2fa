"""From a job's destination settings to the destination that delivers them, and to how its updates are
rendered: the one place outside each destination's module that knows which destinations exist."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from sync.calls import CallSpec
from sync.clock import Clock, Sleep, utc_now
from sync.config import ChartMogulApiConfig, ChartMogulWebhookConfig, DestinationConfig, JobConfig, SegmentConfig
from sync.destinations.base import RemoteIds
from sync.destinations.breaker import Breaker
from sync.destinations.chartmogul import ChartMogulWebhook
from sync.destinations.chartmogul_api import ChartMogulApi, ChartMogulApiTarget, remote_scope
from sync.destinations.http import HttpDestination, Target
from sync.destinations.segment import SegmentBatch

# What Engage puts on calls for the ChartMogul destination only.
CHARTMOGUL_INTEGRATIONS = {"All": False, "ChartMogul": True}

# Each destination type: its target (body shaping and packing) from its settings.
TARGETS: dict[type[Any], Callable[[Any], Target]] = {
    ChartMogulWebhookConfig: ChartMogulWebhook,
    SegmentConfig: SegmentBatch,
}


def build_destination(
    settings: DestinationConfig,
    client: httpx.AsyncClient,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = utc_now,
    breaker: Breaker | None = None,
) -> HttpDestination:
    if isinstance(settings, ChartMogulApiConfig):  # finds each record before it writes: an engine of its own
        return ChartMogulApi(ChartMogulApiTarget(settings), client, sleep=sleep, clock=clock, breaker=breaker)
    return HttpDestination(
        TARGETS[type(settings)](settings), client, settings, sleep=sleep, clock=clock, breaker=breaker
    )


def remote_ids(settings: DestinationConfig) -> RemoteIds | None:
    """Where a destination that finds records before writing keeps the ids it found; None for the others."""
    return remote_scope(settings) if isinstance(settings, ChartMogulApiConfig) else None


def call_spec(job: JobConfig, installation: str) -> CallSpec:
    """How ``job``'s updates are rendered. Calls into a Segment workspace carry messageIds salted with the
    installation's id; a ChartMogul webhook gets the update's own id, as it always has."""
    ids = {item.resolved_key: item.id for item in (*job.audiences, *job.traits) if item.id}
    settings = job.destination
    if isinstance(settings, SegmentConfig):
        names = settings.event_names.model_dump()
        spec = CallSpec(settings.calls, job.space_id, dict(settings.integrations), ids, installation, settings.events)
        spec = replace(spec, event_names=names) if settings.events != "identify" else spec
    else:
        spec = CallSpec("per_user", job.space_id, CHARTMOGUL_INTEGRATIONS, ids)
    return replace(spec, subject=job.subject) if job.subject != "user" else spec


def spec_before_specs(space_id: str | None) -> CallSpec:
    """How runs recorded before each run kept its spec rendered their calls: ChartMogul's, per user."""
    return CallSpec("per_user", space_id, CHARTMOGUL_INTEGRATIONS)
