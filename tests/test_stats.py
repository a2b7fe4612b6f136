"""Aggregation, bootstrap, ranks, Kendall tau and flips on cases with known answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mmlu_flavors import stats as st
from mmlu_flavors.categories import SUBJECTS, category_of, subject_table
from mmlu_flavors.reduce import IMPLEMENTATIONS, PREDICTION_SCHEMA


def _pred_rows(model, impl, subject_correct: dict[str, list[bool]]):
    prompt, scorer = IMPLEMENTATIONS[impl]
    return [{"model": model, "prompt": prompt, "scorer": scorer, "subject": s, "index": i,
             "pred": 0 if c else 1, "gold": 0, "correct": c}
            for s, cs in subject_correct.items() for i, c in enumerate(cs)]


def _pred(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA)


def test_categories_complete():
    assert len(SUBJECTS) == 57
    t = subject_table()
    assert dict(t.group_by("category").len().iter_rows()) == {
        "STEM": 18, "humanities": 13, "social sciences": 12,
        "other (business, health, misc.)": 14}
    assert category_of("us_foreign_policy") == "social sciences"
    assert category_of("anatomy") == "other (business, health, misc.)"
    assert category_of("formal_logic") == "humanities"
    assert category_of("astronomy") == "STEM"


def test_micro_vs_macro_hand_computed():
    # anatomy 2/2, astronomy 1/4 -> micro 3/6 = 0.5, macro (1 + 0.25) / 2 = 0.625
    p = _pred(_pred_rows("m", "original", {"anatomy": [True, True],
                                           "astronomy": [True, False, False, False]}))
    r = st.micro_macro(p).row(0, named=True)
    assert (r["n_questions"], r["n_subjects"]) == (6, 2)
    assert r["micro"] == pytest.approx(0.5)
    assert r["macro"] == pytest.approx(0.625)


def test_category_micro_within_category():
    # STEM: astronomy 1/4, abstract_algebra 2/2 -> micro 3/6, macro 0.625; humanities 0/3
    p = _pred(_pred_rows("m", "original", {
        "astronomy": [True, False, False, False], "abstract_algebra": [True, True],
        "philosophy": [False, False, False]}))
    c = {r["category"]: r for r in st.category_accuracy(p).iter_rows(named=True)}
    assert c["STEM"]["micro"] == pytest.approx(0.5)
    assert c["STEM"]["macro"] == pytest.approx(0.625)
    assert c["humanities"]["micro"] == 0.0
    s = st.compute(p, n_boot=50)
    cat = s.categories.filter(pl.col("category") == "STEM").row(0, named=True)
    assert cat["micro"] == pytest.approx(0.5) and cat["macro"] == pytest.approx(0.625)
    # overall: 3 of 9 correct (micro, original's own), subject means (0.25 + 1 + 0) / 3 (macro)
    r = s.scores.row(0, named=True)
    assert r["score"] == pytest.approx(3 / 9) and r["micro"] == pytest.approx(3 / 9)
    assert r["macro"] == pytest.approx(1.25 / 3)


def _bernoulli_pred(p_true: float, n: int, seed: int, model="m", impl="original"):
    rng = np.random.default_rng(seed)
    return _pred(_pred_rows(model, impl, {"anatomy": list(rng.random(n) < p_true)}))


def test_bootstrap_bernoulli_se_and_coverage():
    n = 2000
    p = _bernoulli_pred(0.3, n, seed=11)
    phat = p.get_column("correct").mean()
    bs = st.bootstrap_subject_means(p, ("model", "prompt", "scorer"), n_boot=4000, seed=5)
    point, boot = bs.micro()
    assert point[0] == pytest.approx(phat)
    se = boot[:, 0].std(ddof=1)
    assert se == pytest.approx(np.sqrt(phat * (1 - phat) / n), rel=0.08)
    assert boot[:, 0].mean() == pytest.approx(phat, abs=0.002)
    lo, hi = st.percentile_ci(boot[:, 0])
    assert lo < 0.3 < hi and lo < phat < hi
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / n), rel=0.1)


def test_bootstrap_deterministic_and_seed_dependent():
    p = _bernoulli_pred(0.5, 300, seed=1)
    a = st.bootstrap_subject_means(p, ("model",), n_boot=200, seed=3).boot
    b = st.bootstrap_subject_means(p, ("model",), n_boot=200, seed=3).boot
    c = st.bootstrap_subject_means(p, ("model",), n_boot=200, seed=4).boot
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bootstrap_paired_same_resamples_for_every_column():
    one = _bernoulli_pred(0.4, 200, seed=2, model="a")
    twin = one.with_columns(model=pl.lit("b"))              # identical verdicts
    other = _bernoulli_pred(0.7, 200, seed=9, model="c")
    p = pl.concat([one, twin, other])
    bs = st.bootstrap_subject_means(p, ("model",), n_boot=300, seed=0)
    _, boot = bs.micro()
    assert np.array_equal(boot[:, 0], boot[:, 1])            # same indices for a and b
    alone = st.bootstrap_subject_means(one, ("model",), n_boot=300, seed=0).micro()[1]
    assert np.array_equal(alone[:, 0], boot[:, 0])           # independent of other columns
    s = st.compute(p, n_boot=300)
    assert s.differences.height == 0  # a single implementation: no pairs
    r = s.ranks.sort("model")
    assert r.get_column("rank").to_list() == [2.5, 2.5, 1.0]


def test_differences_paired_zero_for_identical_implementations():
    rows = (_pred_rows("m", "original", {"anatomy": [True, False, True, True, False]})
            + _pred_rows("m", "harness_current", {"anatomy": [True, False, True, True, False]})
            + _pred_rows("m", "helm", {"anatomy": [False, False, True, True, True]}))
    s = st.compute(_pred(rows), n_boot=200, seed=1)
    d = s.differences.filter((pl.col("implementation_a") == "original")
                             & (pl.col("implementation_b") == "harness_current"))
    assert d.get_column("diff").to_list() == [0.0, 0.0, 0.0]
    assert d.get_column("ci_lo").to_list() == [0.0] * 3 and d.get_column("ci_hi").to_list() == [0.0] * 3
    f = s.flip_summary.filter((pl.col("implementation_a") == "helm")
                              & (pl.col("implementation_b") == "original")).row(0, named=True)
    assert (f["n_questions"], f["n_flips"], f["only_a"], f["only_b"]) == (5, 2, 1, 1)
    fl = s.flips.filter((pl.col("implementation_a") == "helm")
                        & (pl.col("implementation_b") == "original"))
    assert fl.get_column("index").to_list() == [0, 4]
    assert fl.get_column("correct_a").to_list() == [False, True]


def test_kendall_tau_b_known_values():
    # scipy.stats.kendalltau documentation example (with ties): -0.47140452079103173
    x = [12, 2, 1, 12, 2]
    y = [1, 4, 7, 1, 0]
    # by hand: C=2, D=6, pairs untied in x = 8, in y = 9 -> -4 / sqrt(72)
    assert st.kendall_tau_b(x, y) == pytest.approx(-4 / np.sqrt(72))
    assert st.kendall_tau_b(x, y) == pytest.approx(-0.47140452079103173)
    assert st.kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert st.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap among 4: C=5, D=1 -> 4/6
    assert st.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert np.isnan(st.kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert np.isnan(st.kendall_tau_b([1.0], [2.0]))
    batch = st.kendall_tau_b(np.array([[1, 2, 3], [1, 2, 3]]), np.array([[1, 2, 3], [3, 2, 1]]))
    assert batch.tolist() == pytest.approx([1.0, -1.0])


def test_average_ranks():
    assert st.average_ranks(np.array([0.5, 0.7, 0.5, 0.1])).tolist() == [2.5, 1.0, 2.5, 4.0]
    assert st.average_ranks(np.array([[1.0, 2.0], [3.0, 3.0]])).tolist() == [[2.0, 1.0], [1.5, 1.5]]


def test_kendall_and_ranks_in_compute():
    rows = []
    for m, (a, b) in {"x": (0.9, 0.2), "y": (0.5, 0.5), "z": (0.1, 0.8)}.items():
        n = 100
        rows += _pred_rows(m, "original", {"anatomy": [k < a * n for k in range(n)]})
        rows += _pred_rows(m, "helm", {"anatomy": [k < b * n for k in range(n)]})
    s = st.compute(_pred(rows), n_boot=200)
    k = s.kendall.row(0, named=True)
    assert (k["implementation_a"], k["implementation_b"]) == ("helm", "original")
    assert k["tau_b"] == pytest.approx(-1.0) and k["n_models"] == 3
    r = {(r["implementation"], r["model"]): r["rank"] for r in s.ranks.iter_rows(named=True)}
    assert r["original", "x"] == 1 and r["helm", "z"] == 1 and r["helm", "x"] == 3


def test_unbalanced_questions_refused():
    rows = (_pred_rows("a", "original", {"anatomy": [True, False]})
            + _pred_rows("b", "original", {"anatomy": [True]}))
    with pytest.raises(ValueError, match="same 2 questions"):
        st.compute(_pred(rows))
