"""Why two implementations disagree: walk from one to the other a factor at a time.

Every configuration is a point in a small factor space:

| factor | what | costs |
|---|---|---|
| header | the text before the shots | a forward pass per question per new prompt variant |
| template | how a question and its choices are laid out | 〃 |
| shots | the shot split and sampler (dev first k, HELM's balanced draw, val per question) | 〃 |
| answer | how an answered shot gives its answer (letter, first correct letter, text) | 〃 |
| tokens | the token rule: special tokens, continuation encoding, too-long policy | 〃 |
| scoring | the scorer (reduce.py) | nothing: every cache row has every scorer |
| averaging | micro (over questions) or macro (over subjects) | nothing |

A prompt variant (a flavor) fixes the five prompt factors; a point is (prompt variant, scorer,
averaging). The functions here are pure: they take a correctness table (one row per prompt
variant x scorer x question, as `reduce.predictions` writes it) and the variants' factor
levels, so they do not care how the variants were produced.

* `walk`: from implementation a to b, changing one factor at a time in a given order; where
  no prompt variant exists for an intermediate point, the prompt factors that could not be
  separated change together in one step (the step's `factor` names them, joined by "+").
* `shapley`: the order-independent share of each player (a factor, or a group of prompt
  factors that has no separate variants), exact: every subset of players is scored
  (2^players points; exact for the prompt factors individually only when all 2^p prompt
  combinations were run, otherwise they are one player and the table says so).
Both come with paired bootstrap CIs: one set of resamples (stats.bootstrap_subject_means,
the report's seed) for every point, so the steps' differences are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import factorial

import numpy as np
import polars as pl

from .reduce import IMPLEMENTATIONS
from .stats import SubjectBootstrap, bootstrap_subject_means, own_averaging, percentile_ci

PROMPT_FACTORS: tuple[str, ...] = ("header", "template", "shots", "answer", "tokens")
FREE_FACTORS: tuple[str, ...] = ("scoring", "averaging")
FACTORS: tuple[str, ...] = PROMPT_FACTORS + FREE_FACTORS

# the four published prompt flavors as points of the prompt-factor space
FLAVOR_FACTORS: dict[str, dict[str, str]] = {
    "original": {"header": "about {subject_original}", "template": "original",
                 "shots": "dev first k", "answer": "letter", "tokens": "original"},
    "helm": {"header": "about {subject spaced}", "template": "helm",
             "shots": "dev HELM balanced", "answer": "first correct letter", "tokens": "helm"},
    "harness_e47e01b": {"header": "none", "template": "harness_e47e01b",
                        "shots": "val per question", "answer": "text",
                        "tokens": "harness_e47e01b"},
    "harness_current": {"header": "about {subject spaced}", "template": "harness_current",
                        "shots": "dev first k", "answer": "letter", "tokens": "harness_current"},
}

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("harness (acc)", "original"),
                                              ("harness (acc)", "helm"))

Point = Mapping[str, str]


def implementation_point(impl: str, variants: Mapping[str, Point] = FLAVOR_FACTORS) -> dict[str, str]:
    """A published implementation (a name of reduce.IMPLEMENTATIONS) as a full point."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; known: {', '.join(IMPLEMENTATIONS)}")
    prompt, scorer = IMPLEMENTATIONS[impl]
    if prompt not in variants:
        raise ValueError(f"implementation {impl!r}: prompt flavor {prompt!r} has no factor levels")
    return {**variants[prompt], "scoring": scorer, "averaging": own_averaging()[impl]}


def prompt_of(point: Point, variants: Mapping[str, Point]) -> str | None:
    """The prompt variant whose five prompt factors equal the point's, or None."""
    want = tuple(point[f] for f in PROMPT_FACTORS)
    hits = [v for v, lv in variants.items() if tuple(lv[f] for f in PROMPT_FACTORS) == want]
    if len(hits) > 1:
        raise ValueError(f"prompt variants {hits} have the same factor levels")
    return hits[0] if hits else None


