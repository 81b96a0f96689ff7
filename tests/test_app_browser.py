"""``lmxray serve`` in a real browser: Playwright driving Debian's headless chromium against the
app on 127.0.0.1 with the embedded model. Enter a prompt, run, click a target token and check the
heatmap's numbers against the API's JSON; cancel a long job; ``<script>`` stays text; a bad input
is shown as the server's message; the Judge tab's self-explanation tests and SAE feature view
(numbers equal the API's JSON, the URL reproduces them); a screenshot of each view (into
$LMXRAY_SCREENSHOTS when set, as for docs/img/app-*.png, else a temporary folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from app_server import Background
from lmxray.app import Limits, create_app

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run `apt-get install -y chromium` first")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with Background(create_app(["lmxray-tiny"], limits=Limits(prompt_chars=500), saes={"zoo-l2": quick_sae()})) as url:
        yield url


def quick_sae():
    """A small TopK SAE on lmxray-tiny's layers.2.resid_post, trained briefly (for the feature view)."""
    import lmxray
    from lmxray.concepts import TrainConfig, train_sae

    cfg = TrainConfig(d_sae=128, k=8, steps=30, batch_tokens=256, lr=3e-3)
    return train_sae(lmxray.load(), "layers.2.resid_post", cfg).sae


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    yield pg
    ctx.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("LMXRAY_SCREENSHOTS")
    return Path(out) if out else tmp_path_factory.mktemp("shots")


def shoot(page, shots: Path, name: str) -> None:
    path = shots / f"app-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_explain_click_a_target_token_and_numbers_equal_the_api(server, page, shots):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#explain-form textarea[name=prompt]", PROMPT + " the city of")
    page.fill("#explain-form input[name=max_new_tokens]", "3")
    page.select_option("#explain-form select[name=method_b]", "occlusion")
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector(".panel .heat .tok", timeout=60_000)
    job_id = page.get_attribute("#explain-job", "data-job")
    api = httpx.get(f"{server}/api/jobs/{job_id}/result").json()["attributions"]
    n_targets = len(api[0]["target_tokens"])
    assert n_targets >= 2  # a later row than the one shown first
    row = n_targets - 1
    page.click(f".panel[data-method=saliency] .target-token[data-index='{row}']")
    page.wait_for_selector(f".panel[data-method=saliency] .heat[data-row='{row}']")
    for a in api:
        panel = page.locator(f".panel[data-method={a['method']}]")
        cells = panel.locator(".heat .tok[data-index]")
        shown = cells.evaluate_all("els => els.map(e => [e.dataset.score, e.querySelector('.tok-score').textContent])")
        expected = a["scores"][row][: len(a["source_tokens"]) - n_targets + row]
        assert len(shown) == len(expected) > 3
        for (data, text), want in zip(shown, expected, strict=True):
            assert float(data) == want  # the exact number of the API's JSON
            assert text == f"{want:.3f}"
    assert "row=" in page.url and "prompt=" in page.url and not page.errors
    shoot(page, shots, "explain")


def test_url_reproduces_the_view(server, page):
    page.goto(f"{server}/?view=explain&prompt={quote(PROMPT)}&method_a=occlusion&target={quote(' Paris')}")
    page.wait_for_selector(".panel[data-method=occlusion] .heat .tok", timeout=60_000)
    assert page.input_value("#explain-form textarea[name=prompt]") == PROMPT
    assert page.locator(".target-token").first.text_content() == "\u2423Paris"


def test_script_in_prompt_and_tokens_stays_text(server, page):
    evil = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#explain-form textarea[name=prompt]", evil)
    page.fill("#explain-form input[name=target]", "<script>")
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector(".panel .heat .tok", timeout=60_000)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#explain-out script, #explain-out img").count() == 0
    text = "".join(page.locator(".panel .heat .tok-text").all_text_contents())
    assert "<script>" in text and "onerror" in text
    assert page.locator(".target-token").all_text_contents()  # target tokens drawn as text


def test_cancel_a_long_job(server, page):
    page.goto(f"{server}/?view=judge")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#judge-form input[name=n]", "60")
    page.check("#judge-form input[name=m_integrated_gradients]")
    page.click("#judge-form button[type=submit]")
    page.wait_for_selector("#judge-job[data-state=running]", timeout=30_000)
    page.click("#judge-job .cancel")
    page.wait_for_selector("#judge-job[data-state=cancelled]", timeout=30_000)
    assert page.text_content("#error") == "Cancelled."
    job_id = page.get_attribute("#judge-job", "data-job")
    assert httpx.get(f"{server}/api/jobs/{job_id}").json()["state"] == "cancelled"
    # the worker is free again: a next job runs
    assert httpx.get(f"{server}/api/info").json()["queued"] == 0


