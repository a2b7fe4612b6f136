"""Attribution: on a synthetic cache whose every factor has a known effect, the walk and the
Shapley shares recover each effect; the walk's endpoints are the published scores."""

from __future__ import annotations

from itertools import product

import numpy as np
import polars as pl
import pytest
from synthetic_cache import cache_row, make_cache, synthetic_cache

from mmlu_flavors import attribution as at
from mmlu_flavors import cli
from mmlu_flavors.reduce import predictions
from mmlu_flavors.stats import compute

A, B = "harness (acc)", "original"          # loglik_acc/macro  vs  letter_argmax/micro
SUBJECTS = {"anatomy": 40, "astronomy": 20}
# question groups: how many questions of each subject flip with each factor (proportional to
# subject size, so the micro and macro effects are equal), and the sign of the effect
GROUPS = {"header": (4, 2, +1), "template": (2, 1, -1), "shots": (6, 3, +1),
          "answer": (2, 1, +1), "tokens": (4, 2, -1), "scoring": (8, 4, +1)}
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


def _variants(prompt_factors: list[str]) -> dict[str, dict[str, str]]:
    """Every combination of the given prompt factors between harness_e47e01b and original;
    the endpoints keep the real flavor names."""
    a, b = at.FLAVOR_FACTORS["harness_e47e01b"], at.FLAVOR_FACTORS["original"]
    out = {}
    for bits in product((0, 1), repeat=len(prompt_factors)):
        chosen = {f for f, x in zip(prompt_factors, bits) if x}
        levels = {f: (b[f] if f in chosen else a[f]) for f in at.PROMPT_FACTORS}
        if not any(levels[f] != a[f] for f in at.PROMPT_FACTORS):
            name = "harness_e47e01b"
        elif all(levels[f] == b[f] for f in at.PROMPT_FACTORS):
            name = "original"
        else:
            name = "v_" + "".join(map(str, bits))
        out[name] = levels
    return out


def _cache(variants: dict[str, dict[str, str]]) -> pl.DataFrame:
    """letter_argmax / loglik_acc right exactly as the design says, for every variant."""
    b = at.FLAVOR_FACTORS["original"]
    rows = []
    for name, levels in variants.items():
        at_b = {f for f in at.PROMPT_FACTORS if levels[f] == b[f]}
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
    variants = _variants(list(at.PROMPT_FACTORS))
    assert len(variants) == 32
    pred = predictions(_cache(variants))
    t = at.attribute(pred, "m", A, B, variants, n_boot=200, seed=1)
    steps = t.filter(pl.col("kind") == "step").sort("step")
    assert steps.get_column("factor").to_list() == ["start", *at.FACTORS]
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
    assert s2.get_column("factor").to_list()[1:] == order
    assert dict(zip(order, s2.get_column("contribution").to_list()[1:]))["shots"] == \
        pytest.approx(_effect("shots"), abs=1e-12)


def test_missing_prompt_variants_group_the_prompt_factors():
    variants = _variants(["header", "shots"])  # only 4 combinations of two factors were run
    variants = {k: v for k, v in variants.items() if k != "v_10"}  # and one of them is missing
    pred = predictions(_cache({**variants, "original": at.FLAVOR_FACTORS["original"]}))
    t = at.attribute(pred, "m", A, B, variants | {"original": at.FLAVOR_FACTORS["original"]},
                     n_boot=50, seed=0)
    steps = t.filter(pl.col("kind") == "step").sort("step")
    # header alone has no variant (v_10 is missing) and no other partial change of the five
    # prompt factors in walk order has one either, so they change in one step
    factors = steps.get_column("factor").to_list()
    assert factors[0] == "start" and factors[-2:] == ["scoring", "averaging"]
    prompt_steps = factors[1:-2]
    assert "+".join(prompt_steps).split("+") == list(at.PROMPT_FACTORS)
    sh = t.filter(pl.col("kind") == "shapley")
    assert not sh.get_column("per_factor").any()
    assert sh.get_column("factor").to_list() == ["+".join(at.PROMPT_FACTORS), "scoring",
                                                 "averaging"]
    prompt_total = sum(_effect(g) for g in at.PROMPT_FACTORS)
    assert sh.get_column("contribution")[0] == pytest.approx(prompt_total, abs=1e-12)


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
