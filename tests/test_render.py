"""Renderers on hand-made results: hostile tokens stay literal, NaN stays visible, no network."""

from __future__ import annotations

import html as html_lib
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from rich.console import Console

from lmxray.errors import InputError
from lmxray.render import _view
from lmxray.render.console import attribution_renderables, show_attribution
from lmxray.render.html import attribution_html
from lmxray.render.plots import heatmap_png, plot_attribution
from lmxray.result import Attribution

HOSTILE_PROMPT = [
    "<bos>",
    "The",
    " <script>alert(1)</script>",
    " &amp;",
    ' "quoted"',
    " 'single'",
    "\n",
    " 🙂",
    "\t",
    " [bold red]markup[/]",
    "\x1b[31m",
    "",
    " \u200b",
    " $x^2$",
]
TARGETS = [" Paris", ",", " 城市"]


def make_attribution(prompt=HOSTILE_PROMPT, targets=TARGETS, seed=0, info=None) -> Attribution:
    src = list(prompt) + list(targets)
    n_t, n_s, p = len(targets), len(src), len(prompt)
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_t, n_s)).astype(np.float32)
    for t in range(n_t):
        scores[t, p + t :] = np.nan
    if p > 2:
        scores[0, 0] = np.nan  # a method that cannot attribute BOS
    return Attribution(
        source_tokens=src,
        target_tokens=list(targets),
        scores=scores,
        target_scores=rng.normal(size=n_t) - 2,
        method="integrated_gradients",
        model_name="tiny <model> & co",
        info=info
        if info is not None
        else {
            "target_fn": "logprob",
            "generated": False,
            "method_params": {"n_steps": 16, "baseline": "zero"},
            "n_steps": 16,
            "convergence_delta": [1e-4, -2e-3, 5e-4],
            "convergence_delta_relative": [1e-4, 2e-3, 5e-4],
            "note": "</script><script>alert('info')</script>",
        },
    )


@pytest.fixture
def hostile() -> Attribution:
    return make_attribution()


