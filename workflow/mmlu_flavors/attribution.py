"""Why two implementations disagree: walk from one to the other a factor at a time.

Every configuration is a point in a small factor space. The factors group the flavor
definition's own factors (`flavors.FACTORS`, keys of flavors.yaml) as issue 13 lists them:

| factor | definition keys | costs |
|---|---|---|
| header | header | a forward pass per question per new prompt variant |
| template | reading, example (+ answer, separator) | 〃 |
| chat | chat (the tokenizer's chat template, how and when it renders) | 〃 |
| shots | shots (split, sampler, seed) | 〃 |
| answer_delimiter | answer_delimiter | 〃 |
| tokens | special_tokens, encoding, too_long, continuations | 〃 |
| scoring | the scorer (reduce.py) | nothing: every cache row has every scorer |
| averaging | micro (over questions) or macro (over subjects) | nothing |

A prompt variant (a flavor) fixes the prompt factors; a point is (prompt variant, scorer,
averaging). The core functions are pure: they take a correctness table (one row per prompt
variant x scorer x question, as `reduce.predictions` writes it) and each variant's factor
levels, so they do not care how the variants were produced. `variant_definitions` makes the
intermediate prompt variants of the configured walks with `flavors.with_factors` (flavor a
with some of b's factors): each is an ordinary flavor definition that the workflow renders,
runs and reduces like any other.

* `walk`: from implementation a to b, changing one factor at a time in a given order; where
  no prompt variant exists for an intermediate point, the prompt factors that could not be
  separated change together in one step (the step's `factor` names them, joined by "+").
* `shapley`: the order-independent share of each player, exact over all subsets of players
  (2^players points). Prompt factors are separate players only when every combination of
  them was run (`attribution_variants: shapley`, at most 16 prompt variants per pair);
  otherwise they are one player and `per_factor` is false.
Both come with paired bootstrap CIs: one set of resamples (stats.bootstrap_subject_means,
the report's seed) for every point, so the steps' differences are paired.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import factorial
from typing import Any

import numpy as np
import polars as pl

from . import flavors as fl
from .stats import SubjectBootstrap, bootstrap_subject_means, percentile_ci

log = logging.getLogger(__name__)

_GROUPS: dict[str, tuple[str, ...]] = {
    "header": ("header",),
    "template": ("reading", "example"),
    "chat": ("chat",),
    "shots": ("shots",),
    "answer_delimiter": ("answer_delimiter",),
    "tokens": ("special_tokens", "encoding", "too_long", "continuations"),
}
# every prompt factor of the flavor definitions belongs to exactly one group; one the groups
# do not name (a factor added to flavors.FACTORS later) becomes a group of its own
_GROUPS.update({f: (f,) for f in fl.FACTORS if f not in fl.SCORING_FACTORS
                and not any(f in g for g in _GROUPS.values())})
FACTOR_GROUPS: dict[str, tuple[str, ...]] = {**_GROUPS, "scoring": ("scoring",),
                                             "averaging": ("averaging",)}
PROMPT_FACTORS: tuple[str, ...] = tuple(_GROUPS)
FREE_FACTORS: tuple[str, ...] = ("scoring", "averaging")
FACTORS: tuple[str, ...] = PROMPT_FACTORS + FREE_FACTORS
# the default walk changes the shots first: every later intermediate prompt then has one fixed
# set of shots per subject, which the engine runs once per subject (a variant with
# harness e47e01b's per-question shots costs about 4x the tokens; bench/attribution_cost.py)
DEFAULT_ORDER: tuple[str, ...] = ("shots", "header", "template", "chat", "answer_delimiter",
                                  "tokens", "scoring", "averaging")
VARIANT_MODES: tuple[str, ...] = ("walk", "shapley", "none")
MAX_EXACT_VARIANTS = 16

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("harness (acc)", "original"),
                                              ("harness (acc)", "helm"))

Point = Mapping[str, str]


def _keys(group: str) -> list[str]:
    return [k for f in FACTOR_GROUPS[group] for k in fl.FACTORS[f]]


def levels(spec: Mapping[str, Any]) -> dict[str, str]:
    """A flavor definition's level of every prompt factor (canonical JSON of its keys; an
    optional key the definition leaves out, such as `shot_example`, is left out)."""
    return {g: json.dumps({k: spec[k] for k in _keys(g) if k in spec}, sort_keys=True)
            for g in PROMPT_FACTORS}


def describe(group: str, level: str, width: int = 60) -> str:
    """A short readable level: the values of the group's definition keys (or the scorer /
    averaging name), newlines and quotes escaped."""
    if group in FREE_FACTORS:
        return level
    vals = json.loads(level).values()
    text = " | ".join(v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in vals)
    text = json.dumps(text)[1:-1]
    return text if len(text) <= width else text[: width - 1] + "…"


def flavor_levels(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Prompt variant name -> levels, for registered flavors."""
    return {n: levels(fl.get_flavor(n).spec) for n in names}


