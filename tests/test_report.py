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

from sync.report import ENTERED, EXITED, PALETTE, render_report
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
    assert not re.search(r"\b(src|href)\s*=", page)  # no script, style sheet or image to fetch
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
