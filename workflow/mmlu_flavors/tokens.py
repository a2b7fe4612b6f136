"""The tokenization stage: every request's token ids, computed once on CPU, read by the
logits job.

One table per model x flavor x selection x shard (`data/tokens/...parquet`), one row per
selected question: its prompt key, the context and continuation ids after the flavor's
too-long policy (`tokenize.tokenize_rows`, exactly `tokenize_row`'s ids), the max length,
generated tokens, shots kept and whether the input was truncated. The file's metadata names
what the ids depend on: the tokenizer (`tokenizer_identity`), the flavor definition and the
max length; the logits job refuses a table whose identity, questions or prompt keys differ
from its own, naming the file, so a stale table is never read as current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .io import atomic_write_parquet, read_meta, read_parquet_checked
from .request import Request

log = logging.getLogger(__name__)

TOKENS_FORMAT = 1
TOKENS_SCHEMA = {
    "subject": pl.String, "index": pl.Int64, "prompt_key": pl.String,
    "prompt_sha256": pl.String, "n_shots": pl.Int64, "truncated": pl.Boolean,
    "chat": pl.Boolean, "context": pl.List(pl.Int32), "continuations": pl.List(pl.List(pl.Int32)),
    "max_length": pl.Int64, "generate": pl.Int64,
}


class TokensError(ValueError):
    """A token table that is damaged, or belongs to another tokenizer, flavor or selection."""


@dataclass(frozen=True)
class TokenRow:
    """A request read back from a token table (what the logits job needs of `Tokenized`)."""

    request: Request
    n_shots: int
    truncated: bool
    prompt_sha256: str
    chat: bool = False  # rendered through the tokenizer's chat template


def tokenizer_identity(tokenizer: Any, max_length: int) -> str:
    """SHA-256 of what a tokenizer's ids depend on: its full definition (tokenizer.json of a
    fast tokenizer, else its vocabulary), special tokens, chat template, class, max length."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map,
                        tokenizer.bos_token_id, tokenizer.eos_token_id,
                        getattr(tokenizer, "chat_template", None), int(max_length)],
                       sort_keys=True, default=str)
    h = hashlib.sha256(body.encode("utf-8"))
    h.update(extra.encode("utf-8"))
    return h.hexdigest()


def flavor_identity(flavor: str) -> str:
    """SHA-256 of a flavor's definition (what its token rule reads)."""
    from .flavors import get_flavor

    spec = json.dumps(dict(get_flavor(flavor).spec), sort_keys=True, default=str)
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


def _identity(tokenizer: Any, max_length: int, flavor: str) -> dict[str, Any]:
    return {"format": TOKENS_FORMAT, "flavor": flavor,
            "flavor_sha256": flavor_identity(flavor),
            "tokenizer_sha256": tokenizer_identity(tokenizer, max_length),
            "max_length": int(max_length)}


def tokens_table(rows: pl.DataFrame, tokenizer: Any, max_length: int, flavor: str,
                 max_length_setting: Any = None, progress: bool = True
                 ) -> tuple[pl.DataFrame, dict[str, int]]:
    """The token table of selected prompt rows (one flavor), subject by subject (tqdm), and
    the tokenizer's `FastStats` summed."""
    from tqdm.auto import tqdm

    from .cache import prompt_keys
    from .flavors import get_flavor
    from .tokenize import FastStats, tokenize_rows

    fl = get_flavor(flavor)
    stats = FastStats()
    pkeys = prompt_keys(rows, max_length_setting).to_list()
    frames = []
    at = 0
    subjects = rows["subject"].unique(maintain_order=True).to_list()
    for subject in tqdm(subjects, unit="subject", desc=f"tokenize {flavor}",
                        disable=not progress):
        part = rows.filter(pl.col("subject") == subject).to_dicts()
        toks = tokenize_rows(part, tokenizer, max_length, fl, stats=stats)
        frames.append(pl.DataFrame({
            "subject": [r["subject"] for r in part], "index": [r["index"] for r in part],
            "prompt_key": pkeys[at:at + len(part)],
            "prompt_sha256": [t.prompt_sha256 for t in toks],
            "n_shots": [t.n_shots for t in toks], "truncated": [t.truncated for t in toks],
            "chat": [t.chat for t in toks],
            "context": [t.request.context for t in toks],
            "continuations": [t.request.continuations for t in toks],
            "max_length": [t.request.max_length for t in toks],
            "generate": [t.request.generate for t in toks],
        }, schema=TOKENS_SCHEMA))
        at += len(part)
    table = pl.concat(frames) if frames else pl.DataFrame(schema=TOKENS_SCHEMA)
    return table, stats.as_dict()


