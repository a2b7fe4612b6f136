"""run_fast must reproduce run_naive (the reference code's arithmetic) number for number."""

from __future__ import annotations

import math

import pytest
import torch
from conftest_models import BOS, mmlu_like_requests, tiny_gemma3, tiny_llama

from mmlu_flavors.engine import (EngineStats, batched_support, check_head, group_by_prefix,
                                 planned_forwards, planned_tokens, run_fast, run_naive)
from mmlu_flavors.tokenize import Request

TOL = 1e-4
LETTER_IDS = [10, 11, None, 13]


def assert_same(fast, naive, tol=TOL):
    assert len(fast) == len(naive)
    for n, (f, r) in enumerate(zip(fast, naive)):
        where = f"request {n}"
        for a, b in zip(f.candidate_logprobs, r.candidate_logprobs):
            assert (a is None) == (b is None), where
            if a is not None:
                assert abs(a - b) < tol, (where, a, b)
        assert abs(f.greedy_logprob - r.greedy_logprob) < tol, where
        if f.greedy_id != r.greedy_id:  # only a near tie may flip the argmax
            assert abs(r.topk_logprobs[0] - r.topk_logprobs[1]) < tol, where
        assert len(f.topk_ids) == len(r.topk_ids) == 10
        for k, (a, b) in enumerate(zip(f.topk_logprobs, r.topk_logprobs)):
            assert abs(a - b) < tol, (where, k)
            if f.topk_ids[k] != r.topk_ids[k]:
                near = [r.topk_logprobs[x] for x in (k - 1, k + 1) if 0 <= x < 10]
                assert any(abs(v - b) < tol for v in near), (where, k)
        assert len(f.sums) == len(r.sums) == 8
        for j in range(8):
            assert len(f.token_logprobs[j]) == len(r.token_logprobs[j]), (where, j)
            for a, b in zip(f.token_logprobs[j], r.token_logprobs[j]):
                assert abs(a - b) < tol, (where, j, a, b)
            assert f.token_is_greedy[j] == r.token_is_greedy[j], (where, j)
            assert abs(f.sums[j] - r.sums[j]) < tol * max(1, len(f.token_logprobs[j])), where


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model_and_requests(request):
    if request.param == "llama":  # SmolLM2-like: no BOS
        return tiny_llama(), mmlu_like_requests(seed=1)
    # Gemma-3-like: BOS, 16-token sliding window, contexts of 70-110 tokens
    return tiny_gemma3(), mmlu_like_requests(seed=2, bos=BOS)


# batched: default budget (a forward per group), a small one (padded batches of a few rows,
# prefix groups split over several forwards) and one below a row (one row per forward)
MODES = [("batched", None), ("batched", 120), ("batched", 8), ("per_question", None)]


@pytest.mark.parametrize("mode,budget", MODES)
def test_fast_equals_naive(model_and_requests, mode, budget):
    model, requests = model_and_requests
    naive = run_naive(model, requests, LETTER_IDS)
    stats = EngineStats()
    fast = run_fast(model, requests, LETTER_IDS, batch_size=3, progress=False, stats=stats,
                    mode=mode, max_batch_tokens=budget)
    assert_same(fast, naive)
    assert stats.extra["mode"] == mode
    assert len(stats.forward_tokens) == stats.forwards
    assert sum(stats.forward_tokens) == stats.tokens
    if mode == "batched" and budget is None:  # two groups' prefix + rows, then the pool
        assert stats.forwards == 5 and stats.groups == 3
    # the requests exercise every path
    assert stats.naive_fallbacks == 1
    assert sum(1 for p, m in group_by_prefix(requests) if p >= 32 and len(m) >= 3) == 2
    assert [] in requests[1].continuations and fast[1].sums[5] == 0.0
    assert fast[1].token_logprobs[5] == [] and fast[1].token_is_greedy[5] == []
    assert fast[0].candidate_logprobs[2] is None
    # sanity of the numbers themselves
    for res in fast:
        assert res.greedy_logprob == pytest.approx(res.topk_logprobs[0], abs=1e-6)
        assert res.topk_ids[0] == res.greedy_id
        assert all(v <= 0 for v in res.topk_logprobs)
        assert sum(math.exp(v) for v in res.topk_logprobs) <= 1.0 + 1e-5


def test_planned_tokens_match_what_run_fast_runs(model_and_requests):
    model, requests = model_and_requests
    for batch in (1, 3, 8):
        stats = EngineStats()
        run_fast(model, requests, LETTER_IDS, batch_size=batch, progress=False, stats=stats,
                 mode="per_question")
        assert planned_tokens(requests, batch, mode="per_question") == (
            stats.tokens, stats.naive_fallbacks)
        assert planned_forwards(requests, batch, mode="per_question") == stats.forward_tokens
    for budget in (8, 120, 400, None):
        stats = EngineStats()
        run_fast(model, requests, LETTER_IDS, progress=False, stats=stats,
                 max_batch_tokens=budget)
        assert planned_tokens(requests, max_batch_tokens=budget, device="cpu") == (
            stats.tokens, stats.naive_fallbacks), budget
        assert planned_forwards(requests, max_batch_tokens=budget, device="cpu") == \
            stats.forward_tokens


