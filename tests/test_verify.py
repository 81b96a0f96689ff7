"""Verification of attributions: the p-value's validity, golden values, axioms, verdicts that
fail when they should, the JSON format (old files load), the views and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lmxray
from lmxray.attribution.base import Context
from lmxray.attribution.verify import (
    K_CORRELATION,
    check_params,
    correlation_statistics,
    effect_size,
    permutation_p_value,
    removal_statistics,
    verify,
)
from lmxray.result import Attribution, Verification
from lmxray.targets import resolve_target_fn

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_PARIS_P, GOLDEN_PARIS_R = 0.016, 0.711  # 160 subsets (0.038, 0.631 with 48)
FACT = ("The currency of Trinidad and Tobago is the", " dollar")
PARIS = ("The capital of France is", " Paris")
NORWAY = ("Q: What language is spoken in Norway? A:", " Norwegian")


@pytest.fixture(scope="module")
def m():
    return lmxray.load()


@pytest.fixture(scope="module")
def occ(m):
    return m.attribute(*NORWAY, method="occlusion")


def _ctx():
    return Context(target_fn=resolve_target_fn("logprob"))


# --------------------------------------------------------------------------- the p-value
def test_p_value_golden():
    assert permutation_p_value(0.5, [0.1, 0.6, 0.5]) == pytest.approx(3 / 4)  # ties count
    assert permutation_p_value(1.0, [0.1, 0.2, 0.3]) == pytest.approx(1 / 4)
    assert permutation_p_value(0.0, [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert permutation_p_value(0.15, [0.1, 0.2, 0.3], greater=False) == pytest.approx(2 / 4)
    assert np.isnan(permutation_p_value(float("nan"), [0.1]))
    assert effect_size(3.0, [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert np.isnan(effect_size(1.0, [2.0, 2.0]))


def test_p_value_is_uniform_under_the_null_formula():
    """Observed and null drawn from one distribution: P(p <= a) <= a for every a."""
    rng = np.random.default_rng(0)
    k, trials = 19, 4000
    ps = np.array([permutation_p_value(x[0], x[1:]) for x in rng.standard_normal((trials, k + 1))])
    for a in (0.05, 0.1, 0.25, 0.5):
        # exact: P(p <= a) = floor(a (k+1)) / (k+1); 4 standard errors of slack
        exact = np.floor(a * (k + 1)) / (k + 1)
        assert abs((ps <= a).mean() - exact) < 4 * np.sqrt(exact * (1 - exact) / trials)
    assert ps.min() == pytest.approx(1 / (k + 1))


def test_p_value_is_uniform_for_random_vs_random(m, occ):
    """Each random attribution of the null, tested against the other ones (they are
    exchangeable: the `random` method draws what the null draws), gets a uniform p-value."""
    p = check_params({"k": 199})
    comp, suff, _, _ = removal_statistics(m, occ, p, _ctx())
    stat = (comp - suff)[1:, 0]  # the 199 null draws
    ps = np.array([permutation_p_value(s, np.delete(stat, j)) for j, s in enumerate(stat)])
    assert (ps <= 0.05).mean() <= 0.05 + 1e-9
    assert (ps <= 0.5).mean() <= 0.5 + 1e-9
    assert 0.35 < ps.mean() < 0.65
    corr, _ = correlation_statistics(m, occ, p, _ctx())
    null = corr[1:, 0]
    assert null.size == K_CORRELATION
    cp = np.array([permutation_p_value(s, np.delete(null, j)) for j, s in enumerate(null[:300])])
    assert (cp <= 0.05).mean() <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 300)
    assert 0.4 < cp.mean() < 0.6


@pytest.mark.slow
def test_random_method_is_rarely_called_faithful(m):
    """The `random` method with different seeds on facts prompts: faithful at most alpha plus
    sampling slack (the false-positive rate the p-value promises)."""
    prompts = ["The currency of Trinidad and Tobago is the", "The capital of France is",
               "When Paul and Julia went to the library, Julia gave a ticket to"]
    ps = []
    for prompt in prompts[:2]:
        for seed in range(10):
            a = m.attribute(prompt, max_new_tokens=1, method="random", seed=seed)
            v = verify(m, a, k=19, stability="none", seeds=0)
            ps.append(v.p_value)
    ps = np.array(ps)
    assert (ps <= 0.05).mean() <= 0.15  # 20 draws: 5% expected, 0.15 is ~2 standard errors
    assert 0.3 < ps.mean() < 0.75


# --------------------------------------------------------------------------- golden values
@pytest.mark.slow
def test_removal_statistics_match_evaluate_faithfulness(m, occ):
    """Row 0 (the explanation) equals evaluate.faithfulness with one bin per removal size."""
    from lmxray.evaluate import faithfulness

    p = check_params({"k": 3})
    comp, suff, n_cand, _ = removal_statistics(m, occ, p, _ctx())
    n = int(n_cand[0])
    bins = [100.0 * s / n for s in range(1, n)]
    f = faithfulness(m, occ, bins=bins, metrics=["comprehensiveness", "sufficiency"])
    assert comp[0, 0] == pytest.approx(float(np.mean(f.comprehensiveness[0])), abs=1e-5)
    assert suff[0, 0] == pytest.approx(float(np.mean(f.sufficiency[0])), abs=1e-5)


def test_verify_golden_paris(m):
    """Occlusion of the Paris fact: its faithfulness correlation beats the 999 random
    attributions' (deterministic, seed 0)."""
    a = m.attribute(*PARIS, method="occlusion")
    v = verify(m, a, stability="none", seeds=0)
    assert v.p_value == pytest.approx(GOLDEN_PARIS_P)
    assert v.faithful is True
    assert v.faithfulness["n_candidates"] == [5]
    assert v.faithfulness["step_p_value"] == [pytest.approx(GOLDEN_PARIS_P)]
    assert v.faithfulness["correlation"] == pytest.approx(GOLDEN_PARIS_R, abs=1e-3)
    assert v.faithfulness["effect_correlation"] > 1.5
    assert v.verdict == "faithful" and v.passed
    assert v.cost["forward_passes"] >= 1 and v.cost["scored_sequences"] > 0