def implementation_point(impl: str, variants: Mapping[str, Point]) -> dict[str, str]:
    """A published implementation (a table name of flavors.implementations()) as a point."""
    impls = fl.implementations()
    if impl not in impls:
        raise ValueError(f"unknown implementation {impl!r}; known: {', '.join(impls)}")
    i = impls[impl]
    if i.flavor not in variants:
        raise ValueError(f"implementation {impl!r}: prompt flavor {i.flavor!r} has no "
                         "predictions (add it to flavors)")
    return {**variants[i.flavor], "scoring": i.scorer, "averaging": i.averaging}


def prompt_of(point: Point, variants: Mapping[str, Point]) -> str | None:
    """The prompt variant whose prompt factors equal the point's (the first such), or None."""
    want = tuple(point[f] for f in PROMPT_FACTORS)
    for v, lv in variants.items():
        if tuple(lv[f] for f in PROMPT_FACTORS) == want:
            return v
    return None


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


def complete_order(order: Sequence[str]) -> list[str]:
    """`order` with the `chat` factor right after `template` when it does not name it (an
    order written before chat rendering was a factor of its own)."""
    out = list(order)
    if "chat" not in out and "template" in out:
        out.insert(out.index("template") + 1, "chat")
    return out


def _check_order(order: Sequence[str]) -> None:
    if sorted(order) != sorted(FACTORS):
        raise ValueError(f"attribution order must name each factor once: {list(FACTORS)}; "
                         f"got {list(order)}")


def walk(a: Point, b: Point, order: Sequence[str], available) -> list[tuple[tuple[str, ...], dict]]:
    """Points from a to b changing the factors that differ, in `order`, one at a time where
    `available(point)` allows, else several together. Returns [(changed factors, point)],
    starting with ((), a)."""
    order = complete_order(order)
    _check_order(order)
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
              variants: Mapping[str, Point], order: Sequence[str] = DEFAULT_ORDER,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95,
              scores: Scores | None = None) -> pl.DataFrame:
    """Walk (kind "step") and Shapley shares (kind "shapley") for one model and pair.

    `correct`: that model's prompt, scorer, subject, index, correct for every cell it has;
    `variants`: prompt variant -> its levels (`levels`, `flavor_levels`).
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
                     " || ".join(describe(f, before[f]) for f in changed) or None,
                     " || ".join(describe(f, p[f]) for f in changed) or None,
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
                     " || ".join(describe(f, a[f]) for f in g),
                     " || ".join(describe(f, b[f]) for f in g), None, None, None,
                     None, None, None, float(sh[0]), lo, hi, nq, per_factor))
    return pl.DataFrame(rows, schema=STEP_SCHEMA, orient="row")


def attribution_table(pred: pl.DataFrame, pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS,
                      variants: Mapping[str, Point] | None = None,
                      order: Sequence[str] = DEFAULT_ORDER, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> pl.DataFrame:
    """`attribute` for every model of a predictions table and every pair; `variants` default:
    the levels of the (registered) flavors in the table's `prompt` column."""
    if variants is None:
        variants = flavor_levels(pred.get_column("prompt").unique(maintain_order=True).to_list())
    frames = []
    for model in sorted(pred.get_column("model").unique().to_list()):
        correct = pred.filter(pl.col("model") == model)
        sc = Scores.of(correct, n_boot, seed)
        have = set(correct.get_column("prompt").unique().to_list())
        impls = fl.implementations()
        for a_impl, b_impl, *_ in pairs:  # a pair's own variants mode does not matter here
            lacking = sorted({impls[x].flavor for x in (a_impl, b_impl)
                              if x in impls and impls[x].flavor not in have})
            if lacking:  # e.g. a chat-template flavor not run on a base model
                log.warning("attribution: %s: pair %s / %s left out: no predictions of %s",
                            model, a_impl, b_impl, lacking)
                continue
            frames.append(attribute(correct, model, a_impl, b_impl, variants, order, n_boot,
                                    seed, level, scores=sc))
    return pl.concat(frames) if frames else pl.DataFrame(schema=STEP_SCHEMA)


# ---------------------------------------------------------------- prompt variants to run

def variant_name(defn: Mapping[str, Any]) -> str:
    """A stable flavor name from the prompt-relevant part of a definition."""
    digest = hashlib.sha256(json.dumps(fl.prompt_spec(defn), sort_keys=True).encode()).hexdigest()
    return f"attr_{digest[:10]}"


