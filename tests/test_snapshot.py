from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest

from sync.errors import SourceError
from sync.model import Computation
from sync.snapshot.normalise import build_snapshot

AUD = Computation("vip", "audience", "VIP")
TRAIT = Computation("revenue", "trait", "Revenue")


def frame(**columns: Sequence[object]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(list(values), dtype=object) for name, values in columns.items()})


def test_state_has_a_bool_column_per_audience_and_values_per_trait() -> None:
    snapshot = build_snapshot(
        [AUD, TRAIT],
        frame(user_id=["u1", "u2", "u3"], email=["a@x.io", None, "c@x.io"]),
        {"vip": frame(user_id=["u1", "u4"]), "revenue": frame(user_id=["u2", "u3"], value=[10.5, None])},
    )
    assert list(snapshot.state.index) == ["u1", "u2", "u3", "u4"]
    assert snapshot.state["vip"].tolist() == [True, False, False, True]
    assert snapshot.state["revenue"].tolist() == [None, 10.5, None, None]
    assert snapshot.profiles == {"u1": {"email": "a@x.io"}, "u2": {}, "u3": {"email": "c@x.io"}}


def test_unknown_profile_columns_are_an_error_listing_the_accepted_ones() -> None:
    with pytest.raises(SourceError) as caught:
        build_snapshot([AUD], frame(user_id=["u1"], shoe_size=[42]), {"vip": frame(user_id=[])})
    assert "shoe_size" in str(caught.value)
    assert "company_name" in str(caught.value) and "linked_in" in str(caught.value)


def test_null_and_empty_user_ids_are_skipped_and_counted() -> None:
    snapshot = build_snapshot([AUD], None, {"vip": frame(user_id=["u1", None, "", "  ", float("nan"), "u2"])})
    assert list(snapshot.state.index) == ["u1", "u2"]
    assert [(i.source, i.problem, i.count) for i in snapshot.issues] == [("audience vip", "null or empty user_id", 4)]


def test_duplicate_members_are_one_member_and_integer_ids_become_text() -> None:
    snapshot = build_snapshot([AUD], None, {"vip": frame(user_id=[7, 7, "u1", "u1", 12345678901234567])})
    assert list(snapshot.state.index) == ["7", "u1", "12345678901234567"]


def test_identical_duplicate_profiles_collapse_but_conflicting_ones_name_the_users() -> None:
    same = frame(user_id=["u1", "u1"], email=["a@x.io", "a@x.io"])
    assert build_snapshot([AUD], same, {"vip": frame(user_id=[])}).profiles == {"u1": {"email": "a@x.io"}}
    conflicting = frame(user_id=["u1", "u1", "u2", "u2"], email=["a@x.io", "b@x.io", "c", "d"])
    with pytest.raises(SourceError, match="conflicting duplicate rows for user_id 'u1', 'u2'"):
        build_snapshot([AUD], conflicting, {"vip": frame(user_id=[])})


def test_trait_values_become_json_values_or_reported_rows() -> None:
    moment = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    values = frame(
        user_id=["a", "b", "c", "d", "e", "f", "g"],
        value=[Decimal("12.50"), Decimal("3"), moment, date(2026, 5, 1), b"\x00", float("inf"), "x"],
    )
    snapshot = build_snapshot([TRAIT], None, {"revenue": values})
    assert snapshot.state["revenue"].to_dict() == {
        "a": 12.5,
        "b": 3,
        "c": "2026-05-01T12:30:00+00:00",
        "d": "2026-05-01",
        "g": "x",
    }
    problems = {(i.user_id, i.problem) for i in snapshot.issues}
    assert problems == {("e", "value of type bytes cannot be sent as JSON"), ("f", "value inf is not a finite number")}


def test_conflicting_trait_values_are_an_error_but_equal_duplicates_are_not() -> None:
    ok = build_snapshot([TRAIT], None, {"revenue": frame(user_id=["a", "a"], value=[1, 1])})
    assert ok.state["revenue"].to_dict() == {"a": 1}
    with pytest.raises(SourceError, match="trait revenue: conflicting values for user_id 'a'"):
        build_snapshot([TRAIT], None, {"revenue": frame(user_id=["a", "a"], value=[1, 2])})


def test_results_without_the_required_columns_are_named() -> None:
    with pytest.raises(SourceError, match="audience vip: the result must have a user_id column"):
        build_snapshot([AUD], None, {"vip": frame(id=["u1"])})
    with pytest.raises(SourceError, match="trait revenue: the result must have user_id and value columns"):
        build_snapshot([TRAIT], None, {"revenue": frame(user_id=["u1"])})


def test_unicode_whitespace_and_long_user_ids_are_kept_as_given() -> None:
    ids = ["ünïcødé", " padded ", "x" * 500]
    snapshot = build_snapshot([AUD], None, {"vip": frame(user_id=ids)})
    assert list(snapshot.state.index) == ids


def test_a_trait_whose_every_value_is_null_has_no_values() -> None:
    snapshot = build_snapshot(
        [AUD, TRAIT], None, {"vip": frame(user_id=["u1"]), "revenue": frame(user_id=["u1", "u2"], value=[None, None])}
    )
    assert snapshot.users == 1
    assert snapshot.state["revenue"].tolist() == [None]


def test_a_profile_of_ids_alone_is_an_empty_profile_not_a_missing_one() -> None:
    snapshot = build_snapshot([AUD], frame(user_id=["u1"]), {"vip": frame(user_id=["u1", "u2"])})
    assert snapshot.profiles == {"u1": {}}
    batch = next(snapshot.everyone().batches(10))
    assert batch.profiles == {"u1": {}}


def test_results_in_several_chunks_read_as_in_one() -> None:
    """A reader's chunks (Parquet row groups, fetched pages) are kept as they are, never joined first."""
    profiles = {"user_id": ["u1", None, "u2", "u3", " ", "u4"], "email": ["a@x.io", "b@x.io", None, "", "c", "d@x.io"]}
    members = {"user_id": ["u1", "", "u3", "u3", None, "u9"]}
    traits: dict[str, list[object]] = {
        "user_id": ["u1", "u2", None, "u3", "u4", "u9"],
        "value": [1.5, None, 2.0, float("nan"), 7, 3],
    }

    def table(columns: Mapping[str, Sequence[object]], chunks: int) -> pa.Table:
        whole = pa.table(columns)
        size = -(-whole.num_rows // chunks)
        return pa.Table.from_batches(whole.slice(start, size).to_batches()[0] for start in range(0, 6, size))

    def summary(chunks: int) -> tuple[object, ...]:
        snapshot = build_snapshot(
            [AUD, TRAIT], table(profiles, chunks), {"vip": table(members, chunks), "revenue": table(traits, chunks)}
        )
        return snapshot.state.to_dict(), snapshot.profiles, snapshot.issues

    assert table(members, 3).column("user_id").num_chunks == 3
    one, three = summary(1), summary(3)
    assert three == one
    assert one[0] == {
        "vip": {"u1": True, "u2": False, "u3": True, "u4": False, "u9": True},
        "revenue": {"u1": 1.5, "u2": None, "u3": None, "u4": 7.0, "u9": 3.0},
    }
