"""What the audit trail's per-user index costs a run on a large SQLite state store.

`python bench/audit_index.py --rows 10000000 --new 200000 [--repeat 3] [--dir DIR]` seeds a SQLite state
store with ROWS audit rows of one earlier run (one per user, in user order, as an initial sync writes them),
copies it and drops `ix_run_updates_user_id_run_id` (a user's history, for `audit --user` and `diff --user`)
from the copy. It then times `Store.record_plan` of NEW updates of random users, 20,000 at a time as a dry
run writes them, alternating between the two stores; medians of R. Prints one JSON object as its last line.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import paired  # noqa: E402
from bench.paired import JOB, NOW, user  # noqa: E402
from sync.model import KeyChange, Update  # noqa: E402
from sync.store import Store  # noqa: E402

BATCH = 20_000


def seed(path: Path, rows: int) -> None:
    """A state store whose audit trail holds ``rows`` rows of one run, one per user."""
    changes = '[["audience_3","audience",null,true],["ltv","trait",null,12.5]]'
    paired.seed_rows(
        path,
        rows,
        "INSERT INTO run_updates (run_id, user_id, message_id, changes, profile, status, attempts) "
        "VALUES (?, ?, ?, ?, ?, 'delivered', 1)",
        lambda run_id, n: (
            run_id,
            user(n),
            f"as-{n:040x}",
            changes,
            f'{{"email":"{user(n)}@example.com","first_name":"F"}}',
        ),
    )


def updates(rows: int, new: int, rng: random.Random) -> list[Update]:
    """``new`` updates of random users, one in fifty of them not seen before."""
    chosen = rng.sample(range(rows + rows // 50), new)
    return [
        Update(
            user_id=user(n),
            message_id=f"as-{rng.getrandbits(160):040x}",
            changes=(KeyChange("audience_3", "audience", True, False), KeyChange("ltv", "trait", 12.5, 13.0)),
            profile={"email": f"{user(n)}@example.com", "first_name": "F"},
            state={"ltv": 13.0},
        )
        for n in chosen
    ]


def record(store: Store, batch: list[Update]) -> float:
    run_id = store.start_run(JOB, "incremental", True, NOW)
    started = time.perf_counter()
    for start in range(0, len(batch), BATCH):
        store.record_plan(run_id, batch[start : start + BATCH], "planned")
    return time.perf_counter() - started


def drop_index(path: Path, name: str) -> None:
    """The store at ``path`` without the index ``name``."""
    connection = sqlite3.connect(path)
    connection.execute(f"DROP INDEX {name}")
    connection.close()


def drop_user_index(path: Path) -> None:
    drop_index(path, "ix_run_updates_user_id_run_id")


if __name__ == "__main__":
    paired.main(
        __doc__ or "",
        "new",
        ("with the per-user index", "without it"),
        ("with_index_s", "without_index_s"),
        "{count:,} audit rows into {rows:,}, SQLite",
        1,
        (seed, drop_user_index, updates, record),
        5,
    )