@pytest.mark.parametrize("mode", ["batched", "per_question"])
def test_fast_does_less_work(model_and_requests, mode):
    model, requests = model_and_requests
    s_naive, s_fast = EngineStats(), EngineStats()
    run_naive(model, requests, LETTER_IDS, stats=s_naive)
    run_fast(model, requests, LETTER_IDS, batch_size=8, progress=False, stats=s_fast,
             mode=mode)
    assert s_fast.tokens * 4 < s_naive.tokens
    assert s_fast.head_positions * 5 < s_naive.head_positions


def test_letter_ids_rule_and_greedy_flags(model_and_requests):
    """Letter log-probs are the answer-position log-probs, which also score each
    continuation's first token; a greedy continuation token is flagged."""
    model, requests = model_and_requests
    r = requests[0]
    greedy = run_naive(model, [r], LETTER_IDS)[0].greedy_id
    probe = Request(r.context, [[greedy], [10], [], [11, 12]] * 2, r.max_length)
    for res in (run_naive(model, [probe], LETTER_IDS),
                run_fast(model, [probe], LETTER_IDS, progress=False),
                run_fast(model, [probe], LETTER_IDS, progress=False, mode="per_question")):
        res = res[0]
        assert res.token_is_greedy[0] == [True]
        assert res.token_logprobs[0][0] == pytest.approx(res.greedy_logprob, abs=TOL)
        assert res.token_logprobs[1][0] == pytest.approx(res.candidate_logprobs[0], abs=TOL)
        assert res.token_logprobs[3][0] == pytest.approx(res.candidate_logprobs[1], abs=TOL)


def test_sliding_window_prefix_longer_than_window():
    """Prefix, suffix and continuations each cross the window edge; the cache copy must keep
    the sliding layers' cumulative length (positions and mask offset)."""
    model = tiny_gemma3(seed=5, sliding_window=8)
    reqs = mmlu_like_requests(seed=7, bos=BOS, prefix_len=33)
    naive = run_naive(model, reqs, LETTER_IDS)
    for mode in ("batched", "per_question"):
        assert_same(run_fast(model, reqs, LETTER_IDS, progress=False, mode=mode), naive)


def test_group_by_prefix():
    a = list(range(100, 150))
    reqs = [Request(a + [1, 2], [[3]], 99), Request(a + [4], [[3]], 99),
            Request(a[:40] + [7, 8], [[3]], 99), Request([9] * 60, [[3]], 99),
            Request(a, [[3]], 99)]
    groups = group_by_prefix(reqs)
    assert groups == [(40, [0, 1, 2]), (0, [3]), (0, [4])]
    # the prefix always leaves each member a suffix
    same = [Request(a, [[3]], 99), Request(a, [[4]], 99)]
    assert group_by_prefix(same) == [(49, [0, 1])]


def test_check_head_catches_unknown_scaling():
    model = tiny_llama()
    check_head(model)
    lm_head = model.lm_head
    model.lm_head = torch.nn.Sequential(lm_head)  # same module path, same numbers
    model._mmlu_flavors_head_ok = False
    check_head(model)

    orig_forward = model.forward

    def scaled_forward(*args, **kwargs):
        out = orig_forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = scaled_forward
    check_head(model)  # checked once per model object: no second forward
    model._mmlu_flavors_head_ok = False
    with pytest.raises(RuntimeError, match="differs"):
        check_head(model)