@dataclass(frozen=True)
class Scores:
    """Per point: score and bootstrap samples, from one paired bootstrap of all cells."""

    bs: SubjectBootstrap
    col: dict[tuple[str, str], int]      # (prompt, scorer) -> bootstrap column

    @classmethod
    def of(cls, correct: pl.DataFrame, n_boot: int, seed: int) -> "Scores":
        """`correct`: prompt, scorer, subject, index, correct (one model)."""
        bs = bootstrap_subject_means(correct.select("prompt", "scorer", "subject", "index",
                                                    "correct"), ("prompt", "scorer"), n_boot, seed)
        return cls(bs, {k: i for i, k in enumerate(bs.columns.iter_rows())})

    def has(self, point: Point, variants: Mapping[str, Point]) -> bool:
        p = prompt_of(point, variants)
        return p is not None and (p, point["scoring"]) in self.col

    def value(self, point: Point, variants: Mapping[str, Point]) -> tuple[float, np.ndarray]:
        """(score, bootstrap samples (B,)) of a point."""
        p = prompt_of(point, variants)
        if p is None or (p, point["scoring"]) not in self.col:
            raise KeyError(f"no scores for prompt {p!r} x scorer {point['scoring']!r}")
        k = self.col[(p, point["scoring"])]
        pt, boot = self.bs.average(point["averaging"])
        return float(pt[k]), boot[:, k]


def _with(point: Point, other: Point, factors: Sequence[str]) -> dict[str, str]:
    out = dict(point)
    out.update({f: other[f] for f in factors})
    return out


def walk(a: Point, b: Point, order: Sequence[str], available) -> list[tuple[tuple[str, ...], dict]]:
    """Points from a to b changing the factors that differ, in `order`, one at a time where
    `available(point)` allows, else several together. Returns [(changed factors, point)],
    starting with ((), a)."""
    unknown = set(order) - set(FACTORS)
    if unknown or set(order) != set(FACTORS):
        raise ValueError(f"attribution order must name each factor once: {list(FACTORS)}; "
                         f"got {list(order)}")
    todo = [f for f in order if a[f] != b[f]]
    path: list[tuple[tuple[str, ...], dict]] = [((), dict(a))]
    cur = dict(a)
    while todo:
        for n in range(1, len(todo) + 1):
            nxt = _with(cur, b, todo[:n])
            if n == len(todo) or available(nxt):
                path.append((tuple(todo[:n]), nxt))
                cur, todo = nxt, todo[n:]
                break
    return path


def players(a: Point, b: Point, available) -> list[tuple[str, ...]]:
    """Shapley players: each differing free factor alone; the differing prompt factors alone
    when every combination of them has scores, else together as one player."""
    prompt = [f for f in PROMPT_FACTORS if a[f] != b[f]]
    free = [(f,) for f in FREE_FACTORS if a[f] != b[f]]
    every = all(available(_with(a, b, s)) for r in range(len(prompt) + 1)
                for s in combinations(prompt, r))
    if every:
        return [(f,) for f in prompt] + free
    return ([tuple(prompt)] if prompt else []) + free


def shapley(value, n_players: int) -> list:
    """Exact Shapley values; `value(subset: frozenset[int])` -> number or array."""
    cache: dict[frozenset, object] = {}

    def v(s: frozenset):
        if s not in cache:
            cache[s] = value(s)
        return cache[s]

    out = []
    for i in range(n_players):
        others = [j for j in range(n_players) if j != i]
        total = 0.0
        for r in range(len(others) + 1):
            w = factorial(r) * factorial(n_players - r - 1) / factorial(n_players)
            for s in combinations(others, r):
                s = frozenset(s)
                total = total + w * (v(s | {i}) - v(s))
        out.append(total)
    return out