def record(a: Attribution, **kw) -> tuple[str, str]:
    """(plain text, ANSI) of the terminal view."""
    console = Console(
        record=True, width=140, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    show_attribution(a, console=console, **kw)
    ansi = console.file.getvalue()  # type: ignore[attr-defined]
    return console.export_text(), ansi


# --------------------------------------------------------------------------- view model
def test_display_token_makes_everything_visible():
    assert _view.display_token(" Paris") == "·Paris"
    assert _view.display_token("\n") == "↵"
    assert _view.display_token("\t") == "→"
    assert _view.display_token("") == "∅"
    assert _view.display_token("\x1b[31m") == "\\x1b[31m"
    assert _view.display_token("a\u200bb") == "a\\u200bb"
    assert _view.display_token(" a\nb", whitespace=False) == " a↵b"
    assert _view.display_token("🙂") == "🙂"


def test_palette_and_contrast():
    assert _view.score_rgb(float("nan")) is None
    assert _view.rgb_hex(_view.score_rgb(-1.0)) == _view.PALETTE[0]
    assert _view.rgb_hex(_view.score_rgb(1.0)) == _view.PALETTE[-1]
    assert _view.rgb_hex(_view.score_rgb(0.0)) == _view.PALETTE[len(_view.PALETTE) // 2]
    assert _view.score_rgb(5.0) == _view.score_rgb(1.0)  # clipped
    # dark ends get white text, the light middle gets near-black text
    assert _view.text_rgb(_view.score_rgb(-1.0)) == (255, 255, 255)
    assert _view.text_rgb(_view.score_rgb(1.0)) == (255, 255, 255)
    assert _view.text_rgb(_view.score_rgb(0.0)) == (17, 17, 17)


def test_normalisation_modes(hostile):
    norm, scale = _view.normalised_rows(hostile, "step")
    for t in range(len(hostile.target_tokens)):
        row = norm[t][np.isfinite(norm[t])]
        assert math.isclose(np.abs(row).max(), 1.0, rel_tol=1e-6)
    assert np.isnan(norm[0, 0])  # NaN stays NaN
    g_norm, g_scale = _view.normalised_rows(hostile, "global")
    assert np.all(g_scale == g_scale[0]) and math.isclose(
        np.nanmax(np.abs(g_norm)), 1.0, rel_tol=1e-6
    )
    f_norm, _ = _view.normalised_rows(hostile, 0.5)
    assert np.nanmax(np.abs(f_norm)) <= 1.0
    with pytest.raises(ValueError):
        _view.normalised_rows(hostile, "bogus")


def test_aggregate_marks_never_attributable_sources(hostile):
    raw, norm, scale = _view.aggregate_row(hostile)
    assert np.isnan(raw[-1])  # the last target is nobody's source
    expected = np.nansum(hostile.scores.astype(np.float64), axis=0)[1:-1]
    np.testing.assert_allclose(raw[1:-1], expected, rtol=1e-9)
    assert scale > 0


def test_header_facts_pick_up_params_and_convergence(hostile):
    facts = dict(_view.header_facts(hostile))
    assert facts["method"] == "integrated_gradients"
    assert facts["target function"] == "logprob"
    assert facts["n steps"] == "16"
    assert "max |δ|" in facts["convergence"] and "%" in facts["convergence"]


# --------------------------------------------------------------------------- console
def test_console_shows_hostile_tokens_literally(hostile):
    text, ansi = record(hostile)
    assert "<script>alert(1)</script>" in text
    assert "·&amp;" in text
    assert '·"quoted"' in text
    assert "[bold red]markup[/]" in text  # rich markup is not interpreted
    assert "\\x1b[31m" in text and "\x1b" not in text  # control characters escaped
    assert "\x1b[31m" not in ansi  # the token's escape sequence never reaches the terminal
    assert "🙂" in text and "城市" in text
    assert "↵" in text and "→" in text and "∅" in text and "\\u200b" in text
    assert "integrated_gradients" in text and "logprob" in text and "max |δ|" in text
    assert "Σ" in text  # aggregate line
    assert "tiny <model> & co" in text


def test_console_colours_use_backgrounds_and_nan_is_plain(hostile):
    _, ansi = record(hostile)
    assert "48;2;" in ansi  # truecolor backgrounds
    norm, _ = _view.normalised_rows(hostile, "step")
    # the first step's BOS cell is NaN: it has no background of its own
    from lmxray.render.console import _cell_style

    assert _cell_style(float("nan")).bgcolor is None
    style = _cell_style(float(norm[1, 2]))
    assert style.bgcolor is not None and style.color is not None


def test_console_announces_hidden_steps():
    targets = [f" t{i}" for i in range(30)]
    a = make_attribution(prompt=["<bos>", "Hello"], targets=targets, info={})
    text, _ = record(a, max_steps=4)
    assert "26 more step(s) not shown" in text
    text_all, _ = record(a, max_steps=None)
    assert "not shown" not in text_all
    text_some, _ = record(a, steps=[-1])
    assert "·t29" in text_some


def test_console_normalize_options_and_errors(hostile):
    text, _ = record(hostile, normalize="global")
    assert "of all steps" in text
    with pytest.raises(ValueError):
        record(hostile, normalize="nope")
    with pytest.raises(ValueError):
        record(hostile, steps=[99])


def test_rich_print_protocol(hostile):
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(hostile)
    assert "<script>alert(1)</script>" in console.export_text()
    assert len(list(attribution_renderables(hostile, header=False))) == 1


@pytest.mark.parametrize(
    "prompt,targets,fill",
    [
        ([], [" only"], None),  # no prompt at all
        (["a", "b"], [" c"], 0.0),  # all-zero scores
        (["a", "b"], [" c", " d"], np.nan),  # nothing attributable
    ],
)
def test_degenerate_results_render(prompt, targets, fill):
    a = make_attribution(prompt=prompt, targets=targets, info={})
    if fill is not None:
        a.scores[:] = fill
    text, _ = record(a)
    assert display(targets[0]) in text
    html = attribution_html(a)
    assert "lmx-report" in html


def display(tok: str) -> str:
    return _view.display_token(tok)


# --------------------------------------------------------------------------- HTML
class _TokenText(HTMLParser):
    """Collects the text of every ``.lmx-tok`` span and of every <script> element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tokens: list[str] = []
        self.scripts: list[str] = []
        self._in_tok = False
        self._in_script = False
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        for key in ("src", "href", "action", "xlink:href"):
            if key in d:
                self.urls.append(d[key] or "")
        if tag == "span" and "lmx-tok" in (d.get("class") or "").split():
            self._in_tok = True
            self.tokens.append("")
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_tok = False
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_tok:
            self.tokens[-1] += data
        if self._in_script:
            self.scripts[-1] += data


def test_html_escapes_tokens(hostile):
    page = attribution_html(hostile)
    assert page.lstrip().startswith("<!DOCTYPE html>")
    # exactly our two scripts (data + code), nothing from tokens or info
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;amp;" in page  # the token "&amp;" shown as the five characters
    assert "&#34;quoted&#34;" in page or "&quot;quoted&quot;" in page
    assert "tiny &lt;model&gt; &amp; co" in page
    parser = _TokenText()
    parser.feed(page)
    expected = [_view.display_token(t, whitespace=False) for t in hostile.source_tokens]
    assert parser.tokens == expected  # every token shown, literally, in order
    data = json.loads(parser.scripts[0])
    assert data["promptLength"] == hostile.prompt_length
    assert data["scores"][0][0] is None  # NaN travels as null


def test_html_has_no_external_resources(hostile):
    page = attribution_html(hostile)
    parser = _TokenText()
    parser.feed(page)
    assert parser.urls == []
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page


def test_html_content(hostile):
    page = attribution_html(hostile, step=1)
    for label in ("integrated_gradients", "logprob", "max |δ|", "info (JSON)", "Σ all steps (sum)"):
        assert html_lib.escape(label, quote=False) in page or label in page
    assert 'class="lmx-tok lmx-tgt lmx-current"' in page  # step 2's target token is boxed
    assert page.count("<td") == len(hostile.source_tokens) * len(hostile.target_tokens)
    assert "not attributable" in page
    # the info JSON is shown escaped
    assert "&lt;/script&gt;&lt;script&gt;alert(&#39;info&#39;)" in page
    with pytest.raises(ValueError):
        attribution_html(hostile, step=7)
    with pytest.raises(ValueError):
        attribution_html(hostile, normalize="bogus")


def test_html_fragment_for_notebooks(hostile):
    frag = attribution_html(hostile, standalone=False)
    assert frag.lstrip().startswith('<div class="lmx-report"')
    assert "<html" not in frag and "<!DOCTYPE" not in frag and "<body" not in frag
    assert hostile._repr_html_().lstrip().startswith("<div")
    # two renders in one notebook never share element ids
    ids = re.findall(r'id="(lmx-[^"]+)"', frag + attribution_html(hostile, standalone=False))
    assert len(ids) == 2 and ids[0] != ids[1]


def test_to_html_writes_file(hostile, tmp_path):
    out = tmp_path / "r.html"
    text = hostile.to_html(out)
    assert out.read_text(encoding="utf-8") == text
    with pytest.raises(InputError):
        hostile.to_html(tmp_path / "missing" / "r.html")


# --------------------------------------------------------------------------- plots
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_attribution_writes_png(hostile, tmp_path):
    out = plot_attribution(hostile, tmp_path / "a.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp files left
    out2 = plot_attribution(hostile, tmp_path / "b.png", normalize="step")
    assert out2.read_bytes().startswith(PNG_MAGIC)


def test_heatmap_png_generic(tmp_path):
    m = np.array([[0.5, np.nan], [-1.0, 2.0], [0.0, 0.1]])
    out = heatmap_png(
        m,
        ["$a$", " b", "\n"],
        ["x", "y"],
        tmp_path / "h.png",
        title="t $1",
        cmap="viridis",
        center=False,
    )
    assert out.read_bytes().startswith(PNG_MAGIC)
    big = np.random.default_rng(0).normal(size=(120, 12))
    big[::7, ::3] = np.nan
    out = heatmap_png(
        big, [f"r{i}" for i in range(120)], [f"c{i}" for i in range(12)], tmp_path / "big.png"
    )
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_png_into_memory(hostile, tmp_path):
    buf = io.BytesIO()
    plot_attribution(hostile, buf)
    assert buf.getvalue().startswith(PNG_MAGIC)
    assert list(tmp_path.iterdir()) == []


def test_heatmap_png_errors(tmp_path):
    with pytest.raises(InputError):
        heatmap_png(np.zeros((2, 2)), ["a", "b"], ["x", "y"], tmp_path / "no" / "h.png")
    with pytest.raises(InputError):
        heatmap_png(np.zeros((2, 2)), ["a"], ["x", "y"], tmp_path / "h.png")
    with pytest.raises(InputError):
        heatmap_png(np.zeros(3), ["a"], ["x"], tmp_path / "h.png")
    assert list(tmp_path.iterdir()) == []
