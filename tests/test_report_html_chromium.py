"""report.html rendered by headless Chromium: the plots load as PNG data URIs, the tables and headline are there."""
from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report_synthetic_run import write_run

from edgekd.report import build_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("chromium is not installed: install the Debian package `chromium` "
                    "(apt-get install -y chromium; tools/setup_env.sh does it)")
    return exe


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=120, check=True)


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.tables = 0
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table":
            self.tables += 1
        if "id" in a:
            self.ids.add(a["id"])


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    return build_report(write_run(tmp_path_factory.mktemp("chromium") / "runs" / "tiny", None)).html


def test_chromium_dom_has_png_plots_tables_and_headline(report_html, tmp_path):
    dom = _run(["--dump-dom", report_html.as_uri()], tmp_path).stdout.decode()
    parsed = _Dom()
    parsed.feed(dom)
    assert len(parsed.imgs) == 3
    for src in parsed.imgs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert parsed.tables == 3  # accuracy + latency on two targets
    assert {"headline", "plot-accuracy_vs_latency", "plot-training_curves", "plot-int8_vs_fp32"} <= parsed.ids
    assert "Ship student_int8.tflite" in dom


def test_chromium_screenshot_is_not_blank(report_html, tmp_path):
    shot = tmp_path / "report.png"
    _run([f"--screenshot={shot}", "--window-size=1200,3400", report_html.as_uri()], tmp_path)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 3000 and pixels.shape[1] == 1200
    # Plots put many distinct colours on the page; a page whose images failed to load is mostly flat.
    bottom = pixels[1400:3000, :, :3].reshape(-1, 3)
    assert len({tuple(p) for p in (bottom[::97] * 255).astype(int)}) > 100
