from datetime import UTC, datetime

import pytest

from sync.destinations.outcomes import Outcome, classify, retry_after_seconds

TABLE = [
    (200, Outcome.OK),
    (201, Outcome.OK),
    (202, Outcome.OK),
    (204, Outcome.OK),
    (301, Outcome.FAIL),
    (400, Outcome.FAIL),
    (401, Outcome.FAIL),
    (403, Outcome.FAIL),
    (404, Outcome.FAIL),
    (408, Outcome.RETRY),
    (409, Outcome.FAIL),
    (413, Outcome.FAIL),
    (422, Outcome.FAIL),
    (423, Outcome.RETRY),
    (429, Outcome.RETRY),
    (500, Outcome.RETRY),
    (501, Outcome.FAIL),
    (502, Outcome.RETRY),
    (503, Outcome.RETRY),
    (504, Outcome.RETRY),
    (599, Outcome.RETRY),
]


@pytest.mark.parametrize(("status", "outcome"), TABLE)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


NOW = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("Sun, 22 Nov 2026 06:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 05:00:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds
