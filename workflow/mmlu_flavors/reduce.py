"""Scorers: cache rows -> one prediction per model x prompt flavor x scorer x question.

Every scorer is a pure function of cache columns (see docs/ARCHITECTURE.md), so a new scoring
rule costs zero forward passes. Argmax semantics are numpy's (`np.argmax`: the first maximum
wins; a NaN counts as the maximum and the first NaN wins), which is what the reference code
bases call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from mmlu_flavors.data import LETTERS
from mmlu_flavors.flavors import BUILTIN as _BUILTIN
from mmlu_flavors.flavors import implementations as _implementations

SCORERS: tuple[str, ...] = (
    "letter_argmax", "greedy_token", "loglik_acc", "loglik_acc_norm", "loglik_letter",
    "greedy_em", "inspect_choice",
)
# the built-in flavors (flavors.yaml), in file order; custom flavors are added at run time
# (flavors.register) and read through flavors.implementations()
FLAVORS: tuple[str, ...] = tuple(_BUILTIN)

# published implementation (prompt flavor) -> its own (main) scorer
DIAGONAL: dict[str, str] = {name: f.scorer for name, f in _BUILTIN.items()}

# names used in tables -> (prompt flavor, scorer), from the definitions' `scorers`
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    n: (i.flavor, i.scorer) for n, i in _implementations(list(_BUILTIN)).items()}

PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "prompt": pl.String(),
    "scorer": pl.String(),
    "subject": pl.String(),
    "index": pl.Int64(),
    "pred": pl.Int8(),
    "gold": pl.Int8(),
    "correct": pl.Boolean(),
}
KEY = ("model", "prompt", "scorer", "subject", "index")

# metadata keys that legitimately differ between shards of one model (everything else is identity)


# ---------------------------------------------------------------- argmax helpers

def _float_matrix(cache: pl.DataFrame, col: str, null: float) -> np.ndarray:
    """(n, 4) float64 matrix of a list<number>(4) column; null entries become `null`."""
    s = cache.get_column(col).cast(pl.List(pl.Float64))
    lengths = s.list.len()
    if lengths.is_null().any() or (lengths != 4).any():
        raise ValueError(f"column {col!r} must hold a list of 4 in every row")
    if s.len() == 0:
        return np.empty((0, 4), dtype=np.float64)
    filled = s.list.eval(pl.element().fill_null(null))
    return np.asarray(filled.list.to_array(4).to_numpy(), dtype=np.float64).reshape(-1, 4)


def _null_rows(cache: pl.DataFrame, col: str) -> np.ndarray:
    """Rows whose list column has all entries null."""
    s = cache.get_column(col).cast(pl.List(pl.Float64))
    return (s.list.eval(pl.element().is_null()).list.all()).to_numpy().astype(bool)


def _any_null(cache: pl.DataFrame, col: str) -> np.ndarray:
    s = cache.get_column(col).cast(pl.List(pl.Float64))
    return (s.list.eval(pl.element().is_null()).list.any()).to_numpy().astype(bool)


def _argmax(values: np.ndarray, undefined: np.ndarray) -> pl.Series:
    """Row-wise np.argmax as Int8, null where `undefined`."""
    pred = np.argmax(values, axis=1).astype(np.int8) if len(values) else np.empty(0, np.int8)
    return pl.Series("pred", pred, dtype=pl.Int8).scatter(np.flatnonzero(undefined), None)


# ---------------------------------------------------------------- scorers -> pred (Int8 or null)

def pred_letter_argmax(cache: pl.DataFrame) -> pl.Series:
    """original: argmax of the 4 letter log-probs; a null (letter without token) is -inf."""
    m = _float_matrix(cache, "letter_logprobs", -np.inf)
    return _argmax(m, _null_rows(cache, "letter_logprobs"))


def _py_strip_letter(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()  # Python's own whitespace set, not polars'/Rust's
    return LETTERS.index(t) if t in LETTERS else None


def pred_greedy_token(cache: pl.DataFrame) -> pl.Series:
    """helm: the greedy token's text, `.strip()`ped, must be exactly A-D; else null."""
    texts = cache.get_column("greedy_text")
    uniq = texts.drop_nulls().unique().to_list()
    mapping = {t: _py_strip_letter(t) for t in uniq}
    return texts.replace_strict(mapping, default=None, return_dtype=pl.Int8).alias("pred")


