"""Forward passes: log-probs at the answer position and of every scored continuation.

`run_naive` follows the reference code literally (one full forward per continuation) and is
the ground truth. `run_fast` returns the same numbers with far less work:

1. consecutive requests whose contexts share a long token prefix (a subject's few-shot
   examples) run that prefix once; each request reuses its key/value cache;
2. each context's remaining suffix runs once, then all its continuations run as one
   right-padded batch on top of the context cache (causal attention needs no mask for
   right padding; the pad positions are never read);
3. the output head runs only at the positions whose log-probs are needed;
4. a request that needs left truncation, `len(context + cont) > max_length + 1`, takes the
   naive path.

Cache reuse in transformers 5: `DynamicLayer.update` never writes into its tensors, it
rebinds `keys`/`values` to a `torch.cat`, so a cache is reused by shallow-copying its layer
objects. A sliding-window layer (Gemma 3) keeps only the last `window - 1` keys but counts
every token in `cumulative_length`, which sets the positions and the mask offset: the copy
keeps that count (rebuilding a cache from its tensors would lose it and shift positions).
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .tokenize import Request

log = logging.getLogger(__name__)

TOPK = 10
MIN_SHARED_PREFIX = 32
PAD_ID = 0  # any valid id: right-padded positions are never read


@dataclass
class EngineResult:
    """What one request yields (see docs/ARCHITECTURE.md): the answer position, then every
    continuation in request order."""

    candidate_logprobs: list[float | None]  # at the answer position, one per letter id
    greedy_id: int  # argmax at the answer position (first index on ties)
    greedy_logprob: float
    topk_ids: list[int]
    topk_logprobs: list[float]
    token_logprobs: list[list[float]]  # per continuation, per token
    token_is_greedy: list[list[bool]]
    sums: list[float]  # per continuation; 0.0 for an empty one
    gen_ids: list[int] = field(default_factory=list)  # greedy generation (request.generate)


@dataclass
class EngineStats:
    """Work done by one engine call."""

    prompts: int = 0
    tokens: int = 0  # positions run through the transformer body, padding included
    pad_tokens: int = 0
    head_positions: int = 0  # positions the output head was computed at
    forwards: int = 0
    naive_fallbacks: int = 0
    groups: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _ids(tokens: Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    t = torch.tensor(tokens, dtype=torch.long, device=device)
    return t if t.dim() == 2 else t.unsqueeze(0)


def _answer(lp: torch.Tensor, letter_ids: Sequence[int | None]) -> dict[str, Any]:
    """Answer-position fields from a float32 log-prob vector over the vocabulary."""
    top = torch.topk(lp, min(TOPK, lp.numel()))
    greedy = int(torch.argmax(lp))
    return {
        "candidate_logprobs": [None if i is None else float(lp[i]) for i in letter_ids],
        "greedy_id": greedy,
        "greedy_logprob": float(lp[greedy]),
        "topk_ids": [int(i) for i in top.indices],
        "topk_logprobs": [float(v) for v in top.values],
    }


def _score(lp: torch.Tensor, cont: Sequence[int]) -> tuple[list[float], list[bool], float]:
    """Per-token log-probs, is-greedy flags and sum; row i of `lp` predicts `cont[i]`."""
    if not cont:
        return [], [], 0.0
    tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
    vals = lp.gather(1, tgt[:, None])[:, 0].tolist()
    greedy = (lp.argmax(dim=1) == tgt).tolist()
    return vals, greedy, float(sum(vals))


def _result(answer: dict[str, Any], scores: list[tuple[list[float], list[bool], float]],
            gen_ids: list[int] | None = None) -> EngineResult:
    return EngineResult(**answer, token_logprobs=[s[0] for s in scores],
                        token_is_greedy=[s[1] for s in scores], sums=[s[2] for s in scores],
                        gen_ids=list(gen_ids or []))


def _naive_one(model: Any, r: Request, letter_ids: Sequence[int | None],
               stats: EngineStats) -> EngineResult:
    dev = _device(model)
    ctx_in = r.context[-r.max_length:]
    logits = model(_ids(ctx_in, dev)).logits[0, -1].float()
    answer = _answer(torch.log_softmax(logits, dim=-1), letter_ids)
    stats.tokens += len(ctx_in)
    stats.head_positions += len(ctx_in)
    stats.forwards += 1
    gen = [answer["greedy_id"]] if r.generate > 0 else []
    while 0 < len(gen) < r.generate:  # greedy decoding, one full forward per token
        inp = (list(r.context) + gen)[-r.max_length:]
        gen.append(int(torch.argmax(model(_ids(inp, dev)).logits[0, -1].float())))
        stats.tokens += len(inp)
        stats.head_positions += len(inp)
        stats.forwards += 1
    scores = []
    for cont in r.continuations:
        if not cont:
            scores.append(([], [], 0.0))
            continue
        if len(cont) > r.max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length "
                             f"{r.max_length}")
        inp = (list(r.context) + list(cont))[-(r.max_length + 1):][:-1]
        out = model(_ids(inp, dev)).logits[0].float()
        lp = torch.log_softmax(out, dim=-1)[-len(cont):]
        scores.append(_score(lp, cont))
        stats.tokens += len(inp)
        stats.head_positions += len(inp)
        stats.forwards += 1
    return _result(answer, scores, gen)


def run_naive(model: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
              stats: EngineStats | None = None) -> list[EngineResult]:
    """Reference scoring: `model(ids).logits` over the full input, full-vocabulary float32
    log-softmax; the answer position comes from a context-only forward on
    `context[-max_length:]`, continuation j from `(context + cont_j)[-(max_length+1):][:-1]`."""
    stats = stats if stats is not None else EngineStats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = [_naive_one(model, r, letter_ids, stats) for r in requests]
    stats.prompts += len(requests)
    stats.seconds += time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- fast path

def _needs_truncation(r: Request) -> bool:
    longest = max((len(c) for c in r.continuations), default=0)
    return (len(r.context) + longest > r.max_length + 1 or len(r.context) > r.max_length
            or len(r.context) + max(r.generate - 1, 0) > r.max_length)


def _lcp(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_by_prefix(requests: Sequence[Request], min_prefix: int = MIN_SHARED_PREFIX
                    ) -> list[tuple[int, list[int]]]:
    """Runs of consecutive requests that share a token prefix: (prefix length, indices).
    The prefix is shorter than every member's context (each keeps a suffix to run); a
    request joins the run when it shares >= `min_prefix` tokens and at least half of the
    run's current prefix. Unshared requests form runs with prefix length 0."""
    groups: list[tuple[int, list[int]]] = []
    for i, r in enumerate(requests):
        if groups:
            plen, members = groups[-1]
            first = requests[members[0]].context
            cap = plen if len(members) > 1 else len(first) - 1
            shared = _lcp(first, r.context, min(cap, len(r.context) - 1))
            if shared >= min_prefix and 2 * shared >= (plen if len(members) > 1 else 0):
                groups[-1] = (shared, members + [i])
                continue
        groups.append((0, [i]))
    return [(p if len(m) > 1 else 0, m) for p, m in groups]


