"""The logits cache: one forward pass per (model, flavor, question), kept as Parquet.

A shard job computes its subjects one at a time; each finished subject is written
atomically to `parts/{subject}.parquet` beside the shard, so a killed job resumes without
recomputing finished subjects. A part is reused only if its identity (model, tokenizer,
dtype, flavor, prompt hashes) matches; the shard is the concatenation of its parts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from .io import atomic_write_parquet, read_meta, sha256_text

log = logging.getLogger(__name__)

CACHE_SCHEMA = {
    "model": pl.String, "flavor": pl.String, "subject": pl.String, "index": pl.Int64,
    "gold": pl.Int8, "prompt_sha256": pl.String, "n_shots": pl.Int64,
    "context_tokens": pl.Int64, "truncated": pl.Boolean,
    "letter_ids": pl.List(pl.Int64), "letter_logprobs": pl.List(pl.Float64),
    "greedy_id": pl.Int64, "greedy_text": pl.String, "greedy_logprob": pl.Float64,
    "topk_ids": pl.List(pl.Int64), "topk_logprobs": pl.List(pl.Float64),
    "letter_cont_ids": pl.List(pl.List(pl.Int64)),
    "letter_cont_logprobs": pl.List(pl.List(pl.Float64)),
    "letter_cont_greedy": pl.List(pl.List(pl.Boolean)),
    "letter_cont_sum": pl.List(pl.Float64),
    "text_cont_ids": pl.List(pl.List(pl.Int64)),
    "text_cont_logprobs": pl.List(pl.List(pl.Float64)),
    "text_cont_greedy": pl.List(pl.List(pl.Boolean)),
    "text_cont_sum": pl.List(pl.Float64),
    "choice_chars": pl.List(pl.Int64), "choices": pl.List(pl.String),
    "gen_ids": pl.List(pl.Int64), "gen_text": pl.String,
}


def generated_text(tokenizer: Any, ids: list[int]) -> str | None:
    """The text of a greedy generation as lighteval 0.13 returns it: tokens after the first
    EOS dropped (generation stops there), decoded without special tokens, cut at the EOS
    string. None when nothing was generated. Stop sequences are the scorer's business."""
    if not ids:
        return None
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[:ids.index(eos) + 1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.split(tokenizer.eos_token)[0] if tokenizer.eos_token else text


class CacheIdentityError(ValueError):
    """Cached values that belong to another model, tokenizer, dtype or prompt set."""


def select_rows(prompts: pl.DataFrame, subjects: list[str],
                questions_per_subject: int | None) -> pl.DataFrame:
    """The shard's questions: its subjects, first N test rows of each (by CSV index)."""
    missing = sorted(set(subjects) - set(prompts["subject"].unique().to_list()))
    if missing:
        raise ValueError(f"subjects {missing} are not in the prompt table")
    df = prompts.filter(pl.col("subject").is_in(subjects)).sort("subject", "index")
    if questions_per_subject is not None:
        df = df.filter(pl.int_range(pl.len()).over("subject") < questions_per_subject)
    return df


def identity(loaded: Any, flavor: str) -> dict[str, Any]:
    """What a cached value depends on besides the prompt text."""
    ident = dict(loaded.identity)
    ident.update(flavor=flavor, dtype=str(loaded.dtype), device=str(loaded.device),
                 max_length=int(loaded.max_length))
    return ident


def rows_from_results(model_name: str, prompt_rows: list[dict], tokenized: list,
                      results: list, letter_ids: list[int | None],
                      tokenizer: Any) -> pl.DataFrame:
    """Cache rows from engine results (same order as the prompt rows)."""
    out = []
    for row, tok, res in zip(prompt_rows, tokenized, results):
        conts = tok.request.continuations
        out.append({
            "model": model_name, "flavor": row["flavor"], "subject": row["subject"],
            "index": row["index"], "gold": row["gold"],
            "prompt_sha256": sha256_text(tok.prompt), "n_shots": tok.n_shots,
            "context_tokens": len(tok.request.context), "truncated": tok.truncated,
            "letter_ids": letter_ids, "letter_logprobs": res.candidate_logprobs,
            "greedy_id": res.greedy_id,
            "greedy_text": tokenizer.decode([res.greedy_id], skip_special_tokens=False),
            "greedy_logprob": res.greedy_logprob,
            "topk_ids": res.topk_ids, "topk_logprobs": res.topk_logprobs,
            "letter_cont_ids": conts[:4], "letter_cont_logprobs": res.token_logprobs[:4],
            "letter_cont_greedy": res.token_is_greedy[:4], "letter_cont_sum": res.sums[:4],
            "text_cont_ids": conts[4:], "text_cont_logprobs": res.token_logprobs[4:],
            "text_cont_greedy": res.token_is_greedy[4:], "text_cont_sum": res.sums[4:],
            "choice_chars": [len(c) for c in row["choices"]], "choices": list(row["choices"]),
            "gen_ids": res.gen_ids, "gen_text": generated_text(tokenizer, res.gen_ids),
        })
    return pl.DataFrame(out, schema=CACHE_SCHEMA)


def _part_is_valid(path: Path, ident: dict, expected: pl.DataFrame) -> bool:
    if not path.exists():
        return False
    meta = read_meta(path)
    if meta.get("identity") != ident:
        log.warning("%s: identity differs from this run; recomputing", path)
        return False
    if list(pl.read_parquet_schema(path)) != list(CACHE_SCHEMA):
        log.warning("%s: written with another cache schema; recomputing", path)
        return False
    got = pl.read_parquet(path, columns=["index", "prompt_sha256"]).sort("index")
    want = expected.select("index", "prompt_sha256").sort("index")
    if not got.equals(want):
        log.warning("%s: questions or prompt hashes differ; recomputing", path)
        return False
    return True


def compute_shard(prompts: pl.DataFrame, model_name: str, loaded: Any, flavor: str,
                  subjects: list[str], questions_per_subject: int | None,
                  out_path: Path, batch_size: int = 8, progress: bool = True) -> pl.DataFrame:
    """Run the model once per question of the shard and write the shard atomically."""
    from .engine import run_fast
    from .tokenize import letter_ids as get_letter_ids, tokenize_row

    out_path = Path(out_path)
    parts_dir = out_path.parent / "parts" / out_path.stem
    rows = select_rows(prompts.filter(pl.col("flavor") == flavor), subjects,
                       questions_per_subject)
    ident = identity(loaded, flavor)
    tokenizer = loaded.tokenizer
    letters = get_letter_ids(tokenizer)
    frames = []
    for subject in subjects:
        subj_rows = rows.filter(pl.col("subject") == subject)
        prompt_rows = subj_rows.to_dicts()
        tokenized = [tokenize_row(r, tokenizer, loaded.max_length)
                     for r in prompt_rows]
        expected = pl.DataFrame({"index": subj_rows["index"],
                                 "prompt_sha256": [sha256_text(t.prompt) for t in tokenized]})
        part = parts_dir / f"{subject}.parquet"
        if _part_is_valid(part, ident, expected):
            log.info("%s: reusing finished subject %s", out_path, subject)
            frames.append(pl.read_parquet(part))
            continue
        results = run_fast(loaded.model, [t.request for t in tokenized], letters,
                           batch_size=batch_size, progress=progress)
        df = rows_from_results(model_name, prompt_rows, tokenized, results, letters, tokenizer)
        atomic_write_parquet(df, part, {"identity": ident, "subject": subject})
        frames.append(df)
    shard = pl.concat(frames) if frames else pl.DataFrame(schema=CACHE_SCHEMA)
    atomic_write_parquet(shard, out_path, {
        "identity": ident, "subjects": subjects,
        "questions_per_subject": questions_per_subject, "rows": shard.height})
    return shard


# keys of shard metadata that legitimately vary between shards of one model
SHARD_META_VARYING: frozenset[str] = frozenset({
    "flavor", "selection", "shard", "subjects", "subject", "questions_per_subject", "rows",
})


def _model_identity(meta: dict) -> str:
    ident = meta["identity"] if isinstance(meta.get("identity"), dict) else meta
    return json.dumps({k: v for k, v in ident.items() if k not in SHARD_META_VARYING},
                      sort_keys=True)


def read_shards(paths: list[Path | str]) -> pl.DataFrame:
    """Concatenate shards; refuse shards of one model whose identity (weights, tokenizer,
    dtype, device, versions) differs, and questions cached twice."""
    seen: dict[str, tuple[str, Path]] = {}  # model -> (identity, first file)
    frames = []
    for p in map(Path, paths):
        df = pl.read_parquet(p)
        ident = _model_identity(read_meta(p))
        for model in df.get_column("model").unique().sort().to_list():
            if model in seen and seen[model][0] != ident:
                raise CacheIdentityError(
                    f"refusing to mix shards of model {model!r} with different identity: "
                    f"{seen[model][1]} has {seen[model][0]}, {p} has {ident}")
            seen.setdefault(model, (ident, p))
        frames.append(df)
    if not frames:
        raise CacheIdentityError("no cache shards given")
    out = pl.concat(frames, how="diagonal_relaxed")
    dup = out.group_by("model", "flavor", "subject", "index").len().filter(pl.col("len") > 1)
    if dup.height:
        raise CacheIdentityError(
            f"questions cached twice across shards: {dup.head(3).to_dicts()}")
    return out
