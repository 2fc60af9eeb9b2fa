"""Every value a warehouse driver can return either reaches the destination or skips its row with a report;
one odd value never fails the whole run (PostgreSQL as the warehouse, SQLite and PostgreSQL as the store)."""

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from sync.dev.receiver import Receiver
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import Warehouse, job_dict, make_config, make_job


@pytest.fixture
def pg_warehouse(postgres_url: str) -> Iterator[str]:
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE odd (user_id text, kind text, value_numeric numeric, value_array numeric[])")
        )
        connection.execute(
            text(
                "INSERT INTO odd VALUES "
                "('u1', 'plain', 12.5, NULL), ('u2', 'infinity', 'Infinity', NULL), "
                "('u3', 'huge', 123456789012345678901234567890, NULL), ('u4', 'array', NULL, ARRAY[1.5, 2]), "
                "('u5', 'precise', 0.12345678901234567890123, NULL), ('u6', 'nan', 'NaN', NULL)"
            )
        )
    engine.dispose()
    yield postgres_url


def test_odd_numeric_values_skip_their_row_or_are_sent_and_never_fail_the_run(
    pg_warehouse: str, store: Store, receiver: Receiver, warehouse: Warehouse
) -> None:
    raw = job_dict(
        warehouse,
        receiver.url,
        profiles=False,
        traits=[
            {"name": "Score", "query": "SELECT user_id, value_numeric AS value FROM odd WHERE kind <> 'array'"},
            {"name": "Scores", "query": "SELECT user_id, value_array AS value FROM odd WHERE kind = 'array'"},
        ],
    )
    raw["source"] = {"url": pg_warehouse}
    job = make_config("sqlite://", [raw]).jobs[0]
    report = Runner(store).run(job)
    assert report.status == "succeeded", report.error
    sent = {body["user_id"]: body["custom_attributes"] for body in receiver.accepted()}
    assert sent["u1"] == {"score": 12.5}
    assert sent["u3"] == {"score": 1.2345678901234568e29}  # a double, as JSON numbers are read
    assert sent["u4"] == {"scores": [1.5, 2]}
    assert sent["u5"] == {"score": 0.12345678901234568}
    assert "u2" not in sent and "u6" not in sent  # infinity skipped and reported; NaN is null
    reported = {issue["user_id"]: issue["problem"] for issue in report.issues if issue.get("user_id")}
    assert "u2" in reported and "finite" in reported["u2"]
    assert Runner(store).run(job).status == "succeeded"  # and the next run is as calm


def test_a_user_id_the_state_store_cannot_hold_is_skipped_and_reported(
    store: Store, receiver: Receiver, warehouse: Warehouse
) -> None:
    warehouse.set_members("vip", ["u1", "u\x00nul", "u2"])
    job = make_job(warehouse, receiver.url, profiles=False, audiences=[warehouse.audience("VIP", "vip")])
    report = Runner(store).run(job)
    assert report.status == "succeeded", report.error
    assert {body["user_id"] for body in receiver.accepted()} == {"u1", "u2"}
    assert report.skipped_rows == 1 and "NUL" in report.issues[0]["problem"]


def test_a_trait_query_with_an_extra_column_fails_the_run_naming_it(
    store: Store, receiver: Receiver, warehouse: Warehouse
) -> None:
    warehouse.set_trait("ltv", {"u1": 5})
    trait = {"name": "LTV", "query": "SELECT user_id, value, trait AS extra FROM trait_values"}
    job = make_job(warehouse, receiver.url, profiles=False, traits=[trait])
    report = Runner(store).run(job)
    assert report.status == "failed" and "unexpected column(s) extra" in (report.error or "")
    assert "user_id and value" in (report.error or "") and not receiver.records
