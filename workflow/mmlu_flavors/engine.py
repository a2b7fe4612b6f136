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

import numpy as np
import torch

from .request import Request

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
    forward_tokens: list[int] = field(default_factory=list)  # per forward call, padding incl.
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
    stats.forward_tokens.append(len(ctx_in))
    gen = [answer["greedy_id"]] if r.generate > 0 else []
    while 0 < len(gen) < r.generate:  # greedy decoding, one full forward per token
        inp = (list(r.context) + gen)[-r.max_length:]
        gen.append(int(torch.argmax(model(_ids(inp, dev)).logits[0, -1].float())))
        stats.tokens += len(inp)
        stats.head_positions += len(inp)
        stats.forwards += 1
        stats.forward_tokens.append(len(inp))
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
        stats.forward_tokens.append(len(inp))
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
    return r.needs_truncation()


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
        self.stats.forward_tokens.append(len(ids) * len(ids[0]))
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


# ------------------------------------------------- batched path (many questions per forward)

DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "mps": 4096, "cuda": 16384}
HEAD_ROWS = 256  # positions per output-head call (bounds the float32 vocabulary log-softmax)
# width of a packed batch row: wide enough that questions' trees pack with little padding,
# narrow enough that the (dense) attention over the block-diagonal mask stays cheap
PACK_WIDTH = 512
# questions merge into trie rows of at most PACK_WIDTH // TRIE_ROWS tokens: small enough to
# pack bins evenly, large enough that a row boundary rarely splits a shared start
TRIE_ROWS = 4
MODES = ("batched", "per_question")


def default_max_batch_tokens(device: str | torch.device) -> int:
    """Query tokens per forward (padding included) when the model entry sets none."""
    return DEFAULT_MAX_BATCH_TOKENS.get(torch.device(device).type, 2048)


class _Acc:
    """One request's answer and continuation scores, filled by the rows that compute them."""

    def __init__(self, r: Request, letter_ids: Sequence[int | None]):
        self.r, self.letter_ids = r, letter_ids
        self.answer: dict[str, Any] | None = None
        self.scores: list[Any] = [([], [], 0.0) if not c else None for c in r.continuations]

    def tree(self, lp: torch.Tensor) -> None:
        """Rows of `lp`: the answer position, then each continuation's tokens but its last
        (those of length > 1, in order)."""
        self.answer = _answer(lp[0], self.letter_ids)
        offset = 1
        for j, cont in enumerate(self.r.continuations):
            if len(cont) > 1:
                n = len(cont) - 1
                self.scores[j] = _score(torch.cat([lp[:1], lp[offset:offset + n]]), cont)
                offset += n
            elif cont:
                self.scores[j] = _score(lp[:1], cont)

    def set_answer(self, lp: torch.Tensor) -> None:
        self.answer = _answer(lp[0], self.letter_ids)

    def set_score(self, j: int) -> Any:
        def sink(lp: torch.Tensor) -> None:
            self.scores[j] = _score(lp, self.r.continuations[j])
        return sink

    def result(self) -> EngineResult:
        assert self.answer is not None and all(s is not None for s in self.scores)
        return _result(self.answer, self.scores)


@dataclass
class _Row:
    """One batch row: a forest of token nodes. `parent[i]` is the index in the row of token
    i's parent (-1: it follows the group's prefix, or starts at position 0), always < i; a
    token sees the prefix and its ancestors, itself included, and nothing else. A row holds
    one or more questions' trees merged as a trie (a shared start runs once), or one plain
    sequence. `outs`: positions whose log-probs a sink needs."""

    tokens: list[int]
    pos: list[int]
    parent: list[int]
    outs: list[tuple[list[int], Any]]

    def ancestors(self) -> np.ndarray:
        """(n, n) bool: entry [q, k] is True when token k is q or one of its ancestors."""
        n = len(self.tokens)
        anc = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                anc[i, :i] = anc[p, :i]
            anc[i, i] = True
        return anc


