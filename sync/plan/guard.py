"""The mass-change guard: a broken upstream query must not silently push ``false`` to an audience. Pure.

A run is stopped before it sends anything when, for an audience the destination already knows,
- the new snapshot has no member at all where the acknowledged state has members (``block_empty``), or
- more than ``exit_share`` of its acknowledged members would exit, for an audience of at least
  ``min_members`` acknowledged members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

import pandas as pd

from sync.config import GuardConfig
from sync.model import Computation


def moves(changes: pd.DataFrame, into: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Per audience key: [real entries, exits] in ``changes`` (a diff), added to ``into``."""
    counts = into if into is not None else {}
    audience = changes[changes["change"].isin(["entered", "exited"])]
    for key, rows in audience.groupby("key", sort=False):
        row = counts.setdefault(str(key), [0, 0])
        row[0] += int(((rows["change"] == "entered") & (rows["old"] != True)).sum())  # noqa: E712 - element-wise
        row[1] += int((rows["change"] == "exited").sum())
    return counts


def guard_problems(
    members: Mapping[str, int],
    moved: Mapping[str, Sequence[int]],
    computations: Sequence[Computation],
    tracked: Set[str],
    guard: GuardConfig,
) -> list[str]:
    """One sentence per audience that trips the guard; empty when the run may go ahead.

    ``members``: each audience's member count in the snapshot (needed only for those with exits);
    ``moved``: its real entries and exits
    (``moves``). The acknowledged member count is the snapshot's, less the real entries, plus the exits:
    every other user's membership is the same in both.
    """
    if not guard.enabled:
        return []
    problems = []
    for computation in computations:
        if computation.kind != "audience" or computation.key not in tracked:
            continue
        entering, leaving = moved.get(computation.key, (0, 0))
        if not leaving:  # nobody exits: neither rule can trip (and its members need not be counted)
            continue
        after = members.get(computation.key, 0)
        before = after - entering + leaving
        if before and not after and guard.block_empty:
            problems.append(
                f"audience {computation.key}: the snapshot has no members, but {before} users are "
                "members as the destination acknowledged them; every one of them would be sent false"
            )
        elif before >= guard.min_members and leaving > guard.exit_share * before:
            problems.append(
                f"audience {computation.key}: {leaving} of its {before} members ({leaving / before:.0%}) "
                f"would exit, more than the {guard.exit_share:.0%} the guard allows"
            )
    return problems
