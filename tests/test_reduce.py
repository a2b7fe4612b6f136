"""Scorers on hand-made cache rows whose right answer is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from synthetic_cache import CACHE_SCHEMA, cache_row, make_cache, synthetic_cache, write_shards

from mmlu_flavors.reduce import (
    DIAGONAL, PREDICTION_SCHEMA, SCORERS, predictions, predictions_from_shards,
)


def _pred(rows, scorer):
    p = predictions(make_cache(rows)).filter(pl.col("scorer") == scorer).sort("index")
    return p.get_column("pred").to_list(), p.get_column("correct").to_list()


def test_schema_and_order():
    cache = synthetic_cache(("m2", "m1"), subjects={"anatomy": 3, "abstract_algebra": 2})
    p = predictions(cache.sample(fraction=1.0, shuffle=True, seed=1))
    assert p.schema == pl.Schema(PREDICTION_SCHEMA)
    assert p.columns == ["model", "prompt", "scorer", "subject", "index", "pred", "gold", "correct"]
    assert p.height == cache.height * len(SCORERS)
    assert p.equals(p.sort("model", "prompt", "scorer", "subject", "index"))
    assert set(p.get_column("prompt").unique()) == set(DIAGONAL)
    # deterministic regardless of input order
    assert p.equals(predictions(cache))


def test_cache_helper_has_exact_schema():
    assert make_cache([cache_row()]).schema == pl.Schema(CACHE_SCHEMA)


def test_letter_argmax_ties_first_wins():
    rows = [cache_row(index=0, gold=2, letter_logprobs=[-1.0, -0.5, -0.5, -2.0]),
            cache_row(index=1, gold=1, letter_logprobs=[-0.5, -0.5, -0.5, -0.5]),
            cache_row(index=2, gold=3, letter_logprobs=[-4.0, -3.0, -2.0, -1.0])]
    assert _pred(rows, "letter_argmax") == ([1, 0, 3], [False, False, True])


def test_letter_argmax_missing_letter_token_is_minus_inf():
    rows = [cache_row(index=0, gold=1, letter_logprobs=[None, -5.0, -6.0, -7.0]),
            cache_row(index=1, gold=0, letter_logprobs=[None, None, None, -30.0]),
            cache_row(index=2, gold=0, letter_logprobs=[None, None, None, None])]
    assert _pred(rows, "letter_argmax") == ([1, 3, None], [True, False, False])


@pytest.mark.parametrize("text, pred", [
    (" B", 1), ("B", 1), ("B\n", 1), ("\tD ", 3), ("\x1fC", 2),  # Python's str.strip set
    (" a", None), ("<|im_end|>", None), ("(", None), ("", None), (" AB", None),
    (" The", None), (None, None), ("A.", None),
])
def test_greedy_token_strip(text, pred):
    rows = [cache_row(gold=1, greedy_text=text)]
    assert _pred(rows, "greedy_token") == ([pred], [pred == 1])


def test_greedy_token_duplicate_choice_texts_count_as_correct():
    choices = ["yes", "no", "yes", "maybe"]
    rows = [cache_row(index=0, gold=0, choices=choices, greedy_text=" C",
                      letter_logprobs=[-2.0, -3.0, -1.0, -4.0]),
            cache_row(index=1, gold=0, choices=choices, greedy_text=" B")]
    assert _pred(rows, "greedy_token") == ([2, 1], [True, False])
    # letter_argmax compares indices, not texts
    assert _pred(rows, "letter_argmax")[1] == [False, True]


def test_loglik_acc_and_letter():
    rows = [cache_row(index=0, gold=1, text_cont_sum=[-3.0, -1.0, -1.0, -4.0],
                      letter_cont_sum=[-9.0, -8.0, -1.0, -1.0]),
            cache_row(index=1, gold=3, text_cont_sum=[-3.0, -2.0, -5.0, -0.5],
                      letter_cont_sum=[-0.1, -8.0, -1.0, -1.0])]
    assert _pred(rows, "loglik_acc") == ([1, 3], [True, True])
    assert _pred(rows, "loglik_letter") == ([2, 0], [False, False])


def _harness_acc_norm(sums, choices):
    # lm-evaluation-harness e47e01b, verbatim expression
    return int(np.argmax(np.array(sums) / np.array([float(len(c)) for c in choices])))


def test_loglik_acc_norm_numpy_semantics():
    cases = [
        # (sums, choices, expected)
        ([-10.0, -6.0, -9.0, -8.0], ["x" * 10, "abc", "x" * 9, "ab"], 0),   # tie -1,-2,-1,-4
        ([-4.0, 0.0, -1.0, -2.0], ["abcd", "", "a", "b"], 1),              # 0/0 = nan wins
        ([-4.0, -2.0, -1.0, -2.0], ["abcd", "", "a", "b"], 0),             # -2/0 = -inf
        ([-4.0, 0.0, 0.0, -2.0], ["abcd", "", "", "b"], 1),                # first nan
        ([-1.0, -3.0, -0.5, -9.0], ["a", "abc", "ab", "abc"], 2),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        for sums, ch, exp in cases:
            assert _harness_acc_norm(sums, ch) == exp
    rows = [cache_row(index=k, gold=0, text_cont_sum=s, choices=c)
            for k, (s, c, _) in enumerate(cases)]
    preds, correct = _pred(rows, "loglik_acc_norm")
    assert preds == [e for *_, e in cases]
    assert correct == [e == 0 for *_, e in cases]


def test_loglik_acc_norm_matches_harness_on_random_rows():
    rng = np.random.default_rng(7)
    rows, expected = [], []
    for k in range(300):
        lens = rng.integers(0, 4, size=4)
        choices = ["y" * int(n) for n in lens]
        sums = [0.0 if n == 0 and rng.random() < 0.5 else float(-rng.integers(1, 6))
                for n in lens]
        with np.errstate(divide="ignore", invalid="ignore"):
            expected.append(_harness_acc_norm(sums, choices))
        rows.append(cache_row(index=k, text_cont_sum=sums, choices=choices))
    assert _pred(rows, "loglik_acc_norm")[0] == expected


def test_empty_continuation_sum_zero():
    # an empty continuation is stored with sum 0.0 and no tokens; plain acc just takes it as 0
    row = cache_row(gold=2, text_cont_sum=[-1.0, -2.0, 0.0, -3.0])
    assert make_cache([row]).get_column("text_cont_ids").to_list()[0][2] == []
    assert _pred([row], "loglik_acc") == ([2], [True])


def test_duplicate_questions_refused():
    r = cache_row()
    with pytest.raises(ValueError, match="duplicate"):
        predictions(make_cache([r, r]))


def test_shards_identity_checked(tmp_path):
    cache = synthetic_cache(("m1", "m2"), subjects={"anatomy": 3})
    paths = write_shards(cache, tmp_path / "ok")
    p = predictions_from_shards(paths)
    assert p.equals(predictions(cache))

    bad = write_shards(cache, tmp_path / "bad",
                       meta_overrides={("m1", "helm"): {"dtype": "bfloat16"}})
    with pytest.raises(ValueError) as e:
        predictions_from_shards(bad)
    msg = str(e.value)
    assert "m1" in msg and "helm" in msg and "original" in msg  # names both files
    # another model's shards may differ from m1's
    other = write_shards(cache, tmp_path / "other",
                         meta_overrides={("m2", f): {"dtype": "bfloat16"} for f in DIAGONAL})
    assert predictions_from_shards(other).height == p.height


def test_shards_with_nested_identity_layout(tmp_path):
    """cache.py writes {"identity": {..., "flavor": f}, "subjects": [...], "rows": n}."""
    from mmlu_flavors.io import atomic_write_parquet, read_meta

    cache = synthetic_cache(("m1",), subjects={"anatomy": 3})
    paths = []
    for (f,), part in cache.group_by(["flavor"], maintain_order=True):
        ident = {"model": "m1", "tokenizer": "t", "dtype": "float32", "flavor": f}
        p = tmp_path / f"{f}.parquet"
        atomic_write_parquet(part, p, {"identity": ident, "subjects": ["anatomy"],
                                       "rows": part.height})
        paths.append(p)
    assert predictions_from_shards(paths).height == cache.height * len(SCORERS)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = []
    for p in paths:
        meta = read_meta(p)
        if meta["identity"]["flavor"] == "helm":
            meta["identity"]["dtype"] = "bfloat16"
        q = bad_dir / p.name
        atomic_write_parquet(pl.read_parquet(p), q, meta)
        bad.append(q)
    with pytest.raises(ValueError, match="helm.parquet"):
        predictions_from_shards(bad)
