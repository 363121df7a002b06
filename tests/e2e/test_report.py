"""The report after a demo run, opened in a real headless Chromium: every chart drawn.

The demo (a small org, the shipped sample week) writes `var/demo/report.html`; Debian's Chromium,
started here with a fresh profile and no network, loads it from the file, runs plotly and dumps
the DOM; each chart's section must hold drawn marks (bars of some height, lines, Sankey links).
A screenshot is kept in `tests/artifacts/report.png` (ignored by git) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import chromium
from tests.e2e.conftest import DVCONNECT
from tests.paths import MAPPINGS, ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"
SCREEN = (1400, 3000)
CHARTS = [
    "Sync volume per day", "Sync lag", "Segment contoso-decision-makers",
    "Journey conference-follow-up: funnel",
    "Journey conference-follow-up: branches", "Journey product-launch: funnel",
    "Journey product-launch: branches", "Activities created by journeys, per owner and day",
    "API requests per job and day, and 429s", "Lead scores, contoso-interest",
    "Hand-offs to owners per day",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> str:
    found, why = chromium.ensure()
    if found is None:
        pytest.skip(f"no headless Chromium to open the report in: {why}")
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo run in a folder of its own; returns that folder."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(MAPPINGS, workdir / "mappings")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
    result = subprocess.run(
        [DVCONNECT, "demo", "--leads", "400", "--contacts", "200"],
        cwd=workdir, env={**environment, "DVCONNECT_LOG_LEVEL": "WARNING"},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\nreport:   var/demo/report.html (" in result.stdout
    return workdir


def drawn_marks(section: str) -> int:
    """Marks plotly drew in one chart's section: bars (and funnel stages) of some height,
    lines through two points or more, Sankey links."""
    bars = sum(
        1
        for start, end in re.findall(r'<path d="M[\d.]+,([\d.]+)V([\d.]+)H', section)
        if start != end
    )
    lines = len(re.findall(r'<path class="js-line" d="M[^"]*L', section))
    links = len(re.findall(r'<path class="sankey-link" d="M[^"]+"', section))
    return bars + lines + links


def test_the_demo_s_report_draws_every_chart_in_a_real_chromium(demo: Path, browser: str) -> None:
    page = demo / "var" / "demo" / "report.html"
    html = page.read_text(encoding="utf-8")
    assert re.findall(r"<(?:script|link|img)[^>]*\b(?:src|href)=", html) == []  # no network

    dom = chromium.dump_dom(browser, page)

    # The one part with nothing to draw says so instead: no recent web lead in the sample org.
    assert re.findall(r'data-empty="([^"]+)"', dom) == ["Segment recent-web-leads"]
    sections = re.split(r'<section class="chart" data-chart="', dom)[1:]
    titles = [section.split('"', 1)[0] for section in sections]
    assert titles == CHARTS
    for title, section in zip(titles, sections, strict=True):
        assert 'class="main-svg"' in section, f"{title}: plotly drew nothing"
        assert drawn_marks(section) > 0, f"{title}: drawn, but empty"
    shot = ARTIFACTS / "report.png"
    chromium.screenshot(browser, page, shot, SCREEN)
    shutil.copy(page, ARTIFACTS / "report.html")
    print(f"\nreport screenshot: {shot}")
    assert shot.stat().st_size > 50_000  # a blank page of this size compresses to a few KB


def test_the_terminal_report_shows_the_numbers_the_charts_draw(demo: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
    environment["DVCONNECT_DATABASE_URL"] = "sqlite:///var/demo/dvconnect.sqlite3"

    def report(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DVCONNECT, "report", *arguments], cwd=demo, env=environment,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    as_json, as_text = report("--json"), report()

    assert as_json.returncode == 0, as_json.stderr
    assert as_text.returncode == 0, as_text.stderr
    document = json.loads(as_json.stdout)
    launch = {s["stage"]: s["members"] for s in document["journeys"]["product-launch"]["funnel"]}
    lines = as_text.stdout.splitlines()
    start = lines.index("journey product-launch: funnel (members):")
    shown = dict(line.split() for line in lines[start + 2 : start + 2 + len(launch)]
                 if not line.startswith("  goal"))  # fmt: skip
    assert {k: int(v) for k, v in shown.items()} == {
        k: v for k, v in launch.items() if k != "goal reached"
    }
    assert launch["entered"] > 0
    assert launch["goal reached"] > 0
    handed = sum(h["handoffs"] for h in document["handoffs"])
    assert handed > 0
    assert any(line.startswith("  2027-01-05  contoso-interest  task") for line in lines)
    bad = report("--since", "yesterday")
    assert bad.returncode == 2
    assert "--since 'yesterday': expected an ISO-8601 date" in bad.stderr