@dataclass
class _Group:
    prefix: list[int]  # empty: rows start at position 0 and need no cache
    rows: list[_Row]


def _tree_rows(requests: Sequence[Request], members: Sequence[int], prefix_len: int,
               accs: Sequence[_Acc], cap: int) -> list[_Row]:
    """The members' suffix trees (context after the prefix, then the trie of each
    continuation but its last token, from the context's last token), merged into tries: in
    the lexicographic order of the contexts, a question shares the nodes of the start it has
    in common with the previous one (the longest such start among all earlier ones), while
    the row stays within `cap` tokens (a question larger than `cap` gets a row of its own).
    Every node runs once; a position's log-probs depend only on its ancestors."""
    rows: list[_Row] = []
    row: _Row | None = None
    prev: list[int] = []  # node of each context position of the previous question in `row`
    prev_ctx: Sequence[int] = ()
    for i in sorted(members, key=lambda i: tuple(requests[i].context[prefix_len:])):
        r = requests[i]
        ctx = r.context[prefix_len:]
        branches = [tuple(c[:-1]) for c in r.continuations if len(c) > 1]
        shared = _lcp(prev_ctx, ctx, len(ctx)) if row is not None else 0
        cost = len(ctx) - shared + len({b[:k] for b in branches for k in range(1, len(b) + 1)})
        if row is None or len(row.tokens) + cost > cap:
            row, shared = _Row([], [], [], []), 0
            rows.append(row)
        nodes = prev[:shared]
        for k in range(shared, len(ctx)):
            row.parent.append(nodes[-1] if nodes else -1)
            nodes.append(len(row.tokens))
            row.tokens.append(ctx[k])
            row.pos.append(prefix_len + k)
        outs = [nodes[-1]]
        tails: dict[tuple[int, ...], int] = {}  # the continuations' own trie
        for b in branches:
            at = nodes[-1]
            for k in range(len(b)):
                node = tails.get(b[:k + 1])
                if node is None:
                    row.parent.append(at)
                    node = tails[b[:k + 1]] = len(row.tokens)
                    row.tokens.append(b[k])
                    row.pos.append(len(r.context) + k)
                outs.append(node)
                at = node
        row.outs.append((outs, accs[i].tree))
        prev, prev_ctx = nodes, ctx
    return rows


def _chain_rows(r: Request, acc: _Acc, rows: dict[tuple[int, ...], _Row]) -> None:
    """A truncated request exactly as `run_naive` runs it: the answer from
    `context[-max_length:]`, continuation j from `(context + cont_j)[-(max_length+1):][:-1]`,
    each a sequence of its own from position 0; identical sequences run once."""

    def add(seq: list[int], outs: list[int], sink: Any) -> None:
        row = rows.get(tuple(seq))
        if row is None:
            row = rows[tuple(seq)] = _Row(seq, list(range(len(seq))),
                                          list(range(-1, len(seq) - 1)), [])
        row.outs.append((outs, sink))

    ctx = list(r.context[-r.max_length:])
    add(ctx, [len(ctx) - 1], acc.set_answer)
    for j, cont in enumerate(r.continuations):
        if not cont:
            continue
        if len(cont) > r.max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length "
                             f"{r.max_length}")
        inp = (list(r.context) + list(cont))[-(r.max_length + 1):][:-1]
        add(inp, list(range(len(inp) - len(cont), len(inp))), acc.set_score(j))