def _copy_cache(cache: Any, batch: int = 1) -> Any:
    """A reusable copy of a DynamicCache: new layer objects sharing the (never mutated)
    tensors, expanded to `batch` rows; counters such as `cumulative_length` are kept."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if batch != 1 and getattr(lay, "keys", None) is not None and lay.keys.numel():
            lay.keys = lay.keys.expand(batch, -1, -1, -1)
            lay.values = lay.values.expand(batch, -1, -1, -1)
        new.layers.append(lay)
    return new


def _is_oom(error: BaseException) -> bool:
    return (isinstance(error, MemoryError) or "out of memory" in str(error).lower()
            or type(error).__name__ == "OutOfMemoryError")


def _body(model: Any) -> Any:
    body = getattr(model, "model", None)
    return body if body is not None else model.get_decoder()


def _head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits from final hidden states: lm_head, then any final logit softcapping."""
    logits = model.get_output_embeddings()(hidden)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def check_head(model: Any, tokens: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
               atol: float = 1e-4) -> None:
    """Raise if `body + _head` does not reproduce `model(ids).logits` (e.g. an architecture
    that scales logits in a way `_head` does not know). Checked once per model object."""
    if getattr(model, "_mmlu_flavors_head_ok", False):
        return
    with torch.inference_mode():
        ids = _ids([t % model.config.get_text_config().vocab_size for t in tokens],
                   _device(model))
        ref = model(ids).logits.float()
        got = _head(model, _body(model)(input_ids=ids).last_hidden_state)
    if not torch.allclose(ref, got, atol=atol, rtol=1e-4):
        diff = float((ref - got).abs().max())
        raise RuntimeError(f"{type(model).__name__}: body + lm_head differs from the full "
                           f"forward by {diff:g}; run_fast does not support this head")
    model._mmlu_flavors_head_ok = True


