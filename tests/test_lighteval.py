"""lighteval_mmlu / lighteval_mcf against rows produced by lighteval 0.13 itself.

tests/golden/lighteval_prompts.jsonl: prompts, shot rows, scored strings and gold of 48 test
questions (4 subjects x 3 rows x {mmlu, mcf} x {0, 5} shots; college_mathematics' 5-shot
prompts carry dev row 2's "\r\n"), written by the package (bench/lighteval_local.py
--prompts-only). tests/golden/lighteval_<model>.jsonl: per embedded model, the token ids
lighteval fed, its log-likelihoods (mcf) and its greedy generations (mmlu) for 4 questions per
task and shot count. tests/golden/README.md says how both were made. The full agreement
(every question's prompt, >= 100 questions' predictions per model) is bench/compare_lighteval.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import embedded_models

from mmlu_flavors.flavors import get_flavor, lighteval_balanced_sample, Q
from mmlu_flavors.prompts import build_prompts

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden")
FLAVOR_OF_TASK = {"mmlu": "lighteval_mmlu", "mcf": "lighteval_mcf"}
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
LOGLIK_TOL = 1e-3  # float32 CPU, batched (theirs) vs cached-prefix (ours) forwards
TIE = 1e-4


def _rows(name: str) -> list[dict]:
    path = GOLDEN / name
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _ours(questions: pl.DataFrame, task: str, k: int, subjects: list[str]) -> dict:
    df = build_prompts(questions, FLAVOR_OF_TASK[task], num_fewshot=k, subjects=subjects)
    return {(r["subject"], r["index"]): r for r in df.iter_rows(named=True)}


def test_prompts_byte_equal_to_lighteval(questions):
    golden = _rows("lighteval_prompts.jsonl")
    assert {(r["task"], r["num_fewshot"]) for r in golden} == {
        ("mmlu", 0), ("mmlu", 5), ("mcf", 0), ("mcf", 5)}
    assert any("\r\n" in r["prompt"] for r in golden)  # college_mathematics dev row 2
    for task, k in {(r["task"], r["num_fewshot"]) for r in golden}:
        group = [r for r in golden if (r["task"], r["num_fewshot"]) == (task, k)]
        ours = _ours(questions, task, k, sorted({r["subject"] for r in group}))
        for r in group:
            o = ours[(r["subject"], r["index"])]
            where = f"{task} {k}-shot {r['subject']}/{r['index']}"
            assert o["prompt"] == r["prompt"], where
            assert list(o["shot_rows"]) == r["fewshot_index"], where
            assert list(o["continuations"]) == r["choices"], where
            assert o["gold"] == r["gold"], where


def test_balanced_sampler_draws_k_plus_one_and_keeps_k():
    """lighteval draws k + 1 (a spare for the evaluated doc), HELM k: for k < pool size the
    kept shots are the first k of the k+1 draws, which differ from a k-draw only after k."""
    pool = [Q(f"q{i}", (f"a{i % 3}", "x", "y", "z"), 0, i) for i in range(9)]
    label = lambda q: q.choices[q.answer]  # noqa: E731
    five = lighteval_balanced_sample(pool, 5, label)
    assert len(five) == 5 and len(set(five)) == 5
    assert lighteval_balanced_sample(pool, 3, label) == lighteval_balanced_sample(pool, 8, label)[:3]
    assert lighteval_balanced_sample(pool, 0, label) == []
    # three labels of three rows each: the first three draws cover all three labels
    assert {pool[i].choices[0] for i in five[:3]} == {"a0", "a1", "a2"}


def test_flavor_definitions_say_what_they_reproduce():
    mmlu, mcf = get_flavor("lighteval_mmlu"), get_flavor("lighteval_mcf")
    assert mmlu.spec["reference"]["version"] == mcf.spec["reference"]["version"] == "0.13.0"
    assert mmlu.generate == 5 and mmlu.scorer == "greedy_em"
    assert mcf.generate == 0 and mcf.scorer == "loglik_letter"


# ------------------------------------------------------------------ slow: the real models

def _model_dir(slug: str, tmp_path_factory) -> Path:
    """data/models/<slug> when present, else the GGUF converted once per test session
    (tests/embedded_models.py; also tests/test_today_golden.py's)."""
    return embedded_models.converted(slug, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("slug", MODELS)
def test_model_rows_agree_with_lighteval(slug, questions, tmp_path_factory):
    from mmlu_flavors.cache import rows_from_results
    from mmlu_flavors.engine import run_fast
    from mmlu_flavors.models import load_model
    from mmlu_flavors.reduce import predictions
    from mmlu_flavors.tokenize import letter_ids, tokenize_row

    golden = _rows(f"lighteval_{slug}.jsonl")
    assert {(r["task"], r["num_fewshot"]) for r in golden} == {
        ("mmlu", 0), ("mmlu", 5), ("mcf", 0), ("mcf", 5)}
    lm = load_model({"source": "local", "path": str(_model_dir(slug, tmp_path_factory)),
                     "dtype": "float32", "device": "cpu"})
    letters = letter_ids(lm.tokenizer)
    for task, k in sorted({(r["task"], r["num_fewshot"]) for r in golden}):
        group = [r for r in golden if (r["task"], r["num_fewshot"]) == (task, k)]
        ours = _ours(questions, task, k, sorted({r["subject"] for r in group}))
        prompt_rows = [ours[(r["subject"], r["index"])] for r in group]
        tok = [tokenize_row(p, lm.tokenizer, lm.max_length) for p in prompt_rows]
        res = run_fast(lm.model, [t.request for t in tok], letters, progress=False)
        cache = rows_from_results(slug, prompt_rows, tok, res, letters, lm.tokenizer)
        scorer = "greedy_em" if task == "mmlu" else "loglik_letter"
        preds = predictions(cache, [scorer])["pred"].to_list()  # sorted like group (by key)
        for r, t, c, pred in zip(group, tok, cache.iter_rows(named=True), preds):
            where = f"{slug} {task} {k}-shot {r['subject']}/{r['index']}"
            assert c["prompt_sha256"] and t.prompt == r["prompt"], where
            assert t.request.context == r["input_tokens"], where
            if task == "mcf":
                assert t.request.continuations[:4] == r["output_tokens"], where
                diffs = [abs(a - b) for a, b in zip(c["letter_cont_sum"], r["logprobs"])]
                assert max(diffs) < LOGLIK_TOL, (where, diffs)
                theirs = max(range(4), key=lambda i: (r["logprobs"][i], -i))
                gap = sorted(r["logprobs"])[-1] - sorted(r["logprobs"])[-2]
                assert pred == theirs or gap < TIE, where
                assert (pred == r["gold"]) == bool(r["metrics"]["acc"]) or gap < TIE, where
            else:
                gen = r["output_tokens"][0]
                assert c["gen_ids"][:len(gen)] == gen, where
                text = r["text"][0].split("\n")[0].strip()
                theirs = "ABCD".index(text) if text in ("A", "B", "C", "D") else None
                assert pred == theirs, where
                assert (pred == r["gold"]) == bool(r["metrics"]["em"]), where