def _plan(requests: Sequence[Request], accs: Sequence[_Acc], min_prefix: int,
          cap: int | None = None) -> list[_Group]:
    """Prefix groups (`group_by_prefix` over the requests in the lexicographic order of their
    contexts) of >= 2 untruncated questions run their rows on the shared prefix's cache; every other question (and each truncated request's sequences) joins one pool of
    rows that start at position 0. A group's questions merge into trie rows of at most
    `cap` tokens (`_tree_rows`; default `PACK_WIDTH`); rows are sorted longest first."""
    cap = PACK_WIDTH if cap is None else cap
    groups: list[_Group] = []
    pool: list[int] = []
    chains: dict[tuple[int, ...], _Row] = {}
    order = sorted(range(len(requests)), key=lambda i: tuple(requests[i].context))
    for prefix_len, sorted_members in group_by_prefix([requests[i] for i in order], min_prefix):
        members = [order[j] for j in sorted_members]
        tree = [i for i in members if not _needs_truncation(requests[i])]
        for i in members:
            if _needs_truncation(requests[i]):
                _chain_rows(requests[i], accs[i], chains)
        if prefix_len and len(tree) >= 2:
            groups.append(_Group(list(requests[tree[0]].context[:prefix_len]),
                                 _tree_rows(requests, tree, prefix_len, accs, cap)))
        else:
            pool += tree
    rows = _tree_rows(requests, pool, 0, accs, cap) + list(chains.values())
    if rows:
        groups.append(_Group([], rows))
    for g in groups:
        g.rows.sort(key=lambda row: -len(row.tokens))
    return groups


