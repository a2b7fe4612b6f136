"""Synthetic logits-cache tables with the exact docs/ARCHITECTURE.md shard schema.

`cache_row(...)` builds one hand-made row (override any column), `make_cache(rows)` types a
list of them, `synthetic_cache(...)` draws a whole plausible cache (models of given skill,
every flavor, any subjects) and `write_shards(...)` writes it as identity-stamped shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mmlu_flavors.cache import CACHE_SCHEMA as _CACHE_SCHEMA
from mmlu_flavors.io import atomic_write_parquet

from mmlu_flavors.reduce import FLAVORS

CACHE_SCHEMA = dict(_CACHE_SCHEMA)  # the real shard schema (mmlu_flavors.cache)

LETTER_IDS = [330, 365, 356, 422]  # arbitrary stand-ins for tokenizer("A").input_ids[-1] ...


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cont(sums: Sequence[float | None], base_id: int) -> dict[str, list]:
    """One single-token continuation per choice whose log-prob is the given sum ([] for None)."""
    ids, lps, greedy = [], [], []
    for j, s in enumerate(sums):
        if s is None or s == 0.0:
            ids.append([]), lps.append([]), greedy.append([])
        else:
            ids.append([base_id + j]), lps.append([float(s)]), greedy.append([False])
    return {"ids": ids, "logprobs": lps, "greedy": greedy}


def cache_row(
    *,
    model: str = "m",
    flavor: str = "original",
    subject: str = "abstract_algebra",
    index: int = 0,
    gold: int = 0,
    letter_logprobs: Sequence[float | None] = (-0.5, -1.5, -2.0, -3.0),
    greedy_text: str | None = " A",
    gen_text: str | None = None,
    letter_cont_sum: Sequence[float | None] = (-0.7, -1.7, -2.2, -3.2),
    text_cont_sum: Sequence[float | None] = (-5.0, -6.0, -7.0, -8.0),
    choices: Sequence[str] = ("alpha", "beta", "gamma", "delta"),
    choice_chars: Sequence[int] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One cache row with consistent defaults; any schema column can be overridden."""
    lc = _cont(letter_cont_sum, 100)
    tc = _cont(text_cont_sum, 1000)
    row: dict[str, Any] = {
        "model": model, "flavor": flavor, "subject": subject, "index": index, "gold": gold,
        "prompt_sha256": _sha(f"{flavor}/{subject}/{index}"),
        "n_shots": 5, "context_tokens": 300, "truncated": False,
        "letter_ids": [None if lp is None else LETTER_IDS[j] for j, lp in enumerate(letter_logprobs)],
        "letter_logprobs": list(letter_logprobs),
        "greedy_id": 7, "greedy_text": greedy_text, "greedy_logprob": -0.4,
        "topk_ids": list(range(10)), "topk_logprobs": [-0.4 - k for k in range(10)],
        "letter_cont_ids": lc["ids"], "letter_cont_logprobs": lc["logprobs"],
        "letter_cont_greedy": lc["greedy"], "letter_cont_sum": list(letter_cont_sum),
        "text_cont_ids": tc["ids"], "text_cont_logprobs": tc["logprobs"],
        "text_cont_greedy": tc["greedy"], "text_cont_sum": list(text_cont_sum),
        "choice_chars": list(choice_chars) if choice_chars is not None else [len(c) for c in choices],
        "choices": list(choices),
        "gen_ids": [] if gen_text is None else [7, 8, 9, 10, 11], "gen_text": gen_text,
        "chat": False,
    }
    unknown = set(overrides) - set(CACHE_SCHEMA)
    if unknown:
        raise KeyError(f"not cache columns: {sorted(unknown)}")
    row.update(overrides)
    return row