# --------------------------------------------------------------------------- axioms
def _with_scores(a: Attribution, scores: np.ndarray) -> Attribution:
    return Attribution(a.source_tokens, a.target_tokens, scores, a.target_scores, a.method,
                       a.model_name, dict(a.info), a.source_ids, a.target_ids)


@pytest.mark.slow
def test_perfect_beats_null_and_reversed_is_worse(m, occ):
    """The occlusion ranking (a perfect first-order explanation) beats the null; the same
    ranking reversed is flagged as worse than random; all-equal scores are not faithful."""
    good = verify(m, occ, stability="none", seeds=0)
    assert good.faithful and good.p_value <= 0.05
    bad = verify(m, _with_scores(occ, -occ.scores), stability="none", seeds=0)
    assert bad.faithful is False and bad.faithfulness["p_value_worse"] <= 0.05
    assert "worse than random" in bad.verdict
    flat = np.where(np.isnan(occ.scores), np.nan, 1.0).astype(np.float32)
    tie = verify(m, _with_scores(occ, flat), stability="none", seeds=0)
    assert tie.faithful is False
    assert good.faithfulness["correlation"] > tie.faithfulness["correlation"] > bad.faithfulness["correlation"]
    assert good.faithfulness["p_comprehensiveness"] < bad.faithfulness["p_comprehensiveness"]


@pytest.mark.slow
def test_removal_p_value_floor_is_one_over_k_plus_one(m, occ):
    for k in (4, 9):
        v = verify(m, occ, k=k, stability="none", seeds=0)
        pc = v.faithfulness["p_comprehensiveness"]
        assert pc >= 1 / (k + 1)
        assert pc * (k + 1) == pytest.approx(round(pc * (k + 1)))  # a multiple of 1/(k+1)
        assert v.faithfulness["p_correlation"] >= 1 / (K_CORRELATION + 1)


