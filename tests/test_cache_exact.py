"""The cache holds exactly what the reference procedures compute, on real MMLU prompts.

Tiny random models of two architectures with small real tokenizers: a Llama with a byte-level
BPE tokenizer (no BOS, like SmolLM2) and a Gemma 3 text model with sliding-window layers and a
SentencePiece-style tokenizer that adds BOS. Every flavor's requests are built by the token
rules, then the fast engine is compared with the literal one-forward-per-request computation.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from conftest_models import tiny_gemma3, tiny_llama
from mmlu_flavors import engine
from mmlu_flavors.models import LoadedModel
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import letter_ids, tokenize_row
from tiny_tokenizers import bytelevel_no_bos, sentencepiece_bos

SUBJECTS = ["abstract_algebra", "us_foreign_policy"]
FLAVORS = ["original", "helm", "harness_e47e01b", "harness_current"]
TOL = 1e-4


@pytest.fixture(scope="module", params=["llama-bytelevel", "gemma3-sentencepiece-bos"])
def loaded(request, questions) -> LoadedModel:
    if request.param.startswith("llama"):
        tok = bytelevel_no_bos(questions)
        model = tiny_llama(seed=1, vocab=len(tok))
    else:
        tok = sentencepiece_bos(questions)
        model = tiny_gemma3(seed=2, sliding_window=64, vocab=len(tok))
    return LoadedModel(model=model, tokenizer=tok, name=request.param, dtype="float32",
                       device="cpu", max_length=model.config.max_position_embeddings,
                       identity={"source": "test", "name": request.param})


@pytest.fixture(scope="module")
def prompts(questions) -> pl.DataFrame:
    return pl.concat([build_prompts(questions, f, subjects=SUBJECTS, questions_per_subject=3)
                      for f in FLAVORS])


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, abs_tol=TOL)


def _not_tied(values: list[float], i: int) -> bool:
    return all(abs(values[i] - v) > TOL for j, v in enumerate(values) if j != i)


_NAIVE: dict = {}

# (engine mode, max_batch_tokens, max_length): "tight" cuts max_length to 600 so that some
# harness requests need left truncation and others do not, and the budget to two such rows
VARIANTS = {"batched": ("batched", None, None), "batched-tight": ("batched", 1300, 600),
            "per_question": ("per_question", None, None)}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("flavor", FLAVORS)
def test_fast_equals_naive_on_real_prompts(loaded, prompts, flavor, variant) -> None:
    mode, budget, max_length = VARIANTS[variant]
    max_length = max_length or loaded.max_length
    rows = prompts.filter(pl.col("flavor") == flavor).to_dicts()
    toks = [tokenize_row(r, loaded.tokenizer, max_length) for r in rows]
    reqs = [t.request for t in toks]
    letters = letter_ids(loaded.tokenizer)
    stats = engine.EngineStats()
    fast = engine.run_fast(loaded.model, reqs, letters, batch_size=4, progress=False,
                           stats=stats, mode=mode, max_batch_tokens=budget)
    key = (loaded.name, flavor, max_length)
    if key not in _NAIVE:
        _NAIVE[key] = engine.run_naive(loaded.model, reqs, letters)
    naive = _NAIVE[key]
    assert stats.extra["mode"] == mode
    if flavor in ("original", "helm", "harness_current"):
        assert stats.groups < len(reqs)  # a subject's questions shared their few-shot prefix
    if variant == "batched-tight" and flavor.startswith("harness"):
        assert 0 < stats.naive_fallbacks < len(reqs)  # truncated and untruncated, batched
    if mode == "batched" and budget is None:
        # many questions per forward, packed flat: little padding
        assert stats.forwards < len(reqs) and stats.pad_tokens <= stats.tokens // 10
    if budget is not None:
        assert max(stats.forward_tokens) <= budget
    for f, n in zip(fast, naive):
        assert all(_close(a, b) for a, b in zip(f.candidate_logprobs, n.candidate_logprobs))
        assert _close(f.greedy_logprob, n.greedy_logprob)
        assert f.greedy_id == n.greedy_id or abs(f.greedy_logprob - n.greedy_logprob) < TOL
        assert len(f.token_logprobs) == 8
        for fl, nl in zip(f.token_logprobs, n.token_logprobs):
            assert len(fl) == len(nl) and all(_close(a, b) for a, b in zip(fl, nl))
        assert all(_close(a, b) for a, b in zip(f.sums, n.sums))
        for group in (slice(0, 4), slice(4, 8)):
            s = n.sums[group]
            best = max(range(4), key=lambda i: (s[i], -i))
            if _not_tied(s, best):
                assert max(range(4), key=lambda i: (f.sums[group][i], -i)) == best
        letters_n = n.candidate_logprobs
        best = max(range(4), key=lambda i: (letters_n[i], -i))
        if _not_tied(letters_n, best):
            assert max(range(4), key=lambda i: (f.candidate_logprobs[i], -i)) == best


def test_gemma_contexts_start_with_bos_and_llama_ones_do_not(loaded, prompts) -> None:
    tok = loaded.tokenizer
    bos = tok.bos_token_id
    for flavor in FLAVORS:
        row = prompts.filter(pl.col("flavor") == flavor).row(0, named=True)
        ctx = tokenize_row(row, tok, loaded.max_length).request.context
        expect_bos = tok.bos_token == "<bos>" and flavor != "harness_e47e01b"
        assert (ctx[0] == bos) == expect_bos, flavor
