"""Attribution: on a synthetic cache whose every factor has a known effect, the walk and the
Shapley shares recover each effect; the walk's endpoints are the published scores."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
import pytest
from synthetic_cache import cache_row, make_cache, synthetic_cache

from mmlu_flavors import attribution as at
from mmlu_flavors import cli
from mmlu_flavors import flavors as fl
from mmlu_flavors.reduce import predictions
from mmlu_flavors.stats import compute

A, B = "harness (acc)", "original"          # loglik_acc/macro  vs  letter_argmax/micro
SUBJECTS = {"anatomy": 40, "astronomy": 20}
# question groups: how many questions of each subject flip with each factor (proportional to
# subject size, so the micro and macro effects are equal), and the sign of the effect; the
# four prompt factors in which harness_e47e01b and original differ, and the scorer
GROUPS = {"header": (4, 2, +1), "template": (2, 1, -1), "shots": (6, 3, +1),
          "tokens": (4, 2, -1), "scoring": (8, 4, +1)}
DIFFERING = ["header", "template", "shots", "tokens"]
BASE_RIGHT = {"anatomy": 6, "astronomy": 2}   # of the remaining questions, always right


def _design():
    """Per question: subject, index, gold, factor group (or None), base verdict."""
    rows = []
    for s, n in SUBJECTS.items():
        k = 0
        col = 0 if s == "anatomy" else 1
        for g, counts in GROUPS.items():
            for _ in range(counts[col]):
                rows.append((s, k, k % 4, g, None))
                k += 1
        for j in range(n - k):
            rows.append((s, k, k % 4, None, j < BASE_RIGHT[s]))
            k += 1
    return rows


def _variants(prompt_factors: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, set]]:
    """Every combination of the given prompt factors taken from original into
    harness_e47e01b (real definitions via flavors.with_factors): name -> levels, and
    name -> the factors at original's level. The endpoints keep the real flavor names."""
    variants, at_b = {}, {}
    for r in range(len(prompt_factors) + 1):
        for sub in combinations(prompt_factors, r):
            defn = fl.with_factors("harness_e47e01b", "original",
                                   [f for g in sub for f in at.FACTOR_GROUPS[g]])
            name = {0: "harness_e47e01b", 4: "original"}.get(len(sub), at.variant_name(defn))
            variants[name], at_b[name] = at.levels(defn), set(sub)
    assert variants["original"] == at.levels(fl.get_flavor("original").spec)
    assert variants["harness_e47e01b"] == at.levels(fl.get_flavor("harness_e47e01b").spec)
    return variants, at_b


def _cache(at_b_of: dict[str, set]) -> pl.DataFrame:
    """letter_argmax / loglik_acc right exactly as the design says, for every variant."""
    rows = []
    for name, at_b in at_b_of.items():
        for s, i, gold, g, base in _design():
            verdict = {}
            for scorer, scoring_at_b in (("letter_argmax", True), ("loglik_acc", False)):
                if g is None:
                    verdict[scorer] = base
                else:
                    on = scoring_at_b if g == "scoring" else g in at_b
                    verdict[scorer] = on if GROUPS[g][2] > 0 else not on
            def vec(right):
                top = gold if right else (gold + 1) % 4
                return [-0.5 if j == top else -3.0 - j for j in range(4)]
            rows.append(cache_row(model="m", flavor=name, subject=s, index=i, gold=gold,
                                  letter_logprobs=vec(verdict["letter_argmax"]),
                                  text_cont_sum=vec(verdict["loglik_acc"])))
    return make_cache(rows)


def _effect(g: str) -> float:
    n = sum(SUBJECTS.values())
    return GROUPS[g][2] * (GROUPS[g][0] + GROUPS[g][1]) / n


def _averaging_effect() -> float:
    """macro - micro of the base questions (flipping groups are proportional: no interaction)."""
    right = {s: BASE_RIGHT[s] for s in SUBJECTS}
    # in the harness (acc) point every group is at its A state: right iff its effect is negative
    for s, col in (("anatomy", 0), ("astronomy", 1)):
        right[s] += sum(c[col] for c in GROUPS.values() if c[2] < 0)
    micro = sum(right.values()) / sum(SUBJECTS.values())
    macro = np.mean([right[s] / SUBJECTS[s] for s in SUBJECTS])
    return float(micro - macro)  # the walk goes macro (A) -> micro (B)