def make_cache(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows -> DataFrame with exactly CACHE_SCHEMA (column order and dtypes)."""
    return pl.DataFrame(list(rows), schema=CACHE_SCHEMA)


def synthetic_cache(
    models: Mapping[str, float] | Sequence[str] = ("model-a", "model-b"),
    flavors: Sequence[str] = FLAVORS,
    subjects: Mapping[str, int] | Sequence[str] = ("abstract_algebra", "anatomy", "philosophy"),
    n_per_subject: int = 20,
    seed: int = 0,
) -> pl.DataFrame:
    """A plausible cache: each model has a skill (logit boost of the gold answer).

    `models`: names, or name -> skill (0 = chance, ~2 = good). `subjects`: names (each with
    `n_per_subject` questions) or name -> number of questions. Flavors and scorers disagree
    on some questions because every flavor and every family of scores gets its own noise;
    a few greedy tokens are not letters ("<|im_end|>", " a", "(").
    """
    rng = np.random.default_rng(seed)
    if not isinstance(models, Mapping):
        models = {m: 0.5 + 1.5 * i / max(1, len(models) - 1) for i, m in enumerate(models)}
    if not isinstance(subjects, Mapping):
        subjects = {s: n_per_subject for s in subjects}
    junk = ["<|im_end|>", " a", "(", " The"]
    rows = []
    for s, n in subjects.items():
        golds = rng.integers(0, 4, size=n)
        chars = rng.integers(1, 60, size=(n, 4))
        ease = rng.normal(0.0, 1.0, size=n)  # question difficulty shared by all models
        for m, skill in models.items():
            for f in flavors:
                for i in range(n):
                    g = int(golds[i])
                    boost = np.zeros(4)
                    boost[g] = max(0.0, skill + ease[i])
                    letter = rng.normal(-1.5, 1.0, 4) + boost
                    lcont = letter + rng.normal(0, 0.3, 4)
                    text = (rng.normal(-2.0, 0.6, 4) + 0.5 * boost) * chars[i] / 10.0
                    greedy = " " + "ABCD"[int(np.argmax(letter + rng.normal(0, 0.3, 4)))]
                    if rng.random() < 0.05:
                        greedy = junk[int(rng.integers(len(junk)))]
                    choices = [f"{s} q{i} option {'ABCD'[j]}" + "x" * int(chars[i, j])
                               for j in range(4)]
                    rows.append(cache_row(
                        model=m, flavor=f, subject=s, index=i, gold=g,
                        letter_logprobs=[float(x) for x in letter], greedy_text=greedy,
                        letter_cont_sum=[float(x) for x in lcont],
                        text_cont_sum=[float(x) for x in text], choices=choices,
                        choice_chars=[len(c) for c in choices]))
    return make_cache(rows)


def shard_meta(model: str, flavor: str, **extra: Any) -> dict[str, Any]:
    """Shard identity metadata as docs/ARCHITECTURE.md lists it."""
    meta = {
        "model": model, "source": "synthetic", "weights_sha256": _sha(model),
        "tokenizer": f"{model}-tok", "dtype": "float32", "device": "cpu",
        "flavor": flavor, "selection": "full", "transformers": "0.0", "torch": "0.0",
    }
    meta.update(extra)
    return meta


def write_shards(cache: pl.DataFrame, root: Path, selection: str = "full",
                 meta_overrides: Mapping[tuple[str, str], Mapping[str, Any]] | None = None
                 ) -> list[Path]:
    """Write one shard per model x flavor under root/{model}/{flavor}/{selection}/0.parquet."""
    paths = []
    for (m, f), part in cache.group_by(["model", "flavor"], maintain_order=True):
        extra = dict((meta_overrides or {}).get((m, f), {}))
        p = Path(root) / m / f / selection / "0.parquet"
        atomic_write_parquet(part, p, shard_meta(m, f, selection=selection, **extra))
        paths.append(p)
    return paths


def cache_for_prompts(prompts: pl.DataFrame, models: Mapping[str, float],
                      seed: int = 0) -> pl.DataFrame:
    """A synthetic cache (CACHE_SCHEMA) for the questions of real prompt tables.

    One row per model x prompt row with the prompt's real choices, gold and prompt hash;
    log-probs drawn as in `synthetic_cache` (a model's skill boosts the gold answer), some
    greedy tokens not letters. Vectorized: the full 14,042 questions x 4 flavors x 2 models
    take seconds.
    """
    rng = np.random.default_rng(seed)
    n = prompts.height
    gold = prompts.get_column("gold").cast(pl.Int64).to_numpy()
    chars = np.array(prompts.get_column("choices").list.eval(pl.element().str.len_chars())
                     .to_list(), dtype=np.int64).reshape(n, 4)
    frames = []
    for m, skill in models.items():
        ease = rng.normal(0.0, 1.0, n)
        boost = np.zeros((n, 4))
        boost[np.arange(n), gold] = np.maximum(0.0, skill + ease)
        letter = rng.normal(-1.5, 1.0, (n, 4)) + boost
        lcont = letter + rng.normal(0, 0.3, (n, 4))
        text = (rng.normal(-2.0, 0.6, (n, 4)) + 0.5 * boost) * np.maximum(chars, 1) / 10.0
        pick = np.argmax(letter + rng.normal(0, 0.3, (n, 4)), axis=1)
        greedy = np.array([" A", " B", " C", " D"], dtype=object)[pick]
        junk = rng.random(n) < 0.05
        greedy[junk] = np.array(["<|im_end|>", " a", "(", " The"], dtype=object)[
            rng.integers(0, 4, junk.sum())]
        lp = letter - np.log(np.exp(letter).sum(axis=1, keepdims=True) + 1.0)
        single = [[[100 + j] for j in range(4)]] * n
        frames.append(pl.DataFrame({
            "model": [m] * n, "flavor": prompts.get_column("flavor"),
            "subject": prompts.get_column("subject"), "index": prompts.get_column("index"),
            "gold": prompts.get_column("gold"), "prompt_sha256": prompts.get_column("prompt_sha256"),
            "n_shots": prompts.get_column("shots").list.len().cast(pl.Int64),
            "context_tokens": prompts.get_column("prompt").str.len_chars() // 4,
            "truncated": [False] * n,
            "letter_ids": [LETTER_IDS] * n, "letter_logprobs": lp.tolist(),
            "greedy_id": rng.integers(0, 1000, n), "greedy_text": greedy.tolist(),
            "greedy_logprob": np.log(rng.uniform(0.05, 0.9, n)),
            "topk_ids": [list(range(10))] * n, "topk_logprobs": [[-0.4 - k for k in range(10)]] * n,
            "letter_cont_ids": single, "letter_cont_logprobs": lcont[:, :, None].tolist(),
            "letter_cont_greedy": [[[False]] * 4] * n, "letter_cont_sum": lcont.tolist(),
            "text_cont_ids": single, "text_cont_logprobs": text[:, :, None].tolist(),
            "text_cont_greedy": [[[False]] * 4] * n, "text_cont_sum": text.tolist(),
            "choice_chars": chars.tolist(), "choices": prompts.get_column("choices"),
            "gen_ids": [[]] * n, "gen_text": [None] * n, "chat": [False] * n,
        }, schema=CACHE_SCHEMA))
    return pl.concat(frames)