def test_bad_input_shows_the_servers_message(server, page):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("document.querySelector('#explain-form textarea[name=prompt]').removeAttribute('maxlength')")
    page.fill("#explain-form textarea[name=prompt]", "x" * 501)
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "prompt has 501 characters, over the limit of 500; shorten it"


def test_inside_views(server, page, shots):
    page.goto(f"{server}/?view=inside&sub=lens&prompt={quote(PROMPT)}&run=1")
    page.wait_for_selector("#inside-out table.lens td.cell", timeout=60_000)
    page.locator("#inside-out td.cell").last.click()
    assert "%" not in page.text_content(".detail") and page.locator(".detail .chip").count() == 5
    shoot(page, shots, "inside-lens")

    page.click(".subtab[data-sub=trace]")
    page.fill("#trace-form textarea[name=prompt]", PROMPT)
    start = PROMPT.index("France")
    page.evaluate(f"""() => {{ const t = document.querySelector('#trace-form textarea');
        t.focus(); t.setSelectionRange({start}, {start + 6}); t.dispatchEvent(new Event('select')); }}""")
    assert "France" in page.text_content("#subject-hint")
    page.click("#trace-form button[type=submit]")
    page.wait_for_selector("#inside-out table.trace td.marked", timeout=60_000)
    shoot(page, shots, "inside-trace")

    page.click(".subtab[data-sub=patch]")
    page.fill("#patch-form input[name=clean]", PROMPT)
    page.fill("#patch-form input[name=corrupt]", "The capital of Spain is")
    page.click("#patch-form button[type=submit]")
    page.wait_for_selector("#inside-out table.patch td.cell", timeout=60_000)
    shoot(page, shots, "inside-patch")

    page.click(".subtab[data-sub=heads]")
    page.click("#heads-form button[type=submit]")
    page.wait_for_selector("#inside-out table.headgrid td.cell", timeout=60_000)
    assert page.locator("#inside-out .heads h4").count() == 3
    shoot(page, shots, "inside-heads")
    assert not page.errors


def test_judge_leaderboard(server, page, shots):
    page.goto(f"{server}/?view=judge&task=facts&n=8&methods=saliency,occlusion,random&run=1")
    page.wait_for_selector("table.board", timeout=120_000)
    methods = page.locator("table.board tbody th").all_text_contents()
    assert sorted(methods) == ["occlusion", "random", "saliency"]
    assert page.locator("svg.plot polyline").count() == 3
    shoot(page, shots, "judge")


def test_judge_selfexplain_on_an_organism(server, page, shots):
    page.goto(f"{server}/?view=judge&sub=selfexplain")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_visible("#selfexplain-form") and not page.is_visible("#judge-form")
    page.select_option("#selfexplain-form select[name=task]", "rationale-unfaithful")
    page.fill("#selfexplain-form input[name=n]", "4")
    page.check("#selfexplain-form input[name=t_deletion]")
    page.click("#selfexplain-form button[type=submit]")
    page.wait_for_selector("table.selfexplain td.se-verdict", timeout=180_000)
    job_id = page.get_attribute("#judge-job", "data-job")
    api = httpx.get(f"{server}/api/jobs/{job_id}/result").json()
    assert [t["test"] for t in api["tests"]] == ["bias", "cot", "deletion"]
    for t in api["tests"]:
        rows = page.locator(f"table.selfexplain tr[data-test={t['test']}]")
        assert rows.locator("td.se-verdict").text_content() == t["verdict"]
        values = rows.locator("td.num[data-value]").evaluate_all("els => els.map(e => [e.dataset.value, e.textContent])")
        names = rows.locator("td.measure").all_text_contents()
        assert names == [m["name"] for m in t["measures"]]
        want = [m["value"] for m in t["measures"] if m["value"] is not None]
        assert [float(v) for v, _ in values] == want  # the API's numbers, drawn to 2 decimals
        assert all(abs(float(text) - w) <= 0.0051 for (_, text), w in zip(values, want, strict=True))
    assert page.locator("table.selfexplain td.se-unfaithful").count() >= 1  # the unfaithful organism
    assert page.locator("#judge-out .exports a").count() == 2
    assert "sub=selfexplain" in page.url and "task=rationale-unfaithful" in page.url and "tests=bias%2Ccot%2Cdeletion" in page.url
    assert not page.errors
    shoot(page, shots, "judge-selfexplain")