def test_walk_and_shapley_recover_each_known_effect():
    variants, at_b = _variants(DIFFERING)
    assert len(variants) == 16
    pred = predictions(_cache(at_b))
    t = at.attribute(pred, "m", A, B, variants, order=at.FACTORS, n_boot=200, seed=1)
    steps = t.filter(pl.col("kind") == "step").sort("step")
    walked = [f for f in at.FACTORS if f not in ("answer_delimiter", "chat")]  # same in both
    assert steps.get_column("factor").to_list() == ["start", *walked]
    assert steps.get_column("prompt").to_list()[0] == "harness_e47e01b"
    assert steps.get_column("prompt").to_list()[-1] == "original"
    got = dict(zip(steps.get_column("factor").to_list()[1:],
                   steps.get_column("contribution").to_list()[1:]))
    sh = t.filter(pl.col("kind") == "shapley")
    shap = dict(zip(sh.get_column("factor").to_list(), sh.get_column("contribution").to_list()))
    assert sh.get_column("per_factor").all()
    for g in GROUPS:
        assert got[g] == pytest.approx(_effect(g), abs=1e-12), g
        assert shap[g] == pytest.approx(_effect(g), abs=1e-12), g
    assert got["averaging"] == pytest.approx(_averaging_effect(), abs=1e-12)
    assert shap["averaging"] == pytest.approx(_averaging_effect(), abs=1e-12)
    total = steps.get_column("score")[-1] - steps.get_column("score")[0]
    assert sum(shap.values()) == pytest.approx(total, abs=1e-12)
    # a bootstrap CI brackets every contribution
    for r in t.iter_rows(named=True):
        if r["contribution"] is not None:
            assert r["contribution_lo"] - 1e-12 <= r["contribution"] <= r["contribution_hi"] + 1e-12

    # another order: the same per-factor effects (the design has no interactions)
    order = list(reversed(at.FACTORS))
    t2 = at.attribute(pred, "m", A, B, variants, order=order, n_boot=50, seed=1)
    s2 = t2.filter(pl.col("kind") == "step").sort("step")
    assert s2.get_column("factor").to_list()[1:] == list(reversed(walked))
    assert dict(zip(reversed(walked), s2.get_column("contribution").to_list()[1:]))["shots"] == \
        pytest.approx(_effect("shots"), abs=1e-12)


def test_missing_prompt_variants_group_the_prompt_factors():
    variants, at_b = _variants(DIFFERING)
    # only the endpoints and two partial variants were run: header alone, and header+shots
    keep = {"harness_e47e01b", "original"} | {n for n, b in at_b.items()
                                              if b in ({"header"}, {"header", "shots"})}
    variants = {n: v for n, v in variants.items() if n in keep}
    pred = predictions(_cache({n: at_b[n] for n in keep}))
    t = at.attribute(pred, "m", A, B, variants, order=at.FACTORS, n_boot=50, seed=0)
    steps = t.filter(pl.col("kind") == "step").sort("step")
    # header alone exists; header+template does not, nor +shots after it: the remaining
    # prompt factors change in one step
    assert steps.get_column("factor").to_list() == [
        "start", "header", "template+shots+tokens", "scoring", "averaging"]
    contrib = steps.get_column("contribution").to_list()
    assert contrib[1] == pytest.approx(_effect("header"), abs=1e-12)
    assert contrib[2] == pytest.approx(sum(_effect(g) for g in ("template", "shots", "tokens")),
                                       abs=1e-12)
    sh = t.filter(pl.col("kind") == "shapley")
    assert not sh.get_column("per_factor").any()
    assert sh.get_column("factor").to_list() == ["+".join(DIFFERING), "scoring", "averaging"]
    prompt_total = sum(_effect(g) for g in DIFFERING)
    assert sh.get_column("contribution")[0] == pytest.approx(prompt_total, abs=1e-12)


def test_variant_definitions_are_the_walks_intermediate_flavors():
    walk = at.variant_definitions([(A, B)], order=at.FACTORS, mode="walk")
    assert len(walk) == len(DIFFERING) - 1
    got = [at.levels(d) for d in walk.values()]
    a, b = (at.levels(fl.get_flavor(f).spec) for f in ("harness_e47e01b", "original"))
    for k, lv in enumerate(got, start=1):
        assert {g for g in at.PROMPT_FACTORS if lv[g] == b[g] != a[g]} == set(DIFFERING[:k])
    # each is a valid flavor: it renders prompts (original's header, harness's template ...)
    name, defn = next(iter(walk.items()))
    flav = fl.Flavor(name, defn)
    assert flav.header("anatomy").startswith("The following are multiple choice questions")
    assert flav.spec["example"] == fl.get_flavor("harness_e47e01b").spec["example"]
    exact = at.variant_definitions([(A, B)], mode="shapley")
    assert len(exact) == 2 ** len(DIFFERING) - 2
    assert at.variant_definitions([(A, B)], mode="none") == {}
    both = at.variant_definitions(at.DEFAULT_PAIRS)  # default order: shots first
    assert len(both) == 6 and all(n.startswith("attr_") for n in both)
    shots = {f: fl.get_flavor(f).spec["shots"] for f in ("original", "helm")}
    assert all(d["shots"] in shots.values() for d in both.values())
    with pytest.raises(ValueError, match="unknown implementation 'hlem'"):
        at.variant_definitions([(A, "hlem")])