# --------------------------------------------------------------------------- verdicts that fail
@pytest.mark.slow
def test_ig_far_from_convergence_is_called_incomplete(m):
    a = m.attribute(*FACT, method="integrated_gradients", n_steps=1, integration="riemann_right")
    v = verify(m, a, stability="none")
    assert v.checks["complete"] is False and not v.passed
    assert "incomplete" in v.verdict
    assert v.completeness["max_relative_error"] > v.completeness["tolerance"]
    assert any(r.startswith("incomplete: IG error") for r in v.reasons)


@pytest.mark.slow
def test_attention_fails_the_randomised_model_check(m):
    a = m.attribute(*PARIS, method="attention")
    v = verify(m, a, model_null=True, stability="none")
    assert v.checks["sane"] is False and not v.passed
    assert abs(v.sanity["spearman"]) >= 0.5
    assert "fails sanity check" in v.verdict
    assert len(v.faithfulness["model_null_comprehensiveness"]) == 1
    assert v.cost["forward_passes_by_check"]["sanity"] >= 1


@pytest.mark.slow
def test_random_method_is_not_converged_and_unstable_or_unmeasured(m):
    a = m.attribute(*FACT, method="random")
    v = verify(m, a, stability=["swap", "whitespace"], tolerance=1.0)
    assert v.checks["converged"] is False
    assert v.convergence["spearman"] < 0.5
    # scores redrawn for any new input: the perturbed scores are as far as an independent draw
    assert v.stability["max_sensitivity"] > 0.7
    assert not v.passed


@pytest.mark.slow
def test_stability_of_occlusion_under_swap_and_whitespace(m, occ):
    v = verify(m, occ, stability="all", tolerance=0.5, seeds=0)
    kinds = {r["kind"] for r in v.stability["perturbations"]}
    assert kinds <= {"swap", "whitespace"} and kinds
    assert any("noise: only for gradient methods" in s for s in v.stability["skipped"])
    for r in v.stability["perturbations"]:
        assert r["output_shift"] <= 0.5
        assert -1.0 <= r["spearman"] <= 1.0 and 0.0 <= r["top_k_overlap"] <= 1.0
    assert v.stability["max_sensitivity"] >= 0
    assert v.stability["reruns"] == len(v.stability["perturbations"])


@pytest.mark.slow
def test_noise_stability_for_saliency(m):
    a = m.attribute(*PARIS, method="saliency")
    v = verify(m, a, stability="noise", noise=0.01, tolerance=1.0, seeds=0)
    (row,) = v.stability["perturbations"]
    assert row["kind"] == "noise" and row["spearman"] > 0.5
    again = m.attribute(*PARIS, method="saliency")  # the hook is gone: same scores as before
    np.testing.assert_array_equal(again.scores, a.scores)


# --------------------------------------------------------------------------- API, format, views
@pytest.mark.slow
def test_attribute_verify_true_reports_cost(m):
    a = m.attribute(*PARIS, method="integrated_gradients", n_steps=8, verify={"seeds": 0})
    v = a.verification
    assert isinstance(v, Verification)
    assert v.cost["explanation"]["forward_tokens"] > 0
    assert v.cost["token_ratio"] > 1.0
    assert v.checks["complete"] is not None