def _check_pair(pair: Sequence[str], impls: Mapping[str, Any]) -> str | None:
    """A pair's own variants mode (None: the run's), after checking its shape, mode and
    implementation names (ValueError naming what is wrong)."""
    if len(pair) not in (2, 3):
        raise ValueError(f"attribution_pairs: each entry is [a, b] or [a, b, mode], "
                         f"got {list(pair)!r}")
    if len(pair) == 3 and pair[2] not in VARIANT_MODES:
        raise ValueError(f"attribution_pairs: {pair[0]} / {pair[1]}: mode must be one of "
                         f"{VARIANT_MODES}, got {pair[2]!r}")
    for name in pair[:2]:
        if name not in impls:
            raise ValueError(f"attribution_pairs: unknown implementation {name!r}; "
                             f"known: {', '.join(impls)}")
    return pair[2] if len(pair) == 3 else None


def runnable_pairs(pairs: Sequence[Sequence[str]], flavors: Sequence[str]
                   ) -> tuple[list[list[str]], list[str]]:
    """The pairs whose two implementations' flavors are all in `flavors`, and one line per
    pair left out (a run that narrows `flavors` keeps the attributions it can make). A pair
    is [a, b] or [a, b, mode] (mode: that pair's own `attribution_variants`). An
    implementation name that does not exist, or a bad mode, is an error (ValueError)."""
    impls = fl.implementations()
    kept, skipped = [], []
    for pair in pairs:
        _check_pair(pair, impls)
        missing = sorted({impls[x].flavor for x in pair[:2]} - set(flavors))
        if missing:
            skipped.append(f"attribution: pair {pair[0]} / {pair[1]} left out: flavor(s) "
                           f"{missing} not in this run's flavors")
        else:
            kept.append(list(pair))
    return kept, skipped


def configured(config: Mapping[str, Any], flavors: Sequence[str]
               ) -> tuple[list[list[str]], list[str], list[str], dict[str, dict[str, Any]]]:
    """What a workflow config asks of the attribution, for a run of `flavors`: (the pairs it
    can make, one line per pair left out, the walk's factor order, the prompt variants to run
    as flavors of their own). The one reading of the attribution_* keys (the Snakefile and
    `mmlu-flavors plan` both use it); ValueError names a bad value."""
    pairs, skipped = runnable_pairs(config.get("attribution_pairs", DEFAULT_PAIRS), flavors)
    order = list(config.get("attribution_order", DEFAULT_ORDER))
    variants = variant_definitions(pairs, order, config.get("attribution_variants", "walk"),
                                   flavors)
    return pairs, skipped, order, variants


def variant_definitions(pairs: Sequence[Sequence[str]], order: Sequence[str] = DEFAULT_ORDER,
                        mode: str = "walk", known: Sequence[str] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Flavor definitions of the prompt variants the attribution of `pairs` needs.

    walk: the intermediate points of each walk (flavor a with b's first k differing prompt
    factors, in `order`); shapley: every combination of the differing prompt factors when
    there are at most 16, else the walk's. A pair [a, b, mode] uses its own mode. A variant
    whose prompt factors equal those of a flavor in `known` (the run's flavors) is not
    repeated.
    """
    if mode not in VARIANT_MODES:
        raise ValueError(f"attribution_variants must be one of {VARIANT_MODES}, got {mode!r}")
    order = complete_order(order)
    _check_order(order)
    impls = fl.implementations()
    seen = {json.dumps(levels(fl.get_flavor(n).spec), sort_keys=True)
            for n in (known if known is not None else fl.FLAVORS)}
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        pmode = _check_pair(pair, impls) or mode
        a_impl, b_impl = pair[0], pair[1]
        fa, fb = impls[a_impl].flavor, impls[b_impl].flavor
        missing = [f for f in (fa, fb) if known is not None and f not in known]
        if missing:
            raise ValueError(f"attribution_pairs: {a_impl} / {b_impl} need flavor(s) "
                             f"{missing}, which this run does not have (flavors)")
        la, lb = levels(fl.get_flavor(fa).spec), levels(fl.get_flavor(fb).spec)
        diff = [g for g in order if g in PROMPT_FACTORS and la[g] != lb[g]]
        if pmode == "none":
            continue
        if pmode == "shapley" and 2 ** len(diff) - 2 <= MAX_EXACT_VARIANTS:
            subsets = [c for r in range(1, len(diff)) for c in combinations(diff, r)]
        else:
            subsets = [tuple(diff[:k]) for k in range(1, len(diff))]
        for sub in subsets:
            defn = fl.with_factors(fa, fb, [f for g in sub for f in FACTOR_GROUPS[g]])
            key = json.dumps(levels(defn), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            out[variant_name(defn)] = defn
    return out
