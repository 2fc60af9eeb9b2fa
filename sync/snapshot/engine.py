"""The snapshot engine: every user of a snapshot, their fingerprints and the users worth a close look,
computed over Arrow tables in an in-process DuckDB database (no file, no network).

Why DuckDB: a run touches every user of the snapshot (tens of millions of ids across the audience and
trait results), but looks closely only at the few whose state changed. Grouping the ids into users,
hashing every value and joining against the acknowledged fingerprints are set operations over strings,
which DuckDB runs vectorised on every core; Python objects are made only for the users that are examined
(``bench/README.md`` has the measurements behind this choice).

A user's **fingerprint** is the XOR of one 64-bit hash per present value: an audience the user is a
member of, a trait that is not null. An absent value adds nothing, so a newly added audience changes only
its members' fingerprints. Values hash by their JSON meaning: ``3`` and ``3.0`` hash alike, ``"3"`` and
``true`` do not. Equal fingerprints are taken to mean equal states (a change goes unseen with a chance of
about one in 10^19 per changed user); ``SCHEME`` names the hash, and fingerprints recorded under another
scheme are treated as unknown, which costs one run a close look at every user, never a missed change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from sync.errors import EngineError, SourceError
from sync.model import Computation
from sync.snapshot.columns import RowIssue, some
from sync.snapshot.normalise import Parts, ProfilePart

# Profile columns of a selection are named with this prefix.
_PROFILE = "profile__"
_HAS_PROFILE = "has_profile__"
_PROFILE_ROW = "profile_row__"
# Bits of a membership mask column: 63 keep every mask a positive BIGINT.
_BITS = 63
# The stored fingerprints a snapshot is compared with: user_id text, fp BIGINT, known BOOLEAN.
STORED_SCHEMA = pa.schema([("user_id", pa.string()), ("fp", pa.int64()), ("known", pa.bool_())])


# The engine's memory; past it, grouping and joining spill to a temporary folder. The table of users stays in
# it (about 50 bytes a user: 480 MB at ten million), so the rest of 1GB is what grouping and joining get;
# at 512MB, ten million users sometimes ran out. AUDIENCE_SYNC_ENGINE_MEMORY overrides it ("4GB").
ENGINE_MEMORY = "1GB"


# Arrow's buffers come from jemalloc told to hand freed memory back to the system at once. Arrow's default
# pool keeps freed memory for reuse, and the C library's allocator fragments across reader threads: with
# either, a run's peak memory grew by much of what it had read (bench/README.md).
# ARROW_DEFAULT_MEMORY_POOL, when set, still decides.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


def engine_memory() -> str:
    return os.environ.get("AUDIENCE_SYNC_ENGINE_MEMORY", ENGINE_MEMORY)


def _connect(spill: str | None = None) -> duckdb.DuckDBPyConnection:
    # DuckDB's allocator keeps what a finished grouping or join freed for reuse, up to 512 MiB by default,
    # though the tables it made hold a few MiB: handed back at once, a run's peak fell by about a tenth at
    # no measurable cost in time (bench/README.md).
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": False,
        "allocator_bulk_deallocation_flush_threshold": "0MB",
    }
    if spill is not None:
        config |= {"memory_limit": engine_memory(), "temp_directory": spill}
    try:
        return duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise EngineError(
            f"AUDIENCE_SYNC_ENGINE_MEMORY={engine_memory()!r} is not a memory size the engine takes "
            f"(write it like 2GB or 512MB): {str(exc).splitlines()[0]}"
        ) from None


@contextmanager
def _within_memory() -> Iterator[None]:
    try:
        yield
    except duckdb.OutOfMemoryException:
        raise EngineError(
            f"the snapshot engine ran out of its memory (AUDIENCE_SYNC_ENGINE_MEMORY={engine_memory()}); "
            "give it more, or free memory on this machine"
        ) from None


def _scheme() -> str:
    probe = _connect().execute("SELECT hash('audience-sync', 's', 'fingerprint')").fetchall()
    return f"duckdb-xor:{probe[0][0]}"


SCHEME = _scheme()


def _signed(column: str) -> str:
    """A UBIGINT column as the BIGINT of the same 64 bits (the state store keeps signed integers)."""
    return (
        f"CASE WHEN {column} >= 9223372036854775808 THEN ({column}::HUGEINT - 18446744073709551616)::BIGINT "
        f"ELSE {column}::BIGINT END"
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Examined:
    """A batch of examined users in the snapshot: their new fingerprints and their state, a wide frame
    (a bool column per audience, a JSON value or None per trait) indexed by user id."""

    user_ids: list[str]
    fingerprints: list[int]
    state: pd.DataFrame
    profiles: dict[str, dict[str, str]]


class Snapshot:
    """A validated snapshot. ``computations`` and ``issues`` as given; the rest is asked of the engine."""

    def __init__(self, parts: Parts) -> None:
        self.computations: tuple[Computation, ...] = parts.computations
        self.issues: tuple[RowIssue, ...] = parts.issues
        self._parts = parts
        spill = tempfile.mkdtemp(prefix="audience-sync-engine-")
        try:
            self._db = _connect(spill)
        except EngineError:
            shutil.rmtree(spill, ignore_errors=True)
            raise
        weakref.finalize(self, _close, self._db, spill)
        self._masks = (len(self.computations) + 1) // _BITS + 1
        self._bit = {c.key: i for i, c in enumerate(self.computations)}
        with _within_memory():
            self._register()
            self._fold()
            self._check_duplicates()
            self._release_members()

    def _do(self, sql: str) -> None:
        self._db.execute(sql).fetchall()

    # Building ------------------------------------------------------------------------------------------

    def _register(self) -> None:
        """Every result as a table with its rows' order of appearance (profiles, audiences, traits)."""
        offset = 0

        def with_order(table: pa.Table) -> pa.Table:
            nonlocal offset
            kind = np.int32 if offset + len(table) < 2**31 else np.int64  # 4 bytes a row where they do
            ordered = table.append_column("ord", pa.array(np.arange(offset, offset + len(table), dtype=kind)))
            offset += len(table)
            return ordered

        if self._parts.profiles is not None:  # ids only: fields are read for the users looked at
            self._db.register("p", with_order(pa.table({"user_id": self._parts.profiles.ids})))
        for computation in self.computations:
            if computation.kind == "audience":
                members = pa.table({"user_id": self._parts.members[computation.key]})
                self._db.register(self._name(computation), with_order(members))
        for computation in self.computations:
            if computation.kind != "audience":
                self._db.register(self._name(computation), with_order(self._parts.traits[computation.key].table))

    def _name(self, computation: Computation) -> str:
        return f"c{self._bit[computation.key]}"

    def _mask_columns(self, bit: int) -> str:
        return ", ".join(
            f"{(1 << (bit % _BITS)) if k == bit // _BITS else 0}::BIGINT AS m{k}" for k in range(self._masks)
        )

    def _hash(self, computation: Computation) -> str:
        key = _literal(computation.key)
        if computation.kind == "audience":
            return f"hash({key}, 'member')"
        kind = self._parts.traits[computation.key].hash_kind
        if kind == "mixed":
            return (
                f"CASE t WHEN 'n' THEN hash({key}, 'n', vn + 0.0) WHEN 's' THEN hash({key}, 's', vs) "
                f"WHEN 'b' THEN hash({key}, 'b', vb) ELSE hash({key}, 'j', vs) END"
            )
        value = "CAST(v AS DOUBLE) + 0.0" if kind == "n" else "v"
        return f"hash({key}, '{kind}', {value})"

    def _fold(self) -> None:
        """One row per user: the fingerprint, the first appearance, the row count and the membership masks."""
        parts = []
        if self._parts.profiles is not None:
            parts.append(f"SELECT user_id, 0::UBIGINT AS h, ord, {self._mask_columns(len(self.computations))} FROM p")
        for computation in self.computations:
            bit = self._bit[computation.key]
            parts.append(
                f"SELECT user_id, {self._hash(computation)} AS h, ord, {self._mask_columns(bit)} "
                f"FROM {self._name(computation)}"
            )
        masks = ", ".join(f"bit_or(m{k}) AS m{k}" for k in range(self._masks))
        if not parts:
            empty = ", ".join(f"0::BIGINT AS m{k}" for k in range(self._masks))
            parts.append(f"SELECT ''::VARCHAR AS user_id, 0::UBIGINT AS h, 0::BIGINT AS ord, {empty} WHERE false")
        self._rows = " UNION ALL ".join(parts)
        self._do(
            f"CREATE TABLE fp AS SELECT user_id, bit_xor(h) AS x, min(ord) AS ord, count(*) AS n, {masks} "
            f"FROM ({self._rows}) GROUP BY user_id"
        )

    def _check_duplicates(self) -> None:
        """Users listed more than once in one result: identical rows are one row, conflicting ones an error."""
        present = " + ".join(f"bit_count(m{k})" for k in range(self._masks))
        dups = self._db.sql(f"SELECT user_id FROM fp WHERE n > {present}").to_arrow_table()
        self._duplicated = dups.num_rows > 0
        if not self._duplicated:
            return
        self._db.register("dups", dups)
        # A value listed twice cancels out of an XOR: fold the duplicated users again over distinct values.
        self._do(
            "UPDATE fp SET x = d.x FROM (SELECT user_id, bit_xor(DISTINCT h) AS x FROM "
            f"({self._rows}) WHERE user_id IN (SELECT user_id FROM dups) GROUP BY user_id) d "
            "WHERE fp.user_id = d.user_id"
        )
        profiles = self._parts.profiles
        if profiles is not None and profiles.names:
            rows = self._db.sql(
                "SELECT user_id, ord FROM p WHERE user_id IN (SELECT user_id FROM dups)"
            ).to_arrow_table()
            ords = rows.column("ord").to_numpy().astype(np.int64)
            fields = profiles.fields(ords, rows.column("user_id"))
            self._db.register(
                "pd", pa.Table.from_arrays([*rows.columns, *fields.columns], [*rows.column_names, *fields.column_names])
            )
            row = "hash(" + ", ".join(f"nullif(trim({_quoted(c)}), '')" for c in profiles.names) + ")"
            conflicting = self._conflicts("pd", row)
            self._db.unregister("pd")
            if conflicting:
                raise SourceError(f"profiles: conflicting duplicate rows for user_id {some(conflicting)}")
        for computation in self.computations:
            if computation.kind != "audience":
                conflicting = self._conflicts(self._name(computation), self._hash(computation))
                if conflicting:
                    raise SourceError(f"trait {computation.key}: conflicting values for user_id {some(conflicting)}")

    def _release_members(self) -> None:
        """Audience rows are folded into the users' masks: their ids need not stay in memory."""
        for computation in self.computations:
            if computation.kind == "audience":
                self._db.unregister(self._name(computation))
        self._parts = replace(self._parts, members={})

    def _conflicts(self, table: str, row_hash: str) -> list[str]:
        rows = self._db.execute(
            f"SELECT user_id FROM {table} WHERE user_id IN (SELECT user_id FROM dups) "
            f"GROUP BY user_id HAVING count(DISTINCT {row_hash}) > 1 ORDER BY min(ord)"
        ).fetchall()
        return [str(row[0]) for row in rows]

    # Questions -----------------------------------------------------------------------------------------

    @property
    def users(self) -> int:
        """How many users the snapshot has (with a profile, a membership or a trait value)."""
        return int(self._db.execute("SELECT count(*) FROM fp").fetchall()[0][0])

    def member_counts(self, keys: Set[str] | None = None) -> dict[str, int]:
        """Members per audience (of ``keys`` only, when given)."""
        audiences = [c for c in self.computations if c.kind == "audience" and (keys is None or c.key in keys)]
        if not audiences:
            return {}
        sums = ", ".join(f"coalesce(sum({self._has(c)}::INTEGER), 0)" for c in audiences)
        row = self._db.execute(f"SELECT {sums} FROM fp").fetchall()[0]
        return {c.key: int(v) for c, v in zip(audiences, row, strict=True)}

    def _has(self, computation: Computation, table: str = "") -> str:
        bit = self._bit[computation.key]
        prefix = f"{table}." if table else ""
        return f"(({prefix}m{bit // _BITS} >> {bit % _BITS}) & 1 = 1)"

    def examine(self, stored: pa.Table, force: Set[str] = frozenset()) -> Selection:
        with _within_memory():
            return self._examine(stored, force)

    def _examine(self, stored: pa.Table, force: Set[str]) -> Selection:
        """The users worth a close look against the ``stored`` fingerprints (``STORED_SCHEMA``):

        - in the snapshot: no recorded fingerprint but something to send, a recorded one that differs, or a
          value of a ``force`` key (a newly tracked key, or every key of a full run);
        - gone from the snapshot: an acknowledged state that was not empty (or is not known to be empty).
        """
        self._db.register("stored", stored)
        forced = " OR ".join(self._has(c, "f") for c in self.computations if c.key in force) or "false"
        signed = _signed("f.x")
        masks = ", ".join(f"f.m{k}" for k in range(self._masks))
        # One join of every user of both sides; only the few worth a look come out of it.
        self._do(
            f"CREATE OR REPLACE TABLE looked AS SELECT coalesce(f.user_id, s.user_id) AS user_id, "
            f"f.user_id IS NULL AS gone, {signed} AS fp, f.ord, {masks} "
            "FROM fp f FULL OUTER JOIN stored s ON s.user_id = f.user_id WHERE "
            f"(f.user_id IS NOT NULL AND ((s.user_id IS NULL AND f.x <> 0) OR (s.user_id IS NOT NULL AND NOT s.known) "
            f"OR (s.known AND s.fp <> {signed}) OR {forced})) "
            "OR (f.user_id IS NULL AND (s.fp <> 0 OR NOT s.known))"
        )
        self._db.unregister("stored")
        columns = ", ".join(f"m{k}" for k in range(self._masks))
        self._do(f"CREATE OR REPLACE TABLE sel AS SELECT user_id, fp, ord, {columns} FROM looked WHERE NOT gone")
        gone = self._db.execute("SELECT user_id FROM looked WHERE gone ORDER BY user_id").fetchall()
        self._do("DROP TABLE looked")
        return Selection(self, self._selected(), [str(row[0]) for row in gone])

    def everyone(self) -> Selection:
        """Every user of the snapshot, in order of first appearance."""
        masks = ", ".join(f"m{k}" for k in range(self._masks))
        self._do(f"CREATE OR REPLACE TABLE sel AS SELECT user_id, {_signed('x')} AS fp, ord, {masks} FROM fp")
        return Selection(self, self._selected(), [])

    def _selected(self) -> pa.Table:
        """The selected users with their masks and, per trait, its value or (mixed types) its position."""
        joins, columns = [], []
        for computation in self.computations:
            if computation.kind == "audience":
                continue
            name = self._name(computation)
            # A typed trait's values come out as they are; a mixed one's as positions in its list of values.
            value = "vi" if self._parts.traits[computation.key].hash_kind == "mixed" else "v"
            first = f"(SELECT user_id, arg_min({value}, ord) AS {value} FROM {name} GROUP BY user_id)"
            joins.append(f"LEFT JOIN {first if self._duplicated else name} {name} ON {name}.user_id = sel.user_id")
            columns.append(f"{name}.{value} AS {name}")
        if self._parts.profiles is not None:  # each user's profile row: its fields are read below
            source = "(SELECT user_id, min(ord) AS ord FROM p GROUP BY user_id)" if self._duplicated else "p"
            joins.append(f"LEFT JOIN {source} p ON p.user_id = sel.user_id")
            columns.append(f"p.ord AS {_PROFILE_ROW}")
        extra = "".join(f", {c}" for c in columns)
        table = self._db.sql(f"SELECT sel.*{extra} FROM sel {' '.join(joins)} ORDER BY sel.ord").to_arrow_table()
        self._do("DROP TABLE sel")  # its rows are in ``table`` now: at ten million users, a few hundred MB
        return table if self._parts.profiles is None else _with_profiles(table, self._parts.profiles)

    def frame(self, table: pa.Table) -> pd.DataFrame:
        """The wide state of the users of ``table`` (a slice of a selection)."""
        index = pd.Index(table.column("user_id").to_pylist(), dtype=object, name="user_id")
        columns: dict[str, Any] = {}
        for computation in self.computations:
            bit = self._bit[computation.key]
            if computation.kind == "audience":
                masks = table.column(f"m{bit // _BITS}").to_numpy()
                columns[computation.key] = ((masks >> (bit % _BITS)) & 1).astype(bool)
            else:
                part, selected = self._parts.traits[computation.key], table.column(self._name(computation))
                if part.hash_kind == "mixed":
                    positions = np.asarray(selected.fill_null(-1).to_numpy(), dtype=np.int64)
                    values = part.value_list(positions)
                else:
                    values = selected.to_pylist()
                column = np.empty(len(values), dtype=object)
                column[:] = values
                columns[computation.key] = column
        return pd.DataFrame(columns, index=index, columns=[c.key for c in self.computations])

    @property
    def state(self) -> pd.DataFrame:
        """Every user's state (small snapshots and tests; runs use ``examine``)."""
        return self.frame(self.everyone().table)

    @property
    def profiles(self) -> dict[str, dict[str, str]]:
        """Every profile (small snapshots and tests; runs take them batch by batch from a selection)."""
        return _batch_profiles(self.everyone().table)


