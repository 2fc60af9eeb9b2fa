"""Synthetic workload for the benchmark, from a fixed seed.

N users (ids like ``u0000001234``), 10 audiences with 5–40 % membership, two computed traits (a number
and a string, 2 % null), profile fields. The second snapshot changes 1 % of users (one audience flipped or
a trait changed), drops 0.5 % and adds 0.5 % new users.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

AUDIENCES = [f"audience_{k}" for k in range(10)]
SHARES = np.linspace(0.05, 0.40, len(AUDIENCES))
PLANS = np.array(["free", "starter", "growth", "enterprise"], dtype=object)
FIRST = np.array(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus"], dtype=object)
LAST = np.array(
    ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Torvalds"], dtype=object
)


@dataclass
class Snapshot:
    """One snapshot: a wide frame (index user_id; audience bools; ``ltv`` float; ``plan`` str) and profiles."""

    wide: pd.DataFrame
    profiles: pd.DataFrame


def ids(start: int, stop: int) -> np.ndarray:
    return np.char.add("u", np.char.zfill(np.arange(start, stop).astype(str), 10)).astype(object)


def _users(rng: np.random.Generator, start: int, stop: int) -> pd.DataFrame:
    n = stop - start
    frame = pd.DataFrame(
        {name: rng.random(n) < share for name, share in zip(AUDIENCES, SHARES, strict=True)},
        index=pd.Index(ids(start, stop), name="user_id"),
    )
    ltv = np.round(rng.gamma(2.0, 150.0, n), 2)
    frame["ltv"] = np.where(rng.random(n) < 0.02, np.nan, ltv)
    plan = PLANS[rng.integers(0, len(PLANS), n)]
    plan[rng.random(n) < 0.02] = None
    frame["plan"] = pd.Series(list(plan), index=frame.index, dtype="object")
    return frame


def _profiles(index: pd.Index, rng: np.random.Generator) -> pd.DataFrame:
    n = len(index)
    user_ids = index.to_numpy()
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "email": np.char.add(user_ids.astype(str), "@example.com").astype(object),
            "first_name": FIRST[rng.integers(0, len(FIRST), n)],
            "last_name": LAST[rng.integers(0, len(LAST), n)],
        }
    )


def generate(n: int, seed: int = 42) -> tuple[Snapshot, Snapshot]:
    rng = np.random.default_rng(seed)
    first = _users(rng, 0, n)
    second = first.copy()
    changed = rng.choice(n, size=max(1, n // 100), replace=False)
    flip_trait = rng.random(len(changed)) < 0.3
    columns = rng.integers(0, len(AUDIENCES), len(changed))
    for position, column in zip(changed[~flip_trait], columns[~flip_trait], strict=True):
        second.iat[position, column] = not second.iat[position, column]
    ltv = second["ltv"].to_numpy(copy=True)
    ltv[changed[flip_trait]] += 1.0
    second["ltv"] = ltv
    gone = rng.choice(np.setdiff1d(np.arange(n), changed), size=max(1, n // 200), replace=False)
    second = second.drop(second.index[gone])
    second = pd.concat([second, _users(rng, n, n + max(1, n // 200))])
    return (Snapshot(first, _profiles(first.index, rng)), Snapshot(second, _profiles(second.index, rng)))


def write_files(snapshot: Snapshot, folder: Path) -> None:
    """The file source: one Parquet file per audience and trait, and the profiles."""
    folder.mkdir(parents=True, exist_ok=True)
    wide = snapshot.wide
    for name in AUDIENCES:
        pd.DataFrame({"user_id": wide.index[wide[name].to_numpy()]}).to_parquet(folder / f"{name}.parquet")
    for trait in ("ltv", "plan"):
        values = wide[trait].dropna()
        pd.DataFrame({"user_id": values.index, "value": values.to_numpy()}).to_parquet(folder / f"{trait}.parquet")
    snapshot.profiles.to_parquet(folder / "profiles.parquet")


def write_warehouse(snapshot: Snapshot, path: Path) -> None:
    """The SQLite warehouse source: profiles, members (audience, user_id) and trait values."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE profiles (user_id TEXT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT)")
        db.execute("CREATE TABLE members (audience TEXT, user_id TEXT)")
        db.execute("CREATE TABLE traits (trait TEXT, user_id TEXT, value)")
        db.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", snapshot.profiles.itertuples(index=False))
        wide = snapshot.wide
        for name in AUDIENCES:
            db.executemany("INSERT INTO members VALUES (?, ?)", ((name, u) for u in wide.index[wide[name].to_numpy()]))
        for trait in ("ltv", "plan"):
            values = wide[trait].dropna()
            db.executemany(
                "INSERT INTO traits VALUES (?, ?, ?)",
                ((trait, u, v) for u, v in zip(values.index, values.tolist(), strict=True)),
            )
        db.execute("CREATE INDEX members_by_audience ON members (audience, user_id)")
        db.execute("CREATE INDEX traits_by_trait ON traits (trait, user_id)")


def job_yaml(source: str, folder: Path, webhook: str) -> dict[str, object]:
    """A job over the file source (``files``) or the SQLite warehouse (``sqlite``)."""
    if source == "files":
        return {
            "name": "bench",
            "source": {"profiles_file": str(folder / "profiles.parquet")},
            "audiences": [{"name": a, "file": str(folder / f"{a}.parquet")} for a in AUDIENCES],
            "traits": [{"name": t, "file": str(folder / f"{t}.parquet")} for t in ("ltv", "plan")],
            "destination": {"webhook_url": webhook},
            "guard": {"enabled": False},
        }
    return {
        "name": "bench",
        "source": {
            "url": f"sqlite:///{folder / 'warehouse.db'}",
            "profiles": "SELECT user_id, email, first_name, last_name FROM profiles",
        },
        "audiences": [{"name": a, "query": f"SELECT user_id FROM members WHERE audience = '{a}'"} for a in AUDIENCES],
        "traits": [
            {"name": t, "query": f"SELECT user_id, value FROM traits WHERE trait = '{t}'"} for t in ("ltv", "plan")
        ],
        "destination": {"webhook_url": webhook},
        "guard": {"enabled": False},
    }