def compute_tokens(prompts: pl.DataFrame, model_name: str, entry: dict[str, Any],
                   model_dir: str | Path | None, flavor: str, subjects: list[str],
                   questions_per_subject: int | None, out_path: str | Path,
                   progress: bool = True) -> pl.DataFrame:
    """Write the token table of one shard (atomically), tokenizer only."""
    from . import models
    from .cache import select_rows
    from .flavors import get_flavor
    from .tokenize import chat_required, has_chat_template

    t0 = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    tokenizer, max_length = models.load_tokenizer(entry, model_dir, model_name)
    rows = select_rows(prompts.filter(pl.col("flavor") == flavor), subjects,
                       questions_per_subject)
    if chat_required(get_flavor(flavor)) and not has_chat_template(tokenizer):
        # nothing to tokenize: the logits job stops or skips (chat_without_template) before
        # it would read this table
        log.warning("%s %s: the flavor needs a chat template and the tokenizer has none: "
                    "no token ids written", model_name, flavor)
        rows = rows.clear()
    table, stats = tokens_table(rows, tokenizer, max_length, flavor, entry.get("max_length"),
                                progress)
    seconds = time.perf_counter() - t0
    atomic_write_parquet(table, out_path, {
        **_identity(tokenizer, max_length, flavor), "model": model_name,
        "subjects": subjects, "questions_per_subject": questions_per_subject,
        "rows": table.height, "stats": stats, "seconds": round(seconds, 3)})
    log.info("%s %s: tokenized %d questions in %.1f s (%d spliced, %d encoded in full, "
             "%d through the per-question path; %d checked against the full encoding, "
             "%d differed)", model_name, flavor, table.height, seconds, stats["spliced"],
             stats["full"], stats["slow_rows"], stats["verified"], stats["verify_failures"])
    return table


def read_tokens(path: str | Path, rows: pl.DataFrame, prompt_keys: list[str], tokenizer: Any,
                max_length: int, flavor: str) -> list[TokenRow]:
    """The requests of `rows` (the job's selected prompt rows, in order) from a token table;
    TokensError naming the file when it is damaged or was made for other inputs."""
    path = Path(path)
    try:
        meta = read_meta(path)
        table = read_parquet_checked(path)
    except Exception as e:
        raise TokensError(f"{path}: unreadable token table ({type(e).__name__}: {e}); delete "
                          "it and rerun") from e
    want = _identity(tokenizer, max_length, flavor)
    for k, v in want.items():
        if meta.get(k) != v:
            raise TokensError(f"{path}: token table made for another {k.replace('_sha256', '')}"
                              f" ({k}: {meta.get(k)!r}, this job: {v!r}); delete it and rerun")
    if list(table.columns) != list(TOKENS_SCHEMA):
        raise TokensError(f"{path}: columns {table.columns} are not {list(TOKENS_SCHEMA)}")
    same = (table.height == rows.height
            and table["subject"].to_list() == rows["subject"].to_list()
            and table["index"].to_list() == rows["index"].to_list()
            and table["prompt_key"].to_list() == list(prompt_keys))
    if not same:
        raise TokensError(f"{path}: its {table.height} questions or prompt keys differ from "
                          f"the {rows.height} this job selected (a stale table); delete it "
                          "and rerun")
    return [TokenRow(Request(list(r["context"]), [list(c) for c in r["continuations"]],
                             int(r["max_length"]), int(r["generate"])),
                     int(r["n_shots"]), bool(r["truncated"]), r["prompt_sha256"],
                     bool(r["chat"]))
            for r in table.iter_rows(named=True)]
