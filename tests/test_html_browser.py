"""The HTML report in a real browser (headless Chromium): the script runs without errors, its
colours match the Python renderer's, clicking works, and a screenshot is produced.

Needs Debian's ``chromium`` (``apt-get install -y chromium``). Skipped when it is absent, except
under CI (environment variable ``CI`` set), where its absence is a failure.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lmxray.render import _view
from lmxray.render.html import attribution_html
from test_render import make_attribution

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI must run `apt-get install -y chromium` first")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def run_browser(chromium: str, page: Path, tmp: Path, *mode: str) -> tuple[str, list[str]]:
    """Open ``page``; return (stdout, console lines: console.* calls and uncaught errors)."""
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *mode, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [
        line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    return proc.stdout, console


def rgb_css(norm: float) -> str:
    rgb = _view.score_rgb(norm)
    return "" if rgb is None else "rgb({}, {}, {})".format(*rgb)


# A test-only script appended after the report: it clicks through the page and writes what it
# saw into <pre id="lmx-test-out"> for --dump-dom to return.
PROBE = """
<script>
(function () {
  var out = {};
  try {
    var root = document.querySelector(".lmx-report");
    var sel = root.querySelector("select.lmx-step");
    function snap() {
      return Array.prototype.map.call(root.querySelectorAll(".lmx-text .lmx-tok"), function (e) {
        return [e.className, e.style.backgroundColor];
      });
    }
    function heat() {
      return Array.prototype.map.call(root.querySelectorAll(".lmx-heat tbody tr"), function (tr) {
        return Array.prototype.map.call(tr.querySelectorAll("td"), function (td) { return td.style.backgroundColor; });
      });
    }
    out.ready = root.getAttribute("data-lmx-ready");
    out.initial = snap(); out.initialHeat = heat(); out.initialSelect = sel.value;
    root.querySelector('.lmx-text .lmx-tok[data-t="1"]').click();
    out.step1 = snap(); out.select1 = sel.value;
    out.caption1 = root.querySelector(".lmx-cap-what").textContent;
    root.querySelector(".lmx-next").click(); out.afterNext = sel.value;
    root.querySelector(".lmx-prev").click(); root.querySelector(".lmx-prev").click();
    root.querySelector(".lmx-prev").click(); out.afterPrev = sel.value;
    root.querySelector('.lmx-heat thead th[data-t="0"]').click(); out.headClick = sel.value;
    root.querySelector('input[value="global"]').click();
    out.global0 = snap(); out.globalHeat = heat();
    sel.value = "sum"; sel.dispatchEvent(new Event("change")); out.sum = snap();
    out.ok = true;
  } catch (e) { out.error = String(e && e.stack || e); }
  var pre = document.createElement("pre"); pre.id = "lmx-test-out";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>
"""


def probe(chromium: str, a, tmp_path: Path, **kw) -> dict:
    page = tmp_path / "probe.html"
    page.write_text(
        attribution_html(a, **kw).replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    dom, console = run_browser(chromium, page, tmp_path, "--dump-dom")
    assert console == [], console
    m = re.search(r'<pre id="lmx-test-out">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    return json.loads(html_lib.unescape(m.group(1)))


@pytest.mark.slow
def test_report_script_runs_without_errors_and_screenshot(chromium, tmp_path):
    a = make_attribution()
    page = tmp_path / "report.html"
    page.write_text(attribution_html(a), encoding="utf-8")
    dom, console = run_browser(chromium, page, tmp_path, "--dump-dom")
    assert console == [], console  # no console output, no uncaught errors
    assert 'data-lmx-ready="1"' in dom  # the script ran to its end
    assert 'data-lmx-error="' not in dom
    shot = tmp_path / "report.png"
    _, console = run_browser(
        chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1280,900"
    )
    assert console == [], console
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


@pytest.mark.slow
def test_script_colours_match_python_and_clicks_work(chromium, tmp_path):
    a = make_attribution()
    p, n_t, n_s = a.prompt_length, len(a.target_tokens), len(a.source_tokens)
    out = probe(chromium, a, tmp_path)
    assert out.get("ok"), out.get("error")
    assert out["ready"] == "1"

    # initial view = sum over steps: JS colours equal the Python renderer's
    _, agg, _ = _view.aggregate_row(a)
    assert out["initialSelect"] == "sum"
    assert [bg for _, bg in out["initial"]][: n_s - 1] == [rgb_css(v) for v in agg[: n_s - 1]]
    assert "lmx-future" in out["initial"][-1][0]

    # clicking the second target token shows step 2
    norm, _ = _view.normalised_rows(a, "step")
    assert out["select1"] == "1" and out["caption1"].startswith("Step 2 of 3")
    row = out["step1"]
    assert [bg for _, bg in row[: p + 1]] == [rgb_css(v) for v in norm[1, : p + 1]]
    assert "lmx-current" in row[p + 1][0]
    assert all("lmx-future" in cls for cls, _ in row[p + 2 :])
    assert out["afterNext"] == "2" and out["afterPrev"] == "sum" and out["headClick"] == "0"

    # heatmap: per-step colours initially, global after the switch
    expected_heat = [[rgb_css(norm[t, s]) for t in range(n_t)] for s in range(n_s)]
    assert out["initialHeat"] == expected_heat
    g_norm, _ = _view.normalised_rows(a, "global")
    assert out["globalHeat"] == [[rgb_css(g_norm[t, s]) for t in range(n_t)] for s in range(n_s)]
    assert [bg for _, bg in out["global0"][:p]] == [rgb_css(v) for v in g_norm[0, :p]]
    assert [bg for _, bg in out["sum"][: n_s - 1]] == [rgb_css(v) for v in agg[: n_s - 1]]


@pytest.mark.slow
def test_single_step_report(chromium, tmp_path):
    a = make_attribution(prompt=["<bos>", "Hi", " there"], targets=[" you", "!"], info={})
    a.scores[1, :] = np.nan  # a step with nothing attributable
    out = probe(chromium, a, tmp_path, step=0, normalize="global")
    assert out.get("ok"), out.get("error")
    assert out["initialSelect"] == "0"