STEP_SCHEMA = {
    "model": pl.String, "implementation_a": pl.String, "implementation_b": pl.String,
    "kind": pl.String, "step": pl.Int64, "factor": pl.String, "from_level": pl.String,
    "to_level": pl.String, "prompt": pl.String, "scorer": pl.String, "averaging": pl.String,
    "score": pl.Float64, "score_lo": pl.Float64, "score_hi": pl.Float64,
    "contribution": pl.Float64, "contribution_lo": pl.Float64, "contribution_hi": pl.Float64,
    "n_questions": pl.Int64, "per_factor": pl.Boolean,
}


def attribute(correct: pl.DataFrame, model: str, a_impl: str, b_impl: str,
              variants: Mapping[str, Point] = FLAVOR_FACTORS, order: Sequence[str] = FACTORS,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95,
              scores: Scores | None = None) -> pl.DataFrame:
    """Walk (kind "step") and Shapley shares (kind "shapley") for one model and pair.

    `correct`: that model's prompt, scorer, subject, index, correct for every cell it has.
    Step rows: score of the point after the step with its CI, and the change from the
    previous point (`contribution`, paired CI). Shapley rows: one per player, `factor` the
    player's factors joined by "+", `per_factor` false when prompt factors had to be grouped.
    """
    sc = scores or Scores.of(correct, n_boot, seed)
    have = lambda p: sc.has(p, variants)  # noqa: E731
    a, b = implementation_point(a_impl, variants), implementation_point(b_impl, variants)
    for name, p in ((a_impl, a), (b_impl, b)):
        if not have(p):
            raise ValueError(f"attribution: no predictions for {name} "
                             f"({prompt_of(p, variants)} x {p['scoring']}) of model {model}")
    nq = int(sc.bs.n.sum())
    rows = []

    def ci(x: np.ndarray) -> tuple[float, float]:
        lo, hi = percentile_ci(x, level)
        return float(lo), float(hi)

    prev = None
    path = walk(a, b, order, have)
    for k, (changed, p) in enumerate(path):
        val, boot = sc.value(p, variants)
        c, c_lo, c_hi = ((None, None, None) if prev is None
                         else (val - prev[0], *ci(boot - prev[1])))
        before = path[k - 1][1] if k else p
        rows.append((model, a_impl, b_impl, "step", k, "+".join(changed) or "start",
                     " | ".join(before[f] for f in changed) or None,
                     " | ".join(p[f] for f in changed) or None,
                     prompt_of(p, variants), p["scoring"], p["averaging"], val, *ci(boot),
                     c, c_lo, c_hi, nq, None))
        prev = (val, boot)

    pl_ = players(a, b, have)
    per_factor = all(len(g) == 1 for g in pl_)

    def value(s: frozenset) -> np.ndarray:
        p = _with(a, b, [f for i in s for f in pl_[i]])
        val, boot = sc.value(p, variants)
        return np.concatenate([[val], boot])

    for g, sh in zip(pl_, shapley(value, len(pl_))):
        lo, hi = ci(sh[1:])
        rows.append((model, a_impl, b_impl, "shapley", None, "+".join(g),
                     " | ".join(a[f] for f in g), " | ".join(b[f] for f in g), None, None, None,
                     None, None, None, float(sh[0]), lo, hi, nq, per_factor))
    return pl.DataFrame(rows, schema=STEP_SCHEMA, orient="row")


def attribution_table(pred: pl.DataFrame, pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS,
                      variants: Mapping[str, Point] = FLAVOR_FACTORS,
                      order: Sequence[str] = FACTORS, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> pl.DataFrame:
    """`attribute` for every model of a predictions table and every pair."""
    frames = []
    for model in sorted(pred.get_column("model").unique().to_list()):
        correct = pred.filter(pl.col("model") == model)
        sc = Scores.of(correct, n_boot, seed)
        for a_impl, b_impl in pairs:
            frames.append(attribute(correct, model, a_impl, b_impl, variants, order, n_boot,
                                    seed, level, scores=sc))
    return pl.concat(frames) if frames else pl.DataFrame(schema=STEP_SCHEMA)