def _pred_sum(col: str) -> Callable[[pl.DataFrame], pl.Series]:
    def pred(cache: pl.DataFrame) -> pl.Series:
        return _argmax(_float_matrix(cache, col, np.nan), _any_null(cache, col))
    pred.__doc__ = f"argmax of `{col}` (a row with a null sum gets pred null)"
    return pred


pred_loglik_acc = _pred_sum("text_cont_sum")
pred_loglik_letter = _pred_sum("letter_cont_sum")


def pred_loglik_acc_norm(cache: pl.DataFrame) -> pl.Series:
    """harness e47e01b acc_norm: np.argmax(sums / float(len(choice))) with numpy semantics."""
    sums = _float_matrix(cache, "text_cont_sum", np.nan)
    chars = _float_matrix(cache, "choice_chars", np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = sums / chars  # x/0 -> +-inf, 0/0 -> nan
    return _argmax(normed, _any_null(cache, "text_cont_sum") | _any_null(cache, "choice_chars"))


def _py_em_letter(text: str | None, chat: bool | None = False) -> int | None:
    if text is None:
        return None
    if not chat:  # lighteval|mmlu stop sequence "\n" (under a chat template: EOS only)
        text = text.split("\n")[0]
    pred = text.strip()
    return LETTERS.index(pred) if pred in LETTERS else None


def pred_greedy_em(cache: pl.DataFrame) -> pl.Series:
    """lighteval|mmlu exact_match: the greedy generation (`gen_text`) cut at the first
    newline and stripped must be exactly A-D; else (or without a generation) pred null. A row
    rendered through a chat template (`chat`) is not cut at the newline: lighteval 0.13 stops
    a chat model's generation at EOS only (`stop_tokens = [eos_token]`)."""
    chat = cache["chat"].to_list() if "chat" in cache.columns else [False] * cache.height
    return pl.Series("pred", [_py_em_letter(t, c) for t, c in
                              zip(cache["gen_text"].to_list(), chat)], dtype=pl.Int8)


# inspect_ai 0.3.285 `solver._multiple_choice.parse_answers` (single answer), verbatim patterns
_INSPECT_WRAPPERS = (
    (re.compile(r"\x24\s*([A-Za-z\d][A-Za-z\d ,]*?)\s*\x24"), r"\1"),  # $A$
    (re.compile(r"\*\*\s*([A-Za-z\d][A-Za-z\d ,]*?)\s*\*\*"), r"\1"),  # **A**
    (re.compile(r"(?i)(^|[:,])(\s*)\(([A-Za-z\d])\)(?=\s*(?:,|\.|\n|\Z))"), r"\1\2\3"),  # (A)
)
_INSPECT_STRICT = re.compile(r"(?i)^ANSWER\s*:\s*([A-Za-z\d ,]+)\s*(?:$|\n|\.)", re.MULTILINE)
_INSPECT_LENIENT = re.compile(r"(?i)ANSWER\s*:\s*([A-Za-z\d ,]+)(?:[^\w]|\n|$|\.)")


def _py_inspect_letter(text: str | None) -> int | None:
    if text is None:
        return None
    for pattern, repl in _INSPECT_WRAPPERS:
        text = pattern.sub(repl, text)
    matches = _INSPECT_STRICT.findall(text) or _INSPECT_LENIENT.findall(text)
    if not matches:
        return None
    matched = matches[-1].strip().rstrip(".").upper()
    tokens = [t for t in matched.split(",") if t]
    return LETTERS.index(tokens[0]) if len(tokens) == 1 and tokens[0] in LETTERS else None


def pred_inspect_choice(cache: pl.DataFrame) -> pl.Series:
    """inspect_evals mmlu's `multiple_choice` solver + `choice()` scorer: the last
    "ANSWER: <letter>" of the generation (`gen_text`, after unwrapping $X$, **X** and (X);
    a strict per-line match first, then a lenient one anywhere), upper-cased, must be one of
    A-D; else (or without a generation) pred null."""
    return pl.Series("pred", [_py_inspect_letter(t) for t in cache["gen_text"].to_list()],
                     dtype=pl.Int8)


PRED_FUNCS: dict[str, Callable[[pl.DataFrame], pl.Series]] = {
    "letter_argmax": pred_letter_argmax,
    "greedy_token": pred_greedy_token,
    "loglik_acc": pred_loglik_acc,
    "loglik_acc_norm": pred_loglik_acc_norm,
    "loglik_letter": pred_loglik_letter,
    "greedy_em": pred_greedy_em,
    "inspect_choice": pred_inspect_choice,
}


# ---------------------------------------------------------------- main reduction

def _correct_expr(scorer: str) -> pl.Expr:
    pred = pl.col("pred")
    if scorer == "greedy_token":
        # HELM: correct iff the predicted choice's TEXT equals the gold choice's text
        ok = pl.col("choices").list.get(pred.cast(pl.Int64), null_on_oob=True) == \
            pl.col("choices").list.get(pl.col("gold").cast(pl.Int64), null_on_oob=True)
    else:
        ok = pred == pl.col("gold")
    return ok.fill_null(False).alias("correct")


def predictions(cache: pl.DataFrame, scorers: Sequence[str] = SCORERS) -> pl.DataFrame:
    """Every scorer applied to every cache row.

    One row per model x prompt (the cache's `flavor`) x scorer x question; columns exactly
    `model, prompt, scorer, subject, index, pred, gold, correct`, sorted by that key.
    """
    dup = cache.select("model", "flavor", "subject", "index").is_duplicated()
    if dup.any():
        first = cache.filter(dup).row(0, named=True)
        raise ValueError(f"cache has duplicate questions, e.g. {first['model']}/"
                         f"{first['flavor']}/{first['subject']}/{first['index']}")
    base = cache.select(
        pl.col("model").cast(pl.String),
        pl.col("flavor").cast(pl.String).alias("prompt"),
        pl.col("subject").cast(pl.String),
        pl.col("index").cast(pl.Int64),
        pl.col("gold").cast(pl.Int8),
        pl.col("choices").cast(pl.List(pl.String)),
    )
    parts = []
    for scorer in scorers:
        pred = PRED_FUNCS[scorer](cache)
        parts.append(
            base.with_columns(pl.lit(scorer, pl.String).alias("scorer"), pred.alias("pred"))
            .with_columns(_correct_expr(scorer))
        )
    out = pl.concat(parts) if parts else base.clear().with_columns(
        pl.lit(None, pl.String).alias("scorer"), pl.lit(None, pl.Int8).alias("pred"),
        pl.lit(None, pl.Boolean).alias("correct"))
    return (out.select([pl.col(c).cast(t) for c, t in PREDICTION_SCHEMA.items()])
            .sort(list(KEY)))


def predictions_from_shards(paths: Sequence[Path | str]) -> pl.DataFrame:
    """Read cache shards (identity-checked) and reduce them with every scorer."""
    from .cache import read_shards

    return predictions(read_shards(list(paths)))


def write_predictions(shard_paths: Sequence[Path | str], out_path: Path | str) -> pl.DataFrame:
    """predictions_from_shards, written atomically to `out_path` (Parquet); returns the table."""
    from mmlu_flavors.io import atomic_write_parquet

    pred = predictions_from_shards(shard_paths)
    atomic_write_parquet(pred, out_path)
    return pred
