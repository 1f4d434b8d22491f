"""Acceptance: after a run the Data Docs site exists and opens in a browser (headless Chromium
screenshot), with the day's results listed even without internet access."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from tests.validation.frames import DAY, EVENT_COLUMNS, ITEMS, MEMBERS, good_events
from validation import build_data_docs, check_raw_events, refresh_data_docs_index

CHROMIUM = Path("/usr/bin/chromium")


def screenshot(page: Path, png: Path, profile: Path) -> None:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,900", page.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)


def run_two_days(reports_dir: Path) -> None:
    broken = good_events()
    broken.loc[0, "label"] = 2
    for day, events in ((DAY, good_events()), (DAY + timedelta(days=1), broken)):
        events = events.assign(ts=events["ts"] + (day - DAY))
        check_raw_events(events, day, expected_columns=EVENT_COLUMNS, known_member_ids=MEMBERS,
                         known_item_ids=ITEMS, reports_dir=reports_dir, raise_on_failure=False)


def test_index_lists_every_result_offline(reports_dir):
    run_two_days(reports_dir)
    index = build_data_docs(reports_dir)
    rows = re.findall(r"<tr><td>raw_events</td><td>([-0-9]+)</td><td>(\w+)</td>", index.read_text())
    assert rows == [(DAY.isoformat(), "passed"), ((DAY + timedelta(days=1)).isoformat(), "FAILED")]
    for link in re.findall(r'<a href="(validations/[^"]+)">page</a>', index.read_text()):
        assert (index.parent / link).is_file()


def test_each_validation_renders_its_page_and_the_index_is_rebuilt_once(reports_dir):
    """A validation renders its own page and refreshes the static list; GX's index, which reads back every
    stored result, is built with the first result and then by refresh_data_docs_index (once a day)."""
    run_two_days(reports_dir)
    index = reports_dir / "data_docs" / "index.html"
    text = index.read_text()
    pages = re.findall(r'<a href="(validations/[^"]+)">page</a>', text)
    assert len(pages) == 2 and all((index.parent / page).is_file() for page in pages)  # both days' pages
    second_day = (DAY + timedelta(days=1)).isoformat()
    gx_part = text[text.index("<!-- /rankflow:offline-index -->"):]
    assert DAY.isoformat() in gx_part and second_day not in gx_part  # the first build only
    refresh_data_docs_index(reports_dir)
    refreshed = index.read_text()
    assert second_day in refreshed[refreshed.index("<!-- /rankflow:offline-index -->"):]
    assert refreshed.count('">page</a>') == 2  # the static list survives the refresh


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: run scripts/ensure_chromium.sh")
def test_data_docs_render_in_headless_chromium(reports_dir, tmp_path):
    try:
        from PIL import Image  # installed with the stack today, but not a declared dependency
    except ImportError:
        Image = None

    run_two_days(reports_dir)
    index = build_data_docs(reports_dir)
    failed_page = next(p for p in (reports_dir / "data_docs" / "validations").rglob("*.html") if "2026-01-06" in str(p))
    for name, page in (("index", index), ("failed", failed_page)):
        png = tmp_path / f"{name}.png"
        screenshot(page, png, tmp_path / "chromium-profile")
        assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot of {page}"  # a blank page measured 5.3 KB
        if Image is None:
            continue
        with Image.open(png) as image:
            assert image.size == (1280, 900)
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        # Text and table lines on a white page: many colours, and the background is not everything
        # (a blank page is 100 % one colour; these pages measured ~97.5 %).
        assert len(colours) > 20
        assert max(count for count, _ in colours) < 0.995 * 1280 * 900