def _with_profiles(table: pa.Table, profiles: ProfilePart) -> pa.Table:
    """The selected users' profile fields, read from the source for them alone, as columns of ``table``."""
    row = table.column(_PROFILE_ROW)
    present = np.asarray(row.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    ords = np.asarray(row.drop_null().to_numpy(), dtype=np.int64)
    fields = profiles.fields(ords, table.column("user_id").filter(pa.array(present)))
    picks = None  # every user with a profile (an initial sync, often): the fields as read, no copy
    if not present.all():
        slots = np.full(len(present), -1, dtype=np.int64)
        slots[present] = np.arange(len(ords))
        picks = pa.array(slots, mask=~present)
    table = table.drop_columns([_PROFILE_ROW])
    for name in profiles.names:
        column = fields.column(name)
        table = table.append_column(f"{_PROFILE}{name}", column if picks is None else column.take(picks))
    return table.append_column(_HAS_PROFILE, pa.array(present))


def _close(db: duckdb.DuckDBPyConnection, spill: str) -> None:
    db.close()
    shutil.rmtree(spill, ignore_errors=True)


class Selection:
    """Users picked for a close look: in the snapshot (``table``, in order of first appearance) and gone
    from it (``gone``)."""

    def __init__(self, snapshot: Snapshot, table: pa.Table, gone: list[str]) -> None:
        self.snapshot, self.table, self.gone = snapshot, table, gone

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def batches(self, size: int) -> Iterator[Examined]:
        """The selected users of the snapshot, ``size`` at a time, with their state."""
        for start in range(0, self.table.num_rows, size):
            part = self.table.slice(start, size)
            yield Examined(
                part.column("user_id").to_pylist(),
                part.column("fp").to_pylist(),
                self.snapshot.frame(part),
                _batch_profiles(part),
            )


def _batch_profiles(part: pa.Table) -> dict[str, dict[str, str]]:
    """The non-blank profile fields of the users of ``part`` (a slice of a selection) that have a profile."""
    if _HAS_PROFILE not in part.column_names:
        return {}
    names = [n for n in part.column_names if n.startswith(_PROFILE)]
    columns = [(n.removeprefix(_PROFILE), part.column(n).to_pylist()) for n in names]
    users = part.column("user_id").to_pylist()
    profiles = {}
    for row, (user, has) in enumerate(zip(users, part.column(_HAS_PROFILE).to_pylist(), strict=True)):
        if has:
            profiles[user] = {name: value[row] for name, value in columns if value[row] and value[row].strip()}
    return profiles


def stored_table(user_ids: Sequence[str], fingerprints: Sequence[int | None]) -> pa.Table:
    """Stored fingerprints as the engine takes them (None: not recorded)."""
    known = [value is not None for value in fingerprints]
    values = [value if value is not None else 0 for value in fingerprints]
    return pa.table(
        [pa.array(list(user_ids), pa.string()), pa.array(values, pa.int64()), pa.array(known, pa.bool_())],
        schema=STORED_SCHEMA,
    )


def empty_stored() -> pa.Table:
    return STORED_SCHEMA.empty_table()