def test_judge_sae_feature_view_and_its_url(server, page, shots):
    page.goto(f"{server}/?view=judge&sub=feature&sae=zoo-l2&feature=3&n_texts=120&top=6&run=1")
    page.wait_for_selector("ol.contexts li, #judge-out p.muted", timeout=120_000)
    job_id = page.get_attribute("#judge-job", "data-job")
    api = httpx.get(f"{server}/api/jobs/{job_id}/result").json()
    assert api["feature"] == 3 and api["sae"] == "zoo-l2" and len(api["contexts"]) <= 6
    shown = page.locator("ol.contexts li").evaluate_all(
        "els => els.map(li => [...li.querySelectorAll('.ctx-tok')].map(t => Number(t.dataset.act)))")
    assert shown == [c["acts"] for c in api["contexts"]]
    assert page.locator("svg.histogram rect.bar").count() == len(api["hist_counts"])
    promoted = page.locator("table.promoted td.num").evaluate_all("els => els.map(e => Number(e.dataset.value))")
    assert promoted == [v for _, v in api["promoted"]]
    assert "zoo-l2" in page.text_content("#feature-hint") and not page.errors
    shoot(page, shots, "judge-feature")
    page.click("#feature-form button.step[data-step='1']")  # the next latent
    page.wait_for_selector("#judge-out h3:has-text('latent 4 ')", timeout=120_000)  # (the CSP forbids eval)
    assert "feature=4" in page.url
    export = httpx.get(f"{server}/api/jobs/{page.get_attribute('#judge-job', 'data-job')}/export?format=json").json()
    assert export["format"] == "lmxray.feature_view/1" and export["feature"] == 4


def test_judge_feature_bad_latent_shows_the_servers_message(server, page):
    page.goto(f"{server}/?view=judge&sub=feature&sae=zoo-l2&feature=128&run=1")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "feature must be between 0 and 127, got 128"


def test_explain_verdict_on_demand(server, page):
    page.goto(f"{server}/?view=explain&prompt={quote(PROMPT)}&target={quote(' Paris')}&method_a=saliency&verify=1")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_checked("#explain-form input[name=verify]")  # the URL keeps the choice
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector(".panel .verdict h4", timeout=180_000)
    job_id = page.get_attribute("#explain-job", "data-job")
    (verdict,) = httpx.get(f"{server}/api/jobs/{job_id}/result").json()["verdicts"]
    assert page.text_content(".panel .verdict h4") == f"Verdict: {verdict['verdict']}"
    shown = dict(zip(page.locator(".panel .verdict dt").all_text_contents(),
                     page.locator(".panel .verdict dd").all_text_contents(), strict=True))
    checks = {k: v for k, v in verdict["checks"].items() if v is not None}
    assert checks
    for check, value in checks.items():
        if isinstance(value, bool):
            assert shown[check] == str(value).lower()
        elif isinstance(value, int | float):
            assert float(shown[check]) == value
        else:
            assert shown[check] == str(value)
    assert page.locator(".panel .verdict li").all_text_contents() == [str(r) for r in verdict["reasons"]]
    assert not page.errors


def test_inside_tuned_lens_grid(server, page):
    page.goto(f"{server}/?view=inside&sub=lens&prompt={quote(PROMPT)}&tuned=1&top_k=3&run=1")
    page.wait_for_selector("#inside-out table.lens td.cell", timeout=300_000)
    assert page.text_content("#inside-out h3").startswith("Tuned lens")
    job_id = page.get_attribute("#inside-job", "data-job")
    api = httpx.get(f"{server}/api/jobs/{job_id}/result").json()
    assert api["method"] == "tuned_lens"
    cells = page.locator("#inside-out table.lens td.cell").evaluate_all(
        "els => els.map(e => [Number(e.dataset.row), Number(e.dataset.col), e.dataset.value, e.textContent])")
    n_layers = len(api["layers"])
    assert len(cells) == n_layers * len(api["tokens"])
    for r, c, value, label in cells:  # the grid's rows are the layers, output layer on top
        layer = n_layers - 1 - r
        assert float(value) == api["target_prob"][layer][c]
        assert label == shown_token(api["top_tokens"][layer][c][0])
    assert not page.errors


def shown_token(t: str) -> str:
    """A token as the page shows it (dom.js showToken): newlines as \u21b5, an edge space as \u2423."""
    t = t.replace("\n", "\u21b5")
    t = "\u2423" + t[1:] if t.startswith(" ") else t
    t = t[:-1] + "\u2423" if t.endswith(" ") else t
    return t or "\u2205"