def test_pairs_a_run_cannot_make_are_left_out_with_a_line():
    """A run that narrows `flavors` keeps the pairs it can attribute and names the others;
    a misspelt implementation is still an error."""
    kept, skipped = at.runnable_pairs(at.DEFAULT_PAIRS, ["harness_e47e01b", "helm"])
    assert kept == [["harness (acc)", "helm"]]
    assert skipped == ["attribution: pair harness (acc) / original left out: flavor(s) "
                       "['original'] not in this run's flavors"]
    assert at.runnable_pairs(at.DEFAULT_PAIRS, ["original"])[0] == []
    with pytest.raises(ValueError, match="unknown implementation 'hlem'"):
        at.runnable_pairs([("helm", "hlem")], ["helm"])
    with pytest.raises(ValueError, match=r"each entry is \[a, b\] or \[a, b, mode\]"):
        at.runnable_pairs([("helm",)], ["helm"])
    with pytest.raises(ValueError, match="mode must be one of"):
        at.runnable_pairs([("helm", "original", "walks")], ["helm", "original"])


def test_a_pair_can_carry_its_own_variants_mode():
    """[a, b, mode] overrides attribution_variants for that pair only (the embedded default
    walks harness -> helm and moves harness -> original's prompt factors together)."""
    run = ["original", "helm", "harness_e47e01b", "harness_current"]
    helm_walk = at.variant_definitions([("harness (acc)", "helm")], mode="walk", known=run)
    orig_walk = at.variant_definitions([("harness (acc)", "original")], mode="walk", known=run)
    assert helm_walk and orig_walk and not set(helm_walk) & set(orig_walk)
    mixed = at.variant_definitions([("harness (acc)", "helm", "walk"),
                                    ("harness (acc)", "original")], mode="none", known=run)
    assert mixed == helm_walk
    assert at.variant_definitions([("harness (acc)", "helm", "none"),
                                   ("harness (acc)", "original")], mode="walk",
                                  known=run) == orig_walk
    kept, _ = at.runnable_pairs([("harness (acc)", "helm", "walk")], run)
    assert kept == [["harness (acc)", "helm", "walk"]]


def test_endpoints_are_the_published_scores():
    pred = predictions(synthetic_cache({"m1": 0.4, "m2": 1.6},
                                       subjects={"anatomy": 25, "astronomy": 9, "virology": 14}))
    t = at.attribution_table(pred, n_boot=100, seed=7)
    scores = compute(pred, seed=7, n_boot=100).scores
    pub = {(r["model"], r["implementation"]): r for r in scores.iter_rows(named=True)}
    for (m, a, b), g in t.filter(pl.col("kind") == "step").group_by(
            "model", "implementation_a", "implementation_b"):
        g = g.sort("step")
        first, last = g.row(0, named=True), g.row(-1, named=True)
        for r, impl in ((first, a), (last, b)):
            assert r["score"] == pytest.approx(pub[m, impl]["score"], abs=1e-12)
            # same seed, same questions: the same resamples as the report's CIs
            assert r["score_lo"] == pytest.approx(pub[m, impl]["score_lo"], abs=1e-12)
            assert r["score_hi"] == pytest.approx(pub[m, impl]["score_hi"], abs=1e-12)
        assert g.get_column("contribution").drop_nulls().sum() == pytest.approx(
            last["score"] - first["score"], abs=1e-12)
        sh = t.filter((pl.col("kind") == "shapley") & (pl.col("model") == m)
                      & (pl.col("implementation_a") == a) & (pl.col("implementation_b") == b))
        assert sh.get_column("contribution").sum() == pytest.approx(
            last["score"] - first["score"], abs=1e-12)
    assert set(t.get_column("implementation_b").unique()) == {"original", "helm"}


def test_cli_writes_csv_and_png_and_rejects_unknown_names(tmp_path, capsys):
    pred = predictions(synthetic_cache({"tiny/m": 1.0}, subjects={"anatomy": 12, "virology": 8}))
    path = tmp_path / "predictions.parquet"
    pred.write_parquet(path)
    assert cli.main(["attribution", "--predictions", str(path), "--out-dir", str(tmp_path),
                     "--samples", "50"]) == 0
    csv = pl.read_csv(tmp_path / "attribution_tiny-m.csv")
    assert set(csv.get_column("kind")) == {"step", "shapley"}
    assert (tmp_path / "attribution_tiny-m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = cli.main(["attribution", "--predictions", str(path), "--out-dir", str(tmp_path),
                   "--pairs", '[["harness (acc)", "hlem"]]'])
    assert rc == 2 and "unknown implementation 'hlem'" in capsys.readouterr().err
    rc = cli.main(["attribution", "--predictions", str(path), "--out-dir", str(tmp_path),
                   "--order", "header,scoring"])
    assert rc == 2 and "attribution order must name each factor once" in capsys.readouterr().err
