"""The mass-change guard: a broken upstream query must not silently push ``false`` to an audience. Pure.

A run is stopped before it sends anything when, for an audience the destination already knows,
- the new snapshot has no member at all where the acknowledged state has members (``block_empty``), or
- more than ``exit_share`` of its acknowledged members would exit, for an audience of at least
  ``min_members`` acknowledged members.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import pandas as pd

from sync.config import GuardConfig
from sync.snapshot import Computation


def guard_problems(
    snapshot: pd.DataFrame,
    changes: pd.DataFrame,
    computations: Sequence[Computation],
    tracked: Set[str],
    guard: GuardConfig,
) -> list[str]:
    """One sentence per audience that trips the guard; empty when the run may go ahead.

    The acknowledged member count is the snapshot's, less the real entries, plus the exits: every other
    user's membership is the same in both.
    """
    if not guard.enabled:
        return []
    problems = []
    for computation in computations:
        if computation.kind != "audience" or computation.key not in tracked:
            continue
        rows = changes[changes["key"] == computation.key]
        leaving = int((rows["change"] == "exited").sum())
        entering = int(((rows["change"] == "entered") & (rows["old"] != True)).sum())  # noqa: E712 - element-wise
        after = int(snapshot[computation.key].sum()) if computation.key in snapshot.columns else 0
        before = after - entering + leaving
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
