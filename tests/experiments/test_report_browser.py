"""The report in a real browser: headless Chromium (Debian package ``chromium``) loads the page
of a toy run, and every section, chart and search tree has a size on screen.

Skips with a message where /usr/bin/chromium is absent (``apt-get install -y chromium``)."""

import os

import pytest

from vstar.experiments.cli import main
from vstar.testing import CHROMIUM, browser_check, browser_screenshot

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"headless-browser test of the report skipped: {CHROMIUM} not found "
           "(install it with `apt-get install -y chromium`)")


def test_the_report_renders_every_section_chart_and_tree_in_chromium(trained_toy, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(trained_toy / "runs" / "toy"), "-o", str(page),
                 "--users", "2"]) == 0
    seen = browser_check(page, tmp_path)
    assert [s["id"] for s in seen["sections"]] == ["comparison", "curves", "budget", "sids",
                                                   "trees", "runs"]
    assert all(s["h"] > 20 for s in seen["sections"]), seen["sections"]
    # SFT curves, RL curves, SID chart (no budget curve in this run): decoded, not broken
    assert len(seen["imgs"]) == 3
    assert all(i["w"] > 100 and i["h"] > 100 for i in seen["imgs"]), seen["imgs"]
    assert len(seen["svgs"]) == 4 and all(s["w"] > 100 and s["h"] > 40 for s in seen["svgs"])
    shot = tmp_path / "report.png"
    browser_screenshot(page, shot, height=min(4000, seen["height"]))
    assert shot.stat().st_size > 10_000