def test_batch_backs_off_on_out_of_memory(model_and_requests, monkeypatch):
    """A continuation batch that runs out of memory is retried at half the size; same numbers."""
    from mmlu_flavors import engine

    model, requests = model_and_requests
    naive = run_naive(model, requests, LETTER_IDS)
    real = engine._Fast.forward

    def forward(self, ids, cache, pad=0):
        if len(ids) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, ids, cache, pad)

    monkeypatch.setattr(engine._Fast, "forward", forward)
    stats = EngineStats()
    fast = run_fast(model, requests, LETTER_IDS, batch_size=8, progress=False, stats=stats,
                    mode="per_question")
    assert_same(fast, naive)
    assert stats.extra["batch_size_backoffs"] == 2  # 8 -> 4 -> 2

    def broken(self, ids, cache, pad=0):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(engine._Fast, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_fast(model, requests, LETTER_IDS, batch_size=8, progress=False,
                 mode="per_question")


def test_token_budget_halves_on_out_of_memory(model_and_requests, monkeypatch, caplog):
    """A batched forward over 100 query tokens 'runs out of memory': the budget halves
    until batches fit, the log says so, and the numbers stay exact."""
    from mmlu_flavors import engine

    model, requests = model_and_requests
    naive = run_naive(model, requests, LETTER_IDS)
    real = engine._Batched.forward

    def forward(self, bins, prefix_len, cache):
        width = max(sum(len(r.tokens) for r in b) for b in bins)
        if sum(map(len, bins)) > 1 and len(bins) * width > 100:  # several questions' rows
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, bins, prefix_len, cache)

    monkeypatch.setattr(engine._Batched, "forward", forward)
    stats = EngineStats()
    with caplog.at_level("WARNING", logger="mmlu_flavors.engine"):
        fast = run_fast(model, requests, LETTER_IDS, progress=False, stats=stats,
                        max_batch_tokens=1600)
    assert_same(fast, naive)
    assert stats.extra["budget_backoffs"] >= 2
    assert "out of memory: max_batch_tokens reduced to 800" in caplog.text
    assert max(stats.forward_tokens[1:]) <= 1600  # the prefix forward is not batched

    def broken(self, bins, prefix_len, cache):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(engine._Batched, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_fast(model, requests, LETTER_IDS, progress=False)


def test_guard_falls_back_when_masks_are_not_honoured(caplog):
    """An architecture that ignores custom 4-D masks (here: a body that drops them) is
    caught by the probe: run_fast logs it, runs one question at a time, stays exact."""
    import functools

    model = tiny_gemma3(seed=3, sliding_window=8)
    requests = mmlu_like_requests(seed=4, bos=BOS, prefix_len=20)
    naive = run_naive(model, requests, LETTER_IDS)
    real = model.model.forward

    @functools.wraps(real)
    def drops_custom_masks(*args, attention_mask=None, **kwargs):
        if isinstance(attention_mask, dict) or getattr(attention_mask, "ndim", 2) == 4:
            attention_mask = None
        return real(*args, attention_mask=attention_mask, **kwargs)

    model.model.forward = drops_custom_masks
    stats = EngineStats()
    with caplog.at_level("WARNING", logger="mmlu_flavors.engine"):
        fast = run_fast(model, requests, LETTER_IDS, progress=False, stats=stats)
    assert "batched engine unavailable (probe: batched differs" in caplog.text
    assert stats.extra["mode"] == "per_question"
    assert_same(fast, naive)
    # the same model with its masks honoured passes the guard
    model.model.forward = real
    model._mmlu_flavors_batched = None
    assert batched_support(model) is None


def test_guard_static_reasons():
    model = tiny_llama()
    assert batched_support(model) is None
    other = tiny_llama()
    other.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in batched_support(other)


def test_pack_spreads_rows_evenly_over_bins(monkeypatch):
    """Rows pack flat into bins PACK_WIDTH wide (the budget when smaller), budget // width
    bins a forward; of the bin counts tried, the one that runs the fewest tokens (bins x
    fullest bin per forward) wins. Rows longer than a bin run one to a bin, apart."""
    from mmlu_flavors import engine
    from mmlu_flavors.engine import _pack

    def cost(sizes, fwds):
        return sum(len(f) * max(sum(sizes[i] for i in b) for b in f) for f in fwds)

    sizes = [10, 6, 4, 3, 3, 2]
    assert _pack(sizes, 1000) == [[[0, 1, 2, 3, 4, 5]]]  # one bin of 28 <= 512
    assert _pack(sizes, 28) == [[[0, 1, 2, 3, 4, 5]]]  # 28 in a bin of the budget's width
    # width 10 (the longest row; budget 5): one bin a forward, as wide as its own fill
    assert cost(sizes, _pack(sizes, 5)) == 28 and all(len(f) == 1 for f in _pack(sizes, 5))
    monkeypatch.setattr(engine, "PACK_WIDTH", 12)
    even = [4, 4, 4, 4, 3]
    # first-fit would give [4, 4, 4], [4, 3] (2 x 12); two even bins [4, 4, 3], [4, 4] run
    # 2 x 11; three bins [4, 4], [4, 3] then [4] run 2 x 8 + 4 = 20, the fewest
    got = _pack(even, 24)
    assert cost(even, got) == 20 and [len(f) for f in got] == [2, 1]
    for sizes, budget in [([10] * 12, 100), ([7, 5, 5, 3, 2, 2, 1], 16), ([12, 1, 1], 24),
                          ([30, 29, 2], 40)]:
        got = _pack(sizes, budget)
        assert sorted(i for f in got for b in f for i in b) == list(range(len(sizes)))
        width = max(max(sizes), min(budget, engine.PACK_WIDTH))
        assert all(sum(sizes[i] for i in b) <= width for f in got for b in f)
        assert all(len(f) * width <= max(budget, width) for f in got)
    # 12 rows of 10 at 100 a forward: as few forwards as any packing (2), evenly filled
    assert cost([10] * 12, _pack([10] * 12, 100)) == 120
    # a row longer than a bin runs in a forward of its own width and leaves the short rows'
    # bins at PACK_WIDTH: 30 + 2 x 8 tokens, not 2 bins x 30 (the long row's width for all)
    mixed = [4, 30, 4, 4, 4]
    got = _pack(mixed, 120)
    assert got[0] == [[1]] and cost(mixed, got) == 46
    # long rows go longest first, budget // (the forward's longest) to a forward
    assert _pack([13, 20, 14, 25, 1], 50) == [[[3], [1]], [[2], [0]], [[4]]]


def test_trie_rows_share_starts_and_stay_exact():
    """Questions whose contexts share a start beyond the group prefix, a context that is
    the start of another, a duplicate question and continuations that share their first
    tokens: every shared node runs once (the planned tokens are the prefix-tree minimum of
    the model inputs here), and every number equals the naive path's, on both models and
    at budgets that split the rows over several forwards."""
    import random

    from conftest_models import VOCAB

    from mmlu_flavors.engine import planned_tokens

    rng = random.Random(7)
    toks = lambda n: [rng.randrange(3, VOCAB) for _ in range(n)]  # noqa: E731
    letters = [[10], [11], [12], [13]]

    def requests(head):
        prefix, stem = head + toks(40), toks(6)
        texts = toks(3)
        conts = letters + [texts + toks(2), texts + toks(4), toks(5), texts[:1]]
        a = Request(prefix + stem + toks(9), conts, 1000)
        b = Request(prefix + stem + toks(12), letters + [toks(4), toks(2), toks(3), toks(1)],
                    1000)
        c = Request(a.context + toks(5), conts, 1000)  # a's context is c's start
        d = Request(list(prefix) + toks(20), letters + [toks(2)] * 4, 1000)
        return [b, a, d, c, Request(list(a.context), conts, 1000)]  # the last: a duplicate

    def minimum(reqs):
        nodes = {tuple(r.context[:k]) for r in reqs for k in range(1, len(r.context) + 1)}
        nodes |= {tuple(r.context + c[:k]) for r in reqs for c in r.continuations
                  for k in range(1, len(c))}
        return len(nodes)

    for model, head in ((tiny_llama(), []), (tiny_gemma3(), [BOS])):
        reqs = requests(head)
        naive = run_naive(model, reqs, LETTER_IDS)
        for budget in (None, 60, 8):
            stats = EngineStats()
            fast = run_fast(model, reqs, LETTER_IDS, progress=False, stats=stats,
                            max_batch_tokens=budget)
            for f, n in zip(fast, naive):
                assert_same([f], [n])
            assert planned_tokens(reqs, max_batch_tokens=budget, device="cpu")[0] == stats.tokens
        stats = EngineStats()
        run_fast(model, reqs, LETTER_IDS, progress=False, stats=stats, max_batch_tokens=4096)
        # the duplicate's own continuation tails run again; everything else once
        dup = len({tuple(c[:k]) for c in reqs[-1].continuations for k in range(1, len(c))})
        assert stats.tokens - stats.pad_tokens == minimum(reqs) + dup


def test_greedy_generation_equals_hf_generate(model_and_requests):
    """`Request.generate` (lighteval_mmlu's 5 greedy tokens): fast (context cache reused,
    sliding window included) == naive == transformers' own greedy `generate`; the planned
    token count still matches what run_fast runs."""
    from dataclasses import replace

    from mmlu_flavors.engine import planned_tokens

    model, requests = model_and_requests
    # request 5 needs left truncation: the naive path generates there
    reqs = [replace(r, generate=5) for r in requests[:4]] + [requests[4],
                                                              replace(requests[5], generate=5)]
    naive = run_naive(model, reqs, LETTER_IDS)
    stats = EngineStats()
    fast = run_fast(model, reqs, LETTER_IDS, batch_size=3, progress=False, stats=stats)
    assert planned_tokens(reqs, 3) == (stats.tokens, stats.naive_fallbacks)
    assert fast[4].gen_ids == naive[4].gen_ids == []
    assert stats.naive_fallbacks == 1 and fast[5].gen_ids == naive[5].gen_ids
    assert len(fast[5].gen_ids) == 5
    for f, n, r in zip(fast[:4], naive, reqs):
        ids = torch.tensor([r.context[-r.max_length:]])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                            min_new_tokens=5, do_sample=False, pad_token_id=0)
        assert n.gen_ids == hf[0, ids.shape[1]:].tolist()
        assert f.gen_ids == n.gen_ids and f.gen_ids[0] == f.greedy_id