def _pack(sizes: Sequence[int], budget: int) -> list[list[list[int]]]:
    """Forwards, each a list of bins (batch rows), each a list of indices into `sizes` (the
    rows' token counts). Rows longer than a bin (`PACK_WIDTH`, the budget when smaller) run
    first, longest first, one to a bin and budget // (the forward's longest) to a forward, so
    one long row never widens the bins of the short ones; the short rows pack into bins
    (`_bins`)."""
    cap = min(budget, PACK_WIDTH)
    long = sorted((i for i in range(len(sizes)) if sizes[i] > cap), key=lambda i: (-sizes[i], i))
    short = [i for i in range(len(sizes)) if sizes[i] <= cap]
    out: list[list[list[int]]] = []
    at = 0
    while at < len(long):
        per = max(1, budget // sizes[long[at]])
        out.append([[i] for i in long[at:at + per]])
        at += per
    return out + [[[short[i] for i in b] for b in f]
                  for f in _bins([sizes[i] for i in short], budget, cap)]


def _bins(sizes: Sequence[int], budget: int, width: int) -> list[list[list[int]]]:
    """`_pack` for rows no longer than a bin: bins are `width` wide and a forward holds
    budget // width of them. For each bin count n from the
    fewest that can hold the rows to n + bins-per-forward, rows go longest first into the
    emptiest bin; bins, fullest first, fill forwards in turn. The n that runs the fewest
    tokens (bins x fullest bin of each forward) wins, then the fewest forwards."""
    if not sizes:
        return []
    per = max(1, budget // width)
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    least = -(-sum(sizes) // width)
    best: tuple[int, int, list[list[list[int]]]] | None = None
    for n in range(least, min(len(sizes), least + per) + 1):
        fill, bins = [0] * n, [[] for _ in range(n)]
        for i in order:
            j = min(range(n), key=fill.__getitem__)
            bins[j].append(i)
            fill[j] += sizes[i]
        if max(fill) > width:
            continue
        full = sorted(range(n), key=lambda j: -fill[j])
        fwds = [full[a:a + per] for a in range(0, n, per)]
        cost = sum(len(f) * fill[f[0]] for f in fwds)
        if best is None or (cost, len(fwds)) < best[:2]:
            best = (cost, len(fwds), [[sorted(bins[j]) for j in f] for f in fwds])
    if best is None:  # every row in a bin of its own always fits
        return [[[i] for i in order[a:a + per]] for a in range(0, len(order), per)]
    return best[2]


class _Batched:
    """Runs groups of rows: one forward per batch of rows, explicit position ids and a 4-D
    attention mask per attention kind (full, or sliding with its window)."""

    def __init__(self, model: Any, stats: EngineStats, budget: int):
        from transformers import DynamicCache

        self.model, self.body, self.stats, self.budget = model, _body(model), stats, budget
        self.dev = _device(model)
        self.new_cache = lambda: DynamicCache(config=model.config)
        params = inspect.signature(self.body.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        layers = self.new_cache().layers
        self.windows = [getattr(lay, "sliding_window", None) if getattr(lay, "is_sliding", False)
                        else None for lay in layers]
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
            else model.config
        self.layer_types = getattr(cfg, "layer_types", None)
        self.eager = getattr(cfg, "_attn_implementation", None) == "eager"
        self.dtype = next(model.parameters()).dtype

    def back_off(self, error: BaseException, rows: int) -> None:
        """Halve the token budget after an out-of-memory error; re-raise anything else (or
        when a single row already ran out of memory)."""
        if not _is_oom(error) or rows == 1:
            raise error
        self.budget //= 2
        self.stats.extra["budget_backoffs"] = self.stats.extra.get("budget_backoffs", 0) + 1
        log.warning("out of memory: max_batch_tokens reduced to %d", self.budget)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _mask(self, pos: torch.Tensor, anc: torch.Tensor, window: int | None,
              prefix_len: int, cached: int) -> torch.Tensor:
        """(B, 1, L, cached + L) mask; True = attend: the prefix (within the window), and
        within the batch row the query's ancestors and itself (`anc`, within the window).
        Pad tokens see only themselves and are seen by none."""
        new = anc
        if window is not None:
            new = new & ((pos[:, :, None] - pos[:, None, :]) < window)
        if cached:
            cpos = torch.arange(prefix_len - cached, prefix_len, device=pos.device)
            old = torch.ones(*pos.shape, cached, dtype=torch.bool, device=pos.device)
            if window is not None:
                old = (pos[:, :, None] - cpos[None, None, :]) < window
            new = torch.cat([old, new], dim=-1)
        mask = new[:, None]
        if self.eager:
            zero = torch.zeros((), dtype=self.dtype, device=pos.device)
            mask = torch.where(mask, zero, torch.finfo(self.dtype).min)
        return mask

    def forward(self, bins: Sequence[Sequence[_Row]], prefix_len: int, cache: Any | None
                ) -> torch.Tensor:
        """Final hidden states (B, L, hidden) of the bins (rows placed one after another,
        right-padded to a common width L) on a copy of `cache`."""
        cat = lambda rows, f: [x for r in rows for x in f(r)]  # noqa: E731
        width = max(sum(len(r.tokens) for r in b) for b in bins)
        fill = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]  # noqa: E731
        ids = _ids(fill([cat(b, lambda r: r.tokens) for b in bins], PAD_ID), self.dev)
        pos = torch.tensor(fill([cat(b, lambda r: r.pos) for b in bins], 0), device=self.dev)
        anc = np.zeros((len(bins), width, width), dtype=bool)
        anc[:, np.arange(width), np.arange(width)] = True  # pads: themselves
        for b, rows in enumerate(bins):
            at = 0
            for r in rows:
                n = len(r.tokens)
                anc[b, at:at + n, at:at + n] = r.ancestors()
                at += n
        anc_t = torch.from_numpy(anc).to(self.dev)
        masks: dict[int | None, torch.Tensor] = {}
        kw: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            cache = _copy_cache(cache, len(bins))
            kw = {"use_cache": True, self.cache_kw: cache}
        for i, w in enumerate(self.windows):
            if w not in masks:
                cached = 0 if cache is None else int(cache.layers[i].keys.shape[-2])
                masks[w] = self._mask(pos, anc_t, w, prefix_len, cached)
        if len(masks) == 1:
            attn: Any = next(iter(masks.values()))
        else:
            attn = {t: masks[w] for t, w in zip(self.layer_types, self.windows)}
        out = self.body(input_ids=ids, position_ids=pos, attention_mask=attn, **kw)
        n = len(bins) * width
        self.stats.tokens += n
        self.stats.pad_tokens += n - sum(len(r.tokens) for b in bins for r in b)
        self.stats.forwards += 1
        self.stats.forward_tokens.append(n)
        return out.last_hidden_state

    def prefix(self, tokens: list[int]) -> Any:
        cache = self.new_cache()
        self.body(input_ids=_ids(tokens, self.dev), use_cache=True, **{self.cache_kw: cache})
        self.stats.tokens += len(tokens)
        self.stats.forwards += 1
        self.stats.forward_tokens.append(len(tokens))
        return cache

    def heads(self, bins: Sequence[Sequence[_Row]], hidden: torch.Tensor) -> None:
        """Log-probs at every requested position, handed to the rows' sinks."""
        pending: list[tuple[torch.Tensor, Any]] = []
        size = 0

        def flush() -> None:
            nonlocal pending, size
            if not pending:
                return
            lp = torch.log_softmax(_head(self.model, torch.cat([h for h, _ in pending])), -1)
            self.stats.head_positions += lp.shape[0]
            at = 0
            for h, sink in pending:
                sink(lp[at:at + h.shape[0]])
                at += h.shape[0]
            pending, size = [], 0

        for b, rows in enumerate(bins):
            at = 0
            for row in rows:
                for outs, sink in row.outs:
                    if size + len(outs) > HEAD_ROWS:
                        flush()
                    pending.append((hidden[b, [at + i for i in outs]], sink))
                    size += len(outs)
                at += len(row.tokens)
        flush()

    def run(self, groups: Sequence[_Group], bar: Any = None) -> None:
        for g in groups:
            self.stats.groups += 1
            cache = self.prefix(g.prefix) if g.prefix else None
            todo = list(range(len(g.rows)))
            while todo:  # re-packed after an out-of-memory back-off
                rows = [g.rows[i] for i in todo]
                done: set[int] = set()
                for fwd in _pack([len(r.tokens) for r in rows], self.budget):
                    chunk = [[rows[i] for i in b] for b in fwd]
                    try:
                        hidden = self.forward(chunk, len(g.prefix), cache)
                    except (RuntimeError, MemoryError) as e:
                        self.back_off(e, sum(map(len, chunk)))  # rows, not bins
                        break
                    self.heads(chunk, hidden)
                    done.update(todo[i] for b in fwd for i in b)
                    if bar is not None:
                        bar.update(sum(map(len, fwd)))
                todo = [i for i in todo if i not in done]


# ------------------------------------------------------------------------ guard

_SUPPORTED_ATTN = ("sdpa", "eager")


def batched_support(model: Any) -> str | None:
    """Why the batched path cannot run this model exactly, or None when it can. Static
    checks (attention implementation, cache layer kinds, mask routing), then a probe that
    compares the batched and per-question paths on a few synthetic requests whose prefix
    crosses the sliding window. Checked once per model object."""
    cached = getattr(model, "_mmlu_flavors_batched", None)
    if cached is not None:
        return cached or None
    reason = _static_reason(model) or _probe_reason(model)
    model._mmlu_flavors_batched = reason or ""
    return reason


def _static_reason(model: Any) -> str | None:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in _SUPPORTED_ATTN:
        return f"attention implementation {impl!r} takes no 4-D mask (need sdpa or eager)"
    params = inspect.signature(_body(model).forward).parameters
    if not {"position_ids", "attention_mask"} <= set(params):
        return "the model body takes no position_ids/attention_mask"
    layers = DynamicCache(config=model.config).layers
    kinds = {type(lay) for lay in layers}
    if not kinds <= {DynamicLayer, DynamicSlidingWindowLayer}:
        return f"cache layers {sorted(k.__name__ for k in kinds)} are not plain/sliding"
    windows = {getattr(lay, "sliding_window", None) if getattr(lay, "is_sliding", False) else None
               for lay in layers}
    types = getattr(cfg, "layer_types", None)
    if len(windows) > 1 and (not types or len(types) != len(layers)):
        return "mixed attention layers without config.layer_types to route masks"
    return None


def _probe_reason(model: Any) -> str | None:
    import random

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    rng = random.Random(0)
    vocab = int(cfg.vocab_size)
    toks = lambda n: [rng.randrange(min(3, vocab - 1), vocab) for _ in range(n)]  # noqa: E731
    windows = [getattr(lay, "sliding_window", None) for lay in
               _Batched(model, EngineStats(), 1 << 30).new_cache().layers
               if getattr(lay, "is_sliding", False)]
    plen = min(min(windows) + 8, 1024) if windows else 40
    prefix = toks(plen)
    conts = lambda: [toks(1), toks(3), toks(2), toks(1)]  # noqa: E731
    reqs = [Request(prefix + toks(5), conts(), 4096), Request(prefix + toks(9), conts(), 4096),
            Request(toks(12), conts(), 4096), Request(toks(7), conts(), 4096)]
    ref = _run_per_question(model, reqs, [None], 8, EngineStats(), MIN_SHARED_PREFIX)
    got = _run_batched(model, reqs, [None], EngineStats(), 1 << 20, MIN_SHARED_PREFIX)
    diff = max(abs(a - b) for f, r in zip(got, ref)
               for a, b in zip(f.topk_logprobs + [x for t in f.token_logprobs for x in t],
                               r.topk_logprobs + [x for t in r.token_logprobs for x in t]))
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 1.0
    if not diff <= tol:
        return f"probe: batched differs from per-question by {diff:g} (> {tol:g})"
    return None


# ------------------------------------------------------------------------ entry points

def planned_forwards(requests: Sequence[Request], batch_size: int = 8,
                     min_prefix: int = MIN_SHARED_PREFIX, max_batch_tokens: int | None = None,
                     mode: str = "batched", device: str = "cuda") -> list[int]:
    """Tokens (padding included) of each forward call `run_fast` will make for these
    requests, in order, without a model and without out-of-memory back-off.
    `max_batch_tokens` None means `device`'s default (cluster jobs run on GPUs)."""
    out: list[int] = []
    if mode == "batched" and any(r.generate > 0 for r in requests):
        gen, rest = _split_generating(requests)  # run_fast: batched first, then generation
        return (planned_forwards([requests[i] for i in rest], batch_size, min_prefix,
                                 max_batch_tokens, "batched", device)
                + planned_forwards([requests[i] for i in gen], batch_size, min_prefix,
                                   max_batch_tokens, "per_question", device))
    if mode == "batched":
        budget = max_batch_tokens or default_max_batch_tokens(device)
        accs = [_Acc(r, [None]) for r in requests]
        for g in _plan(requests, accs, min_prefix, min(budget, PACK_WIDTH) // TRIE_ROWS):
            if g.prefix:
                out.append(len(g.prefix))
            sizes = [len(r.tokens) for r in g.rows]
            out += [len(f) * max(sum(sizes[i] for i in b) for b in f)
                    for f in _pack(sizes, budget)]
        return out
    if mode != "per_question":
        raise ValueError(f"engine mode {mode!r} is not one of {MODES}")
    for prefix_len, members in group_by_prefix(requests, min_prefix):
        prefix_done = False
        for i in members:
            r = requests[i]
            if _needs_truncation(r):
                out.append(len(r.context[-r.max_length:]))
                out += [min(len(r.context) + i, r.max_length) for i in range(1, r.generate)]
                out += [len((list(r.context) + list(c))[-(r.max_length + 1):][:-1])
                        for c in r.continuations if c]
                continue
            if prefix_len and not prefix_done:
                out.append(prefix_len)
                prefix_done = True
            out.append(len(r.context) - (prefix_len if prefix_done else 0))
            rows = [len(c) - 1 for c in r.continuations if len(c) > 1]
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                out.append(len(chunk) * max(chunk))
            out += [1] * max(r.generate - 1, 0)  # greedy decoding, one token a forward
    return out


def planned_tokens(requests: Sequence[Request], batch_size: int = 8,
                   min_prefix: int = MIN_SHARED_PREFIX, max_batch_tokens: int | None = None,
                   mode: str = "batched", device: str = "cuda") -> tuple[int, int]:
    """(tokens, truncated requests) that `run_fast` will run for these requests (the sum of
    `planned_forwards`). Used to size cluster jobs. Truncated requests run the naive
    path's sequences (batched in batched mode)."""
    forwards = planned_forwards(requests, batch_size, min_prefix, max_batch_tokens, mode,
                                device)
    return sum(forwards), sum(map(_needs_truncation, requests))


def _split_generating(requests: Sequence[Request]) -> tuple[list[int], list[int]]:
    """Indices of requests that generate tokens (run per question) and of the others."""
    gen = [i for i, r in enumerate(requests) if r.generate > 0]
    return gen, [i for i, r in enumerate(requests) if r.generate <= 0]


def _run_batched(model: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
                 stats: EngineStats, budget: int, min_prefix: int, progress: bool = False
                 ) -> list[EngineResult]:
    from tqdm.auto import tqdm

    accs = [_Acc(r, letter_ids) for r in requests]
    groups = _plan(requests, accs, min_prefix, min(budget, PACK_WIDTH) // TRIE_ROWS)
    bar = tqdm(total=sum(len(g.rows) for g in groups), unit="row", disable=not progress,
               desc="forward")
    with torch.inference_mode():
        _Batched(model, stats, budget).run(groups, bar)
    bar.close()
    stats.naive_fallbacks += sum(map(_needs_truncation, requests))
    return [a.result() for a in accs]


def _run_per_question(model: Any, requests: Sequence[Request],
                      letter_ids: Sequence[int | None], batch_size: int, stats: EngineStats,
                      min_prefix: int, bar: Any = None) -> list[EngineResult]:
    fast = _Fast(model, letter_ids, batch_size, stats)
    results: list[EngineResult | None] = [None] * len(requests)
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
                if bar is not None:
                    bar.update(1)
    return results  # type: ignore[return-value]


def run_fast(model: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
             batch_size: int = 8, progress: bool = True, stats: EngineStats | None = None,
             min_prefix: int = MIN_SHARED_PREFIX, max_batch_tokens: int | None = None,
             mode: str = "batched") -> list[EngineResult]:
    """Same numbers as `run_naive`, one result per request in request order. Fills `stats`.

    mode "batched" (default): many questions per forward — a prefix group's suffixes and
    continuations as rows on the shared prefix cache, every other question (and truncated
    request) as length-sorted padded rows; `max_batch_tokens` (default per device) bounds
    rows x width of one forward and halves after an out-of-memory error. A model whose
    masks the scheme cannot honour (`batched_support`) runs "per_question" instead.
    mode "per_question": one question at a time on the prefix cache, its continuations in
    batches of `batch_size` rows; truncated requests take the naive path."""
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise ValueError(f"engine mode {mode!r} is not one of {MODES}")
    stats = stats if stats is not None else EngineStats()
    if not requests:
        return []
    check_head(model)
    if mode == "batched":
        reason = batched_support(model)
        if reason:
            log.warning("%s: batched engine unavailable (%s); running one question at a "
                        "time", type(model).__name__, reason)
            mode = "per_question"
    stats.extra["mode"] = mode
    t0 = time.perf_counter()
    if mode == "batched":
        budget = max_batch_tokens or default_max_batch_tokens(_device(model))
        stats.extra.setdefault("max_batch_tokens", budget)
        gen, rest = _split_generating(requests)
        out: list[EngineResult] = [None] * len(requests)  # type: ignore[list-item]
        if rest:
            for i, res in zip(rest, _run_batched(model, [requests[i] for i in rest],
                                                 letter_ids, stats, budget, min_prefix,
                                                 progress)):
                out[i] = res
        if gen:  # greedy generation decodes token by token: one question at a time
            for i, res in zip(gen, _run_per_question(model, [requests[i] for i in gen],
                                                     letter_ids, batch_size, stats,
                                                     min_prefix)):
                out[i] = res
    else:
        bar = tqdm(total=len(requests), unit="prompt", disable=not progress, desc="forward")
        out = _run_per_question(model, requests, letter_ids, batch_size, stats, min_prefix,
                                bar)
        bar.close()
    stats.prompts += len(requests)
    stats.seconds += time.perf_counter() - t0
    return out
