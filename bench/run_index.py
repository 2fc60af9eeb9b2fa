"""What the console's index of a run's updates in id order costs a run on a large SQLite state store.

`python bench/run_index.py --rows 10000000 --new 200000 [--repeat 3] [--dir DIR]`: the store and the updates of
`bench/audit_index.py`, with `ix_run_updates_run_id_id` (the console's pages of a run's changes, read from a
cursor on) dropped from the copy instead; `Store.record_plan` of NEW updates timed on both, alternating, medians
of R. Prints one JSON object as its last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import paired  # noqa: E402
from bench.audit_index import drop_index, record, seed, updates  # noqa: E402


def drop_run_index(path: Path) -> None:
    drop_index(path, "ix_run_updates_run_id_id")


if __name__ == "__main__":
    paired.main(
        __doc__ or "",
        "new",
        ("with the run's id-order index", "without it"),
        ("with_index_s", "without_index_s"),
        "{count:,} audit rows into {rows:,}, SQLite",
        1,
        (seed, drop_run_index, updates, record),
        5,
    )
