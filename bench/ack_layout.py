"""What acknowledging costs in a large SQLite state store, with `ack_state` as it is and as a WITHOUT ROWID table.

`python bench/ack_layout.py --rows 10000000 --acknowledge 200000 [--repeat 3] [--dir DIR]` seeds a SQLite
state store with ROWS acknowledged users of one earlier run (in user order, as an initial sync writes them),
copies it and rebuilds the copy's `ack_state` WITHOUT ROWID: its rows then live in the primary key's own
B-tree, so that finding a user's row is one lookup instead of the key's index and then the table. Per
repetition, ACKNOWLEDGE random users (one in three new, as 1 % changed and 0.5 % new users are) are planned
in a run of their own, untimed, then `Store.record_results` is timed acknowledging them 5,000 at a time, as
`bench/steps.py acknowledge` does, alternating between the two stores; medians of R. Prints one JSON
object as its last line.
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
from sync.destinations.base import DeliveryResult  # noqa: E402
from sync.model import KeyChange, Update  # noqa: E402
from sync.store import Store  # noqa: E402

GROUP = 5_000  # answers recorded together, as delivery records them


def state(number: int) -> str:
    return f'{{"audience_{number % 10}":true,"audience_{(number + 3) % 10}":true,"ltv":{number % 997}.5,"plan":"pro"}}'


def profile(number: int) -> str:
    return f'{{"email":"{user(number)}@example.com","first_name":"First","last_name":"Last{number % 100}"}}'


def seed(path: Path, rows: int) -> None:
    """A state store whose ``ack_state`` holds ``rows`` users acknowledged by one run."""
    paired.seed_rows(
        path,
        rows,
        "INSERT INTO ack_state (job, user_id, state, profile, version, run_id, updated_at, fingerprint) "
        "VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
        lambda run_id, n: (JOB, user(n), state(n), profile(n), run_id, NOW.isoformat(), n * 2654435761 % (1 << 62)),
    )


def without_rowid(path: Path) -> None:
    """Rebuild ``ack_state`` as a WITHOUT ROWID table with the same columns, key and index."""
    connection = sqlite3.connect(path)
    (table,) = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ack_state'"
    ).fetchone()
    indexes = [
        sql
        for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ack_state' AND sql IS NOT NULL"
        )
    ]
    connection.executescript(
        "BEGIN;"
        f"{table.replace('CREATE TABLE ack_state', 'CREATE TABLE ack_state_new', 1)} WITHOUT ROWID;"
        "INSERT INTO ack_state_new SELECT * FROM ack_state;"
        "DROP TABLE ack_state;"
        "ALTER TABLE ack_state_new RENAME TO ack_state;" + "".join(f"{sql};" for sql in indexes) + "COMMIT;"
    )
    connection.close()


def updates(rows: int, count: int, rng: random.Random) -> list[Update]:
    """``count`` updates of random users, one in three of them not acknowledged before."""
    known = rng.sample(range(rows), count - count // 3)
    new = rng.sample(range(rows, rows + rows // 2), count // 3)
    chosen = known + new
    rng.shuffle(chosen)  # answers arrive in no particular order
    return [
        Update(
            user_id=user(n),
            message_id=f"as-{rng.getrandbits(160):040x}",
            changes=(KeyChange("audience_3", "audience", True, False),),
            profile={"email": f"{user(n)}@example.com", "first_name": "First"},
            state={"audience_1": True, "ltv": 13.0},
            fingerprint=rng.getrandbits(62),
        )
        for n in chosen
    ]


def acknowledge(store: Store, batch: list[Update]) -> float:
    run_id = store.start_run(JOB, "incremental", False, NOW)
    store.record_plan(run_id, batch, "pending")
    results = [(u, DeliveryResult(u.user_id, u.message_id, True, 1, NOW, NOW, 200)) for u in batch]
    started = time.perf_counter()
    for start in range(0, len(results), GROUP):
        store.record_results(JOB, run_id, results[start : start + GROUP])
    return time.perf_counter() - started


if __name__ == "__main__":
    paired.main(
        __doc__ or "",
        "acknowledge",
        ("ack_state as it is", "WITHOUT ROWID"),
        ("rowid_s", "without_rowid_s"),
        "acknowledging {count:,} users in a store of {rows:,}, SQLite",
        0,
        (seed, without_rowid, updates, acknowledge),
        7,
    )
