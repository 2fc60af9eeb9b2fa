"""The mass-change guard: a broken upstream query must not silently push ``false`` to an audience. Pure.

A run is stopped before it sends anything when, for an audience the destination already knows,
- the new snapshot has no member at all where the acknowledged state has members (``block_empty``), or
- more than ``exit_share`` of its acknowledged members would exit, for an audience of at least
  ``min_members`` acknowledged members.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from sync.config import GuardConfig
from sync.snapshot import Computation


def guard_problems(
    baseline: pd.DataFrame,
    snapshot: pd.DataFrame,
    changes: pd.DataFrame,
    computations: Sequence[Computation],
    guard: GuardConfig,
) -> list[str]:
    """One sentence per audience that trips the guard; empty when the run may go ahead."""
    if not guard.enabled:
        return []
    exits = changes.loc[changes["change"] == "exited", "key"].value_counts()
    problems = []
    for computation in computations:
        if computation.kind != "audience" or computation.key not in baseline.columns:
            continue
        before = int(baseline[computation.key].sum())
        after = int(snapshot[computation.key].sum()) if computation.key in snapshot.columns else 0
        leaving = int(exits.get(computation.key, 0))
        if before and not after and guard.block_empty:
            problems.append(
                f"audience {computation.key}: the snapshot has no members, but {before} users are "
                "members in ChartMogul; every one of them would be sent false"
            )
        elif before >= guard.min_members and leaving > guard.exit_share * before:
            problems.append(
                f"audience {computation.key}: {leaving} of its {before} members ({leaving / before:.0%}) "
                f"would exit, more than the {guard.exit_share:.0%} the guard allows"
            )
    return problems