class _Fast:
    """Runs requests group by group, reusing prefix and context key/value caches."""

    def __init__(self, model: Any, letter_ids: Sequence[int | None], batch_size: int,
                 stats: EngineStats):
        from transformers import DynamicCache

        self.model, self.body = model, _body(model)
        self.letter_ids, self.batch_size, self.stats = letter_ids, max(1, batch_size), stats
        self.dev = _device(model)
        self.new_cache = lambda: DynamicCache(config=model.config)
        # transformers >= 5.2x renamed `past_key_values` to `cache` (old name deprecated)
        params = inspect.signature(self.body.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def back_off(self, error: BaseException) -> None:
        """Halve the batch after an out-of-memory error; re-raise anything else."""
        if not _is_oom(error) or self.batch_size == 1:
            raise error
        self.batch_size //= 2
        self.stats.extra["batch_size_backoffs"] = self.stats.extra.get("batch_size_backoffs", 0) + 1
        log.warning("out of memory: continuation batch size reduced to %d", self.batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forward(self, ids: Sequence[Sequence[int]], cache: Any, pad: int = 0) -> torch.Tensor:
        """Run rows of ids on top of `cache` (updated in place); final hidden states."""
        out = self.body(input_ids=_ids(ids, self.dev), use_cache=True, **{self.cache_kw: cache})
        self.stats.tokens += len(ids) * len(ids[0])
        self.stats.pad_tokens += pad
        self.stats.forwards += 1
        return out.last_hidden_state

    def request(self, r: Request, prefix_len: int, prefix_cache: Any | None) -> EngineResult:
        cache = _copy_cache(prefix_cache) if prefix_cache is not None else self.new_cache()
        h_ctx = self.forward([r.context[prefix_len:]], cache)[0, -1:]
        rows = [j for j, c in enumerate(r.continuations) if len(c) > 1]
        hidden = [h_ctx]
        tails: dict[int, torch.Tensor] = {}
        start = 0
        while start < len(rows):
            chunk = rows[start:start + self.batch_size]
            width = max(len(r.continuations[j]) - 1 for j in chunk)
            ids = [r.continuations[j][:-1] + [PAD_ID] * (width - len(r.continuations[j]) + 1)
                   for j in chunk]
            pad = sum(width - len(r.continuations[j]) + 1 for j in chunk)
            try:
                h = self.forward(ids, _copy_cache(cache, len(chunk)), pad)
            except (RuntimeError, MemoryError) as e:
                self.back_off(e)
                continue
            for k, j in enumerate(chunk):
                tails[j] = h[k, :len(r.continuations[j]) - 1]
            start += len(chunk)
        hidden += [tails[j] for j in rows]
        lp = torch.log_softmax(_head(self.model, torch.cat(hidden)), dim=-1)
        self.stats.head_positions += lp.shape[0]
        answer = _answer(lp[0], self.letter_ids)
        scores, offset = [], 1
        for j, cont in enumerate(r.continuations):
            if len(cont) > 1:
                n = len(cont) - 1
                rows_lp = torch.cat([lp[:1], lp[offset:offset + n]])
                offset += n
            else:
                rows_lp = lp[:len(cont)]
            scores.append(_score(rows_lp, cont))
        return _result(answer, scores, self.generate(r, cache, answer["greedy_id"]))

    def generate(self, r: Request, cache: Any, first: int) -> list[int]:
        """Greedy decoding of `r.generate` tokens on a copy of the context cache."""
        if r.generate <= 0:
            return []
        gen, gcache = [first], None
        while len(gen) < r.generate:
            gcache = gcache if gcache is not None else _copy_cache(cache)
            h = self.forward([[gen[-1]]], gcache)[0, -1:]
            self.stats.head_positions += 1
            gen.append(int(torch.argmax(_head(self.model, h)[0].float())))
        return gen


def planned_tokens(requests: Sequence[Request], batch_size: int = 8,
                   min_prefix: int = MIN_SHARED_PREFIX) -> tuple[int, int]:
    """(tokens, naive fallbacks) that `run_fast` will run for these requests, without a
    model: padding included, no out-of-memory back-off. Used to size cluster jobs."""
    total = fallbacks = 0
    for prefix_len, members in group_by_prefix(requests, min_prefix):
        prefix_done = False
        for i in members:
            r = requests[i]
            if _needs_truncation(r):
                fallbacks += 1
                total += len(r.context[-r.max_length:])
                total += sum(len((list(r.context) + list(c))[-(r.max_length + 1):][:-1])
                             for c in r.continuations if c)
                total += sum(min(len(r.context) + i, r.max_length) for i in range(1, r.generate))
                continue
            if prefix_len and not prefix_done:
                total += prefix_len
                prefix_done = True
            total += len(r.context) - (prefix_len if prefix_done else 0)
            total += max(r.generate - 1, 0)
            rows = [len(c) - 1 for c in r.continuations if len(c) > 1]
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                total += len(chunk) * max(chunk)
    return total, fallbacks


def run_fast(model: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
             batch_size: int = 8, progress: bool = True, stats: EngineStats | None = None,
             min_prefix: int = MIN_SHARED_PREFIX) -> list[EngineResult]:
    """Same numbers as `run_naive` with prefix and context cache reuse, head only where
    needed; `batch_size` caps the rows of one continuation batch. Fills `stats`."""
    from tqdm.auto import tqdm

    stats = stats if stats is not None else EngineStats()
    if not requests:
        return []
    check_head(model)
    fast = _Fast(model, letter_ids, batch_size, stats)
    results: list[EngineResult | None] = [None] * len(requests)
    t0 = time.perf_counter()
    bar = tqdm(total=len(requests), unit="prompt", disable=not progress, desc="forward")
    with torch.inference_mode():
        for prefix_len, members in group_by_prefix(requests, min_prefix):
            stats.groups += 1
            prefix_cache = None
            for i in members:
                r = requests[i]
                if _needs_truncation(r):
                    stats.naive_fallbacks += 1
                    results[i] = _naive_one(model, r, letter_ids, stats)
                else:
                    if prefix_len and prefix_cache is None:
                        prefix_cache = fast.new_cache()
                        fast.forward([r.context[:prefix_len]], prefix_cache)
                    results[i] = fast.request(r, prefix_len if prefix_cache is not None else 0,
                                              prefix_cache)
                stats.prompts += 1
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(tok_s=f"{stats.tokens / max(elapsed, 1e-9):.0f}",
                                refresh=False)
    bar.close()
    stats.seconds += time.perf_counter() - t0
    return results  # type: ignore[return-value]
