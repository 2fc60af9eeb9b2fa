"""The HTML report: self-contained, escaped, and drawn by a real browser (headless Chromium)."""

import os
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from sync.audit.report import ENTERED, EXITED, PALETTE, render_report
from sync.store import Store
from tests.test_audit import Story, story  # noqa: F401 - the fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            raise RuntimeError("Chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def report_file(story: Story, tmp_path: Path) -> Path:  # noqa: F811 - the fixture
    path = tmp_path / "report.html"
    path.write_text(render_report(story.store, "contacts", datetime.now(UTC)), encoding="utf-8")
    return path


def test_the_report_is_self_contained(report_file: Path) -> None:
    page = report_file.read_text()
    assert not re.search(r"\b(src|href)\s*=\s*(?!\"?#)", page)  # nothing to fetch; in-page anchors only
    assert "url(" not in page and "@import" not in page
    assert page.count("class=mark") >= 8 and page.count("<svg class=chart") == 2
    assert "HTTP 422" in page and "Top failure reasons" in page  # u1's and u6's rejections
    assert "vip" in page and "beta" in page


def test_everything_from_the_store_is_escaped(store: Store, tmp_path: Path) -> None:
    run_id = store.start_run("<script>alert(1)</script>", "initial", False, datetime.now(UTC))
    store.finish_run(run_id, "failed", {}, datetime.now(UTC), error="<img onerror=x>")
    page = render_report(store, "<script>alert(1)</script>", datetime.now(UTC))
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><body><script>undefinedFunction();</script></body>")
    assert console_errors(chromium("--dump-dom", broken.as_uri()).stderr)


def test_a_browser_draws_the_charts_without_console_errors(report_file: Path) -> None:
    result = chromium("--dump-dom", report_file.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-charts-drawn="2"' in result.stdout
    assert console_errors(result.stderr) == []


def test_a_screenshot_shows_both_charts(report_file: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = chromium("--window-size=1100,1000", f"--screenshot={shot}", report_file.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = {colour for _count, colour in image.getcolors(maxcolors=1_000_000) or []}

    def seen(hex_colour: str) -> bool:
        rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return rgb in colours

    assert seen(ENTERED) and seen(EXITED)  # the bars
    assert seen(PALETTE[0]) and seen(PALETTE[1])  # the lines of two audiences
    assert len(colours) > 50  # text, lines, anti-aliasing: a page, not a blank


def test_a_browser_opens_a_runs_page_from_its_link_with_its_changes_and_calls(report_file: Path) -> None:
    page = report_file.read_text()
    assert '<a href="#run-3">3</a>' in page  # the runs table links each run to its page
    result = chromium("--dump-dom", report_file.as_uri() + "#run-3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_errors(result.stderr) == []
    opened = re.search(r'<details class="run" id="run-3" open="">(.*?)</details>', result.stdout, re.S)
    assert opened, "the run's page did not open from its link"
    assert "u6" in opened.group(1) and "HTTP 422" in opened.group(1)  # u6 was rejected in run 3
    assert '"type": "identify"' in opened.group(1)  # the calls sent
    assert '<details class="run" id="run-2" open' not in result.stdout  # the others stay closed


def test_failure_reasons_that_differ_only_in_numbers_are_one_reason() -> None:
    from sync.audit.report import grouped_reasons

    now = datetime.now(UTC)
    reasons = [
        ("rejected before sending: body is 33012 bytes, over the 32768-byte limit", None, 1, now),
        ("rejected before sending: body is 40100 bytes, over the 32768-byte limit", None, 2, now),
        ("HTTP 422: invalid email", 422, 1, now),
    ]
    grouped = grouped_reasons(reasons)
    assert [(count, status) for _, status, count, _ in grouped] == [(3, None), (1, 422)]
    assert grouped[0][0] == "rejected before sending: body is N bytes, over the N-byte limit"
    hosts = grouped_reasons(
        [("connection to 10.0.0.12:443 refused", None, 1, now), ("HTTP 500 from 10.0.0.13", 500, 1, now)]
    )
    assert [reason for reason, *_ in hosts] == ["connection to 10.0.0.12:443 refused", "HTTP N from 10.0.0.13"]


def test_the_entries_and_exits_chart_labels_its_lower_end_with_a_minus_sign(report_file: Path) -> None:
    page = report_file.read_text(encoding="utf-8")
    chart = re.search(r'<svg class=chart data-chart="flows".*?</svg>', page, re.S)
    assert chart is not None
    labels = re.findall(r"text-anchor=end>([^<]+)</text>", chart.group(0))
    assert labels[1] == "−" + labels[0] and labels[0] != "0"


def test_a_run_stopped_by_the_guard_says_why_in_the_report(store: Store) -> None:
    now = datetime.now(UTC)
    run_id = store.start_run("contacts", "incremental", False, now, trigger="scheduled")
    store.finish_run(run_id, "blocked", {}, now, error="mass-change guard: audience 'vip' would lose 90 %")
    page = render_report(store, "contacts", now)
    assert "mass-change guard: audience &#x27;vip&#x27; would lose 90 %" in page
    assert "<td class=trigger>scheduled</td>" in page and "<td class=status>blocked</td>" in page


def test_the_sizes_chart_has_a_time_axis(report_file: Path) -> None:
    chart = re.search(r'<svg class=chart data-chart="sizes".*?</svg>', report_file.read_text(), re.S)
    assert chart is not None
    labels = re.findall(r">(\d{4}-\d{2}-\d{2} \d{2}:\d{2})</text>", chart.group(0))
    assert len(labels) == 2  # the first and the last run's start, not run numbers
    assert "<figure class=small>" in report_file.read_text()  # and each audience on its own scale
