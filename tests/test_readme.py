"""What the README states as a figure or a format is what the product does."""

import re
from datetime import UTC, datetime
from pathlib import Path

from sync.calls import CallSpec, render
from sync.destinations.http import MIN_REQUESTS_PER_SECOND, RECOVER_SHARE, SLOW_DOWN_FACTOR
from sync.model import KeyChange, Update
from sync.plan.updates import message_id

NOW = datetime(2026, 12, 7, tzinfo=UTC)
ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DESTINATIONS = (ROOT / "docs" / "DESTINATIONS.md").read_text(encoding="utf-8")


def test_the_update_message_id_is_as_the_readme_says() -> None:
    assert "`as-` and the first 40 hex digits of a SHA-256 of the job, the user, the" in README
    changes = (KeyChange("vip", "audience", None, True),)
    made = message_id("contacts", "u1", 0, changes)
    assert re.fullmatch(r"as-[0-9a-f]{40}", made)
    assert made != message_id("contacts", "u1", 1, changes)  # the version is in it


def test_segment_message_ids_are_as_the_destinations_page_says() -> None:
    assert "with `calls: per_user`, one call per update,\n`as-` and 40 hex digits" in DESTINATIONS
    assert (
        "`as-`, 36 hex digits,\n`-` and the computation's place among the update's keys in sorted order, in hex"
        in DESTINATIONS
    )
    update = Update(
        "u1",
        "as-" + "0" * 40,
        (KeyChange("vip", "audience", None, True), KeyChange("beta", "audience", None, True)),
        {},
        {},
    )
    per_computation = render(update, CallSpec("per_computation", "spa", {}, {}, "installation"), timestamp=NOW)
    ids = [call["messageId"] for call in per_computation]
    assert all(re.fullmatch(r"as-[0-9a-f]{36}-[0-9a-f]+", i) for i in ids)
    assert sorted(i.rsplit("-", 1)[1] for i in ids) == ["0", "1"]  # beta is 0, vip is 1: sorted keys
    per_user = render(update, CallSpec("per_user", "spa", {}, {}, "installation"), timestamp=NOW)
    assert [re.fullmatch(r"as-[0-9a-f]{40}", c["messageId"]) is not None for c in per_user] == [True]


def test_the_429_slowdown_is_as_the_readme_says() -> None:
    assert (SLOW_DOWN_FACTOR, RECOVER_SHARE, MIN_REQUESTS_PER_SECOND) == (0.5, 0.1, 0.5)
    assert "the pace is halved — once per burst, never\n  below 0.5 requests/s — then raised again by a tenth" in README
    assert "`the destination is rate limiting (HTTP 429): slowing to 20 requests/s`" in README


def test_the_readme_is_no_longer_than_it_needs_to_be_and_has_contents() -> None:
    assert len(README.splitlines()) < 650
    assert README.index("## Contents") < README.index("## Two commands") < README.index("## Your own job in five")
    for target in re.findall(r"\]\((docs/[A-Z_]+\.md|bench/README\.md)\)", README):
        assert (ROOT / target).is_file(), target