@pytest.mark.slow
def test_format_v2_roundtrip_and_v1_files_load(m, tmp_path):
    a = m.attribute(*PARIS, method="occlusion")
    a.verify(m, stability="none", seeds=0)
    path = a.save(tmp_path / "a.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "lmxray.attribution/2"
    assert raw["verification"]["faithfulness"]["p_value"] == pytest.approx(a.verification.p_value)
    assert raw["verification"]["faithfulness"]["comprehensiveness"][0] > 0
    b = Attribution.load(path)
    assert b.verification == a.verification
    for name in ("attribution_v1_main.json", "attribution_v1_orig.json"):
        old = Attribution.load(FIXTURES / name)
        assert old.verification is None and old.scores.shape[0] >= 1
    old = Attribution.load(FIXTURES / "attribution_v1_main.json")
    assert old.method == "occlusion" and old.source_tokens[-1] == " Paris"
    assert old.verify(m, stability="none", seeds=0).faithful is True  # old files can be verified
    assert json.loads(old.to_json())["format"] == "lmxray.attribution/2"


@pytest.mark.slow
def test_malformed_verification_is_a_format_error(tmp_path):
    data = json.loads((FIXTURES / "attribution_v1_main.json").read_text())
    data["format"] = "lmxray.attribution/2"
    data["verification"] = {"passed": True}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(lmxray.errors.FormatError, match="verdict"):
        Attribution.load(tmp_path / "bad.json")


@pytest.mark.slow
def test_views_show_the_verdict(m):
    a = m.attribute(*PARIS, method="occlusion")
    html = a.to_html()
    assert "Verification" not in html
    a.verify(m, stability="none", seeds=0)
    html = a.to_html()
    assert "Verification" in html and "faithful: beats random, p = " in html
    from rich.console import Console

    con = Console(record=True, width=120)
    a.show(console=con)
    text = con.export_text()
    assert "verification" in text and "PASS" in text and "faithfulness correlation" in text


@pytest.mark.slow
def test_cli_explain_verify_terminal_json_html(tmp_path):
    from lmxray.cli import app

    res = CliRunner().invoke(app, ["explain", PARIS[0], "-t", PARIS[1], "--method", "occlusion", "--verify",
                                   "--stability", "none", "--json", str(tmp_path / "a.json"),
                                   "--html", str(tmp_path / "a.html")])
    assert res.exit_code == 0, res.output
    assert "verification PASS  faithful" in res.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["verification"]["checks"]["faithful"] is True
    assert data["verification"]["params"]["k"] == 49
    assert "Verification" in (tmp_path / "a.html").read_text()


@pytest.mark.slow
def test_runner_reports_verdict_rates(m):
    import lmxray.zoo as zoo
    from lmxray.evaluate.runner import evaluate

    ev = evaluate(m, zoo.dataset("facts", n=3), methods=["occlusion", "random"],
                  metrics=["comprehensiveness"], verify={"stability": "none", "seeds": 0},
                  progress=False)
    board = ev.leaderboard()
    assert board.loc["random", "verdict_faithful"] == 0.0
    assert board.loc["occlusion", "verdict_faithful"] > board.loc["random", "verdict_faithful"]
    assert "verdict_faithful" in ev.display_columns()
    assert ev.config["verify"]["seeds"] == 0
    with pytest.raises(lmxray.errors.InputError, match="alpha"):
        evaluate(m, zoo.dataset("facts", n=1), methods=["random"], verify={"alpha": 2})


@pytest.mark.slow
def test_evaluate_cli_verify_writes_verdict_columns(tmp_path):
    from typer.testing import CliRunner

    from lmxray import cli

    out = tmp_path / "rows.jsonl"
    r = CliRunner().invoke(cli.app, [
        "evaluate", "--task", "facts", "--n", "2", "--methods", "occlusion",
        "--metrics", "comprehensiveness", "--verify", "--out", str(out),
        "--csv", str(tmp_path / "t.csv"), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scored = [row for row in rows if row.get("method") == "occlusion"]
    assert len(scored) == 2 and all(isinstance(row["verdict_faithful"], bool) for row in scored)
    assert "verdict_faithful" in (tmp_path / "t.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_attention_on_recall_is_called_not_faithful_where_occlusion_is(m):
    """A method that fails on a task, and the verdict says so: on the recall task (the answer is
    the value after the queried key), raw attention is not distinguishable from random while
    occlusion of the same example is faithful (calibration: attention faithful on 0 of 15
    recall examples, benchmarks/results/verify.md)."""
    prompt, target = "Keys: k1 gray, k11 yellow, k12 green, k7 red. Query: k11", " yellow"
    att = verify(m, m.attribute(prompt, target, method="attention"), k=1, stability="none", seeds=0)
    assert att.faithful is False and not att.passed
    assert att.p_value > 0.05
    assert att.verdict in ("not distinguishable from random", "worse than random")
    assert att.reasons[0].startswith(("not distinguishable from random: p = ", "unfaithful: worse"))
    occ = verify(m, m.attribute(prompt, target, method="occlusion"), k=1, stability="none", seeds=0)
    assert occ.faithful is True and occ.p_value <= 0.05
    assert occ.faithfulness["correlation"] > att.faithfulness["correlation"]
