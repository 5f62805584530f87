"""The HTML report in a real browser: headless Chromium renders it offline, the screenshot is
not blank (and shows the plots' colours), the page logs no errors, and the DOM holds the plots.

Skipped where Chromium is not installed (``.ci/run`` installs the Debian package ``chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixed import NASTY, judged_report, with_gradients

from reludoctor.reporters import render

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium is not installed")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--window-size=1200,2000"]
# What the page itself could log: console messages, blocked or failed loads, script errors.
PAGE_PROBLEMS = re.compile(r"CONSOLE|Refused to|Failed to load|net::ERR|Uncaught|Content Security Policy",
                           re.IGNORECASE)


def page_report():  # noqa: ANN201
    """The judged fixed report with gradient statistics: every plot is drawn."""
    return with_gradients(judged_report())


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    path = folder / "report.html"
    path.write_text(render("html", page_report()), encoding="utf-8")
    return path


def chromium(page: Path, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    env = {**os.environ, "HOME": str(tmp)}  # no writes to the real home
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=90, env=env)


def page_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if PAGE_PROBLEMS.search(line)]


def test_screenshot_is_not_blank_and_the_page_logs_no_errors(page, tmp_path):
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = chromium(page, f"--screenshot={shot}", "--enable-logging=stderr", "--v=0", tmp=tmp_path)
    assert shot.exists(), proc.stderr[-3000:]
    assert not page_problems(proc.stderr), page_problems(proc.stderr)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    rgb = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    white = (rgb == (255, 255, 255)).all(axis=1)
    page_grey = (rgb == (246, 247, 249)).all(axis=1)  # the page's background
    ink = int((~white & ~page_grey).sum())
    assert ink / len(rgb) > 0.05, f"only {ink} non-background pixels: a blank page?"
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    dead_red = int(((r > 190) & (g < 80) & (b < 80)).sum())
    teal = int(((abs(r - 42) < 30) & (abs(g - 157) < 30) & (abs(b - 143) < 30)).sum())
    assert dead_red > 2000, "the dead-ratio bars are not visible"
    assert teal > 2000, "the histograms are not visible"


def test_dom_holds_the_plots_and_no_injected_markup(page, tmp_path):
    proc = chromium(page, "--dump-dom", "--enable-logging=stderr", "--v=0", tmp=tmp_path)
    dom = proc.stdout
    assert "<main>" in dom, proc.stderr[-3000:]
    assert not page_problems(proc.stderr), page_problems(proc.stderr)
    assert dom.count("<svg") == 4
    for figure in ("plot-dead", "plot-rates", "plot-histograms", "plot-gradient"):
        assert f'id="{figure}"' in dom
    assert "<script" not in dom.lower()  # the hostile site name stayed text
    assert "&lt;script&gt;alert" in dom and NASTY not in dom
