"""The logits cache: model outputs keyed by what determines them, reused by every run.

Two layers (docs/ARCHITECTURE.md, "Logits cache"):

* the **store**, `{store}/{model_key}/{flavor}/{subject}/{segment}.parquet`: immutable
  segments, each written atomically, one row per computed model input. `model_key` names the
  model's fingerprint (weights and tokenizer, dtype, device kind; `models.fingerprint`); a row
  is found by `input_key`, the SHA-256 of the exact model input (context ids, continuation
  ids, max length, letter ids). A row is reused whenever its key matches, whatever selection,
  shard layout or run produced it. Segments are checked on read (readable, expected columns,
  same model key and flavor); a damaged or foreign one is moved aside and its questions are
  recomputed.
* a **view**, `data/cache/{model}/{flavor}/{selection}/{shard}.parquet`: the selected
  questions' rows (`CACHE_SCHEMA`), assembled from the store; what the reductions read.

A job tokenizes its questions (tokenizer only), looks their keys up, loads the model only if
something is missing, computes the missing questions in checkpoints of at most
`checkpoint_questions` and about `checkpoint_seconds` (a SIGKILL loses at most one), and logs
`computed N, reused M questions`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from .io import (META_KEY, atomic_write_parquet, atomic_write_text, read_meta,
                 read_parquet_checked, sha256_text)

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
    "chat": pl.Boolean,  # the prompt went through the tokenizer's chat template
}
# the view columns that come from tokenizing the prompt row, not from the model
_ROW_COLUMNS = ("model", "flavor", "subject", "index", "gold", "prompt_sha256", "n_shots",
                "context_tokens", "truncated", "letter_cont_ids", "text_cont_ids",
                "choice_chars", "choices", "chat")
_OUTPUT_COLUMNS = tuple(c for c in CACHE_SCHEMA if c not in _ROW_COLUMNS)
STORE_SCHEMA = {"input_key": pl.String, "prompt_key": pl.String, "index": pl.Int64,
                **{c: CACHE_SCHEMA[c] for c in _OUTPUT_COLUMNS}}
STORE_FORMAT = 1  # bump when STORE_SCHEMA or the meaning of a key changes
DEFAULT_STORE = Path("data/cache/store")
DEFAULT_CHECKPOINT_QUESTIONS = 256
DEFAULT_CHECKPOINT_SECONDS = 300.0


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


# ---------------------------------------------------------------- keys

def input_key(request: Any, letter_ids: list[int | None]) -> str:
    """SHA-256 of one exact model input: what the engine computes depends on nothing else
    (given the model fingerprint of the store directory). The max length counts only where it
    cuts the input, so changing it recomputes exactly the questions it affects."""
    limit = request.max_length if request.needs_truncation() else None
    return sha256_text(json.dumps([STORE_FORMAT, request.context, request.continuations,
                                   limit, letter_ids, request.generate],
                                  separators=(",", ":")))


def prompt_key(row: dict[str, Any], max_length: Any) -> str:
    """SHA-256 of a prompt row's text fields, its flavor and the max-length setting: an estimate
    of `input_key` that needs no tokenizer (used to plan a run before any model is loaded)."""
    fields = [STORE_FORMAT, row["flavor"], row["header"], list(row["shots"]), row["test_block"],
              row["prompt"], list(row["choices"]), max_length]
    return sha256_text(json.dumps(fields, separators=(",", ":")))


# the prompt-table columns `prompt_key` and a shard's selection read
PROMPT_KEY_COLUMNS = ["flavor", "subject", "index", "header", "shots", "test_block", "prompt",
                      "choices"]


def prompt_keys(rows: pl.DataFrame, max_length: Any) -> pl.Series:
    """`prompt_key` of every row of a prompt table."""
    return pl.Series("prompt_key", [prompt_key(r, max_length) for r in rows.iter_rows(named=True)],
                     dtype=pl.String)


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


# ---------------------------------------------------------------- the store

@dataclass
class Store:
    """One model's segments: `{root}/{key}/{flavor}/{subject}/*.parquet`."""

    root: Path
    key: str
    readonly: bool = False  # planning: skip bad segments without moving them
    quarantined: list[Path] = field(default_factory=list)

    def dir(self, flavor: str, subject: str) -> Path:
        return Path(self.root) / self.key / flavor / subject

    def segments(self, flavor: str, subject: str) -> list[Path]:
        d = self.dir(flavor, subject)
        return sorted(d.glob("*.parquet")) if d.is_dir() else []

    def _quarantine(self, path: Path, why: str) -> None:
        if self.readonly:
            return
        bad = path.with_name(path.name + ".bad")
        log.warning("cache segment %s %s: moved aside to %s; its questions will be recomputed",
                    path, why, bad.name)
        os.replace(path, bad)
        self.quarantined.append(bad)

    def _read(self, path: Path, flavor: str, columns: list[str] | None) -> pl.DataFrame | None:
        """One segment's `columns` (None: all), or None when it is damaged or foreign (moved
        aside unless readonly). The footer is read once and checked (readable, same model key,
        flavor and format, `STORE_SCHEMA`'s columns); then only the requested columns' pages
        are read, each page's CRC verified: planning reads the key columns, never the outputs."""
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
        except Exception as e:  # unreadable: truncated, not Parquet, ...
            self._quarantine(path, f"is damaged ({type(e).__name__})")
            return None
        try:
            schema = pf.schema_arrow
            raw = (schema.metadata or {}).get(META_KEY)
            try:
                meta = json.loads(raw) if raw else {}
            except ValueError:
                meta = {}
            if (meta.get("model_key"), meta.get("flavor"), meta.get("format")) != (
                    self.key, flavor, STORE_FORMAT) or schema.names != list(STORE_SCHEMA):
                why = "belongs to another model, flavor or cache format"
            else:
                try:  # page checksums: also catches changed bytes polars alone would read
                    df = pl.from_arrow(pf.read(columns=columns or list(STORE_SCHEMA)))
                    assert isinstance(df, pl.DataFrame)
                    return df
                except Exception as e:
                    why = f"is damaged ({type(e).__name__})"
        finally:
            pf.close()
        self._quarantine(path, why)
        return None

    def load(self, flavor: str, subject: str, columns: list[str] | None = None) -> pl.DataFrame:
        """Every valid row of a subject (first segment wins for a key stored twice); only
        `columns` are read (a damaged page elsewhere is found by the job's full read)."""
        cols = list(columns) if columns is not None else list(STORE_SCHEMA)
        if "input_key" not in cols:
            cols.insert(0, "input_key")
        frames = [df for path in self.segments(flavor, subject)
                  if (df := self._read(path, flavor, cols)) is not None]
        if not frames:
            return pl.DataFrame(schema={c: STORE_SCHEMA[c] for c in cols})
        out = pl.concat(frames).unique("input_key", keep="first", maintain_order=True)
        return out if columns is None or "input_key" in columns else out.drop("input_key")

    def write(self, flavor: str, subject: str, rows: pl.DataFrame, meta: dict[str, Any]) -> Path:
        """A new segment, atomically; its name never collides with a concurrent writer's."""
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        path = self.dir(flavor, subject) / name
        atomic_write_parquet(rows.select(list(STORE_SCHEMA)).cast(STORE_SCHEMA), path, {
            **meta, "model_key": self.key, "flavor": flavor, "subject": subject,
            "format": STORE_FORMAT, "rows": rows.height})
        return path

    def write_identity(self, fingerprint: dict[str, Any], details: dict[str, Any]) -> None:
        path = Path(self.root) / self.key / "identity.json"
        if not path.exists():
            atomic_write_text(path, json.dumps({"model_key": self.key, "fingerprint": fingerprint,
                                                "details": details}, indent=2,
                                               sort_keys=True) + "\n")


# ---------------------------------------------------------------- SIGTERM

class Terminated(BaseException):
    """SIGTERM (a SLURM time limit, `scancel`, preemption): the job stops; every finished
    checkpoint is in the store. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on its way up (logging's emit, a reader's fallback) swallows it."""


_commit_depth = 0        # > 0 while a checkpoint is being committed (segment + counters + log)
_term_pending = False    # SIGTERM arrived during a commit: raised when the commit ends


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM handler of a logits job (`mmlu-flavors logits` installs it). Stops at once,
    except inside a checkpoint commit, which finishes first (its questions are then counted
    and logged as flushed). Later SIGTERMs are ignored: SLURM may send several (slurmd to
    every process of the step, srun forwarding its own), and the second one must not cut
    the log line of the first; SIGKILL after KillWait still ends a job that hangs."""
    global _term_pending
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _commit_depth:
        _term_pending = True
        return
    raise Terminated(f"signal {signum}")


@contextmanager
def _commit_section():
    """Defer SIGTERM while one checkpoint is written, counted and logged."""
    global _commit_depth, _term_pending
    _commit_depth += 1
    try:
        yield
    finally:
        _commit_depth -= 1
    if _term_pending and not _commit_depth:
        _term_pending = False
        raise Terminated("signal 15 (during a checkpoint commit)")


# ---------------------------------------------------------------- a job

@dataclass
class JobStats:
    """What one logits job did (written to its metrics file)."""

    questions: int = 0
    computed: int = 0
    reused: int = 0
    tokens: int = 0
    forward_seconds: float = 0.0
    load_seconds: float = 0.0
    segments: int = 0
    first_forward_seconds: float | None = None  # from process start to the first forward


def _output_rows(tokenized: list, results: list, keys: list[str], pkeys: list[str],
                 indices: list[int], letters: list[int | None], tokenizer: Any) -> pl.DataFrame:
    return pl.DataFrame([{
        "input_key": k, "prompt_key": pk, "index": i,
        "letter_ids": letters, "letter_logprobs": res.candidate_logprobs,
        "greedy_id": res.greedy_id,
        "greedy_text": tokenizer.decode([res.greedy_id], skip_special_tokens=False),
        "greedy_logprob": res.greedy_logprob,
        "topk_ids": res.topk_ids, "topk_logprobs": res.topk_logprobs,
        "letter_cont_logprobs": res.token_logprobs[:4],
        "letter_cont_greedy": res.token_is_greedy[:4], "letter_cont_sum": res.sums[:4],
        "text_cont_logprobs": res.token_logprobs[4:],
        "text_cont_greedy": res.token_is_greedy[4:], "text_cont_sum": res.sums[4:],
        "gen_ids": res.gen_ids, "gen_text": generated_text(tokenizer, res.gen_ids),
    } for k, pk, i, res in zip(keys, pkeys, indices, results)], schema=STORE_SCHEMA)


def _view_rows(model_name: str, rows: list[dict], tokenized: list, keys: list[str]
               ) -> pl.DataFrame:
    return pl.DataFrame([{
        "input_key": k, "model": model_name, "flavor": r["flavor"], "subject": r["subject"],
        "index": r["index"], "gold": r["gold"], "prompt_sha256": t.prompt_sha256,
        "n_shots": t.n_shots, "context_tokens": len(t.request.context),
        "truncated": t.truncated, "letter_cont_ids": t.request.continuations[:4],
        "text_cont_ids": t.request.continuations[4:],
        "choice_chars": [len(c) for c in r["choices"]], "choices": list(r["choices"]),
        "chat": t.chat,
    } for r, t, k in zip(rows, tokenized, keys)],
        schema={"input_key": pl.String, **{c: CACHE_SCHEMA[c] for c in _ROW_COLUMNS}})


def rows_from_results(model_name: str, prompt_rows: list[dict], tokenized: list,
                      results: list, letter_ids: list[int | None],
                      tokenizer: Any) -> pl.DataFrame:
    """View rows (`CACHE_SCHEMA`) straight from engine results, in prompt-row order, without
    a store (comparison scripts and tests that run the engine themselves)."""
    keys = [str(i) for i in range(len(prompt_rows))]
    out = _output_rows(tokenized, results, keys, keys, [r["index"] for r in prompt_rows],
                       letter_ids, tokenizer)
    return (_view_rows(model_name, prompt_rows, tokenized, keys)
            .join(out.drop("prompt_key", "index"), on="input_key", how="left",
                  maintain_order="left")
            .select(list(CACHE_SCHEMA)))


def compute_view(prompts: pl.DataFrame, model_name: str, entry: dict[str, Any],
                 model_dir: str | Path | None, flavor: str, subjects: list[str],
                 questions_per_subject: int | None, out_path: str | Path,
                 store_root: str | Path = DEFAULT_STORE, *, batch_size: int = 8,
                 max_batch_tokens: int | None = None,
                 checkpoint_questions: int = DEFAULT_CHECKPOINT_QUESTIONS,
                 checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
                 progress: bool = True, loader: Any = None, stats: JobStats | None = None,
                 without_template: str = "stop",
                 tokens_path: str | Path | None = None) -> pl.DataFrame:
    """Write the view of a shard (model x flavor x subjects), computing only the questions the
    store does not hold. The entry's backend (`backends`) computes them;
    `loader(entry, model_dir, name)` loads the model (default: the backend's loader,
    `models.load_model` for transformers; tests pass their own). A flavor that needs a chat
    template on a tokenizer without one: `without_template` "stop" raises, "skip" writes an
    empty view (the flavor is not run for this model; reductions leave it out). `tokens_path`:
    the shard's token table (the tokens stage, `tokens.compute_tokens`); without it the job
    tokenizes itself."""
    from . import backends, models
    from .flavors import get_flavor
    from .tokenize import (chat_required, has_chat_template, letter_ids as get_letter_ids,
                           rendering, tokenize_rows)

    stats = stats if stats is not None else JobStats()
    t0 = time.perf_counter()
    backend = backends.get(entry, model_name)
    loader = loader or backend.load
    tokenizer, max_length = models.load_tokenizer(entry, model_dir, model_name)
    memo_path = Path(store_root) / "file_hashes.json"
    memo = _read_json(memo_path)
    fp = models.fingerprint(entry, model_dir, memo, name=model_name)
    loaded = None
    if fp is None:  # e.g. a Hub branch not in the local Hub cache: loading resolves it
        loaded, stats.load_seconds = _timed(loader, entry, model_dir, model_name)
        fp = models.fingerprint(entry, model_dir, memo, commit=loaded.identity.get("commit"),
                                name=model_name)
    if memo:
        atomic_write_text(memo_path, json.dumps(memo, sort_keys=True))
    store = Store(Path(store_root), models.model_key(fp))
    letters = get_letter_ids(tokenizer)
    log.info("%s %s: prompts rendered as %s", model_name, flavor,
             rendering(get_flavor(flavor), tokenizer))
    if chat_required(get_flavor(flavor)) and not has_chat_template(tokenizer) \
            and without_template == "skip":
        log.warning("%s %s: not run for this model: the flavor needs a chat template and the "
                    "tokenizer has none (chat_without_template: skip); empty view written",
                    model_name, flavor)
        view = pl.DataFrame(schema=CACHE_SCHEMA)
        atomic_write_parquet(view, out_path, {
            "identity": {**fp, "model_key": store.key, "flavor": flavor},
            "subjects": subjects, "questions_per_subject": questions_per_subject, "rows": 0,
            "skipped": "the tokenizer has no chat template"})
        return view
    if chat_required(get_flavor(flavor)) and not has_chat_template(tokenizer):
        raise ValueError(f"flavor {flavor!r} renders prompts with the tokenizer's chat "
                         f"template, but model {model_name!r} has none (a base model): leave "
                         "the flavor out for this model")

    rows = select_rows(prompts.filter(pl.col("flavor") == flavor), subjects,
                       questions_per_subject)
    pkeys = prompt_keys(rows, entry.get("max_length")).to_list()
    prompt_rows = rows.to_dicts()
    if tokens_path is not None:
        from .tokens import read_tokens

        tokenized: list = read_tokens(tokens_path, rows, pkeys, tokenizer, max_length, flavor)
    else:
        tokenized = tokenize_rows(prompt_rows, tokenizer, max_length, get_flavor(flavor))
    keys = [input_key(t.request, letters) for t in tokenized]
    stats.questions = len(keys)
    view_meta = {"identity": {**fp, "model_key": store.key, "flavor": flavor},
                 "subjects": subjects, "questions_per_subject": questions_per_subject,
                 "rows": len(keys)}

    frames = []
    for subject in subjects:
        pos = [i for i, r in enumerate(prompt_rows) if r["subject"] == subject]
        have = store.load(flavor, subject)
        held = set(have["input_key"].to_list())
        todo: dict[str, int] = {}  # key -> first position (a repeated input runs once)
        for i in pos:
            if keys[i] not in held:
                todo.setdefault(keys[i], i)
        if todo:  # the same model input under another flavor (e.g. helm_current = helm
            # on a tokenizer without a chat template): copied, never recomputed
            found = _from_other_flavors(store, flavor, subject, todo, pkeys)
            if found.height:
                have = pl.concat([have, found])
                for k in found["input_key"].to_list():
                    todo.pop(k, None)
        # computed: counted as each checkpoint is flushed (what a kill leaves is exact);
        # reused: held already, or a repeat of an input computed here once
        stats.reused += len(pos) - len(todo)
        if todo:
            if loaded is None:
                loaded, stats.load_seconds = _timed(loader, entry, model_dir, model_name)
                store.write_identity(fp, {"name": model_name, **loaded.identity,
                                          "dtype": loaded.dtype, "device": loaded.device})
            new = _compute(backend, loaded, store, flavor, subject, list(todo.values()), tokenized,
                           keys, pkeys, prompt_rows, letters, batch_size, max_batch_tokens,
                           checkpoint_questions, checkpoint_seconds, progress, stats)
            have = pl.concat([have, new])
        frames.append(have)

    store_rows = (pl.concat(frames) if frames else pl.DataFrame(schema=STORE_SCHEMA)
                  ).unique("input_key", keep="first")
    view = (_view_rows(model_name, prompt_rows, tokenized, keys)
            .join(store_rows.drop("prompt_key", "index"), on="input_key", how="left")
            .select(list(CACHE_SCHEMA)))
    if view["greedy_id"].null_count():
        raise CacheIdentityError(f"{out_path}: {view['greedy_id'].null_count()} questions have "
                                 "no cached values after computing (a bug: please report)")
    atomic_write_parquet(view, out_path, view_meta)
    log.info("%s %s: computed %d, reused %d questions (%d selected) in %.1f s",
             model_name, flavor, stats.computed, stats.reused, stats.questions,
             time.perf_counter() - t0)
    return view


def _from_other_flavors(store: Store, flavor: str, subject: str, todo: dict[str, int],
                        pkeys: list[str]) -> pl.DataFrame:
    """Rows for the `todo` input keys held under another flavor of this model and subject.
    A key is the exact model input, so the values are this flavor's too; they are written
    once under this flavor (with its prompt keys, so later plans count them cached)."""
    base = Path(store.root) / store.key
    # read only: a damaged segment of another flavor is skipped, never moved aside here (its
    # own job does that; two jobs moving the same file would race)
    peek = Store(store.root, store.key, readonly=True)
    frames = []
    for other in sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if other == flavor or not peek.segments(other, subject):
            continue
        rows = peek.load(other, subject).filter(pl.col("input_key").is_in(list(todo)))
        if rows.height:
            frames.append(rows)
    if not frames:
        return pl.DataFrame(schema=STORE_SCHEMA)
    found = pl.concat(frames).unique("input_key", keep="first", maintain_order=True)
    found = found.with_columns(pl.Series("prompt_key", [pkeys[todo[k]] for k in
                                                        found["input_key"].to_list()]))
    store.write(flavor, subject, found, {"copied_from_other_flavors": True})
    log.info("%s %s: %d questions held under another flavor (same model input), reused",
             flavor, subject, found.height)
    return found


def _compute(backend: Any, loaded: Any, store: Store, flavor: str, subject: str, positions: list[int],
             tokenized: list, keys: list[str], pkeys: list[str], prompt_rows: list[dict],
             letters: list[int | None], batch_size: int, max_batch_tokens: int | None,
             checkpoint: int, checkpoint_seconds: float | None, progress: bool,
             stats: JobStats) -> pl.DataFrame:
    """Run the model on `positions` in checkpoints, each a new segment: at most `checkpoint`
    questions, and after the first, about `checkpoint_seconds` of work (sized from the
    measured seconds per question), so a kill loses at most that much. `backend` (the
    entry's, `backends.get`) computes each checkpoint; nothing here depends on which."""
    from . import engine

    out = []
    step = max(1, int(checkpoint))
    start = 0
    while start < len(positions):
        chunk = positions[start:start + step]
        log.info("%s %s %s: computing %d questions (%d-%d of %d)", loaded.name, flavor, subject,
                 len(chunk), start + 1, start + len(chunk), len(positions))
        es = engine.EngineStats()
        if stats.first_forward_seconds is None:
            stats.first_forward_seconds, cpu = since_process_start()
            log.info("%s %s: first forward %.1f s after the process started (%.1f s CPU)",
                     loaded.name, flavor, stats.first_forward_seconds, cpu)
        t = time.perf_counter()
        results = backend.run(loaded, [tokenized[i].request for i in chunk], letters,
                              batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              progress=progress, stats=es)
        if len(results) != len(chunk):  # never half-cache: nothing of this chunk is written
            raise RuntimeError(f"backend {backend.name}: {len(results)} results for "
                               f"{len(chunk)} requests")
        per_question = (time.perf_counter() - t) / len(chunk)
        df = _output_rows([tokenized[i] for i in chunk], results, [keys[i] for i in chunk],
                          [pkeys[i] for i in chunk], [prompt_rows[i]["index"] for i in chunk],
                          letters, loaded.tokenizer)
        with _commit_section():  # a SIGTERM here waits until the checkpoint is counted
            store.write(flavor, subject, df, {"dtype": loaded.dtype, "device": loaded.device,
                                              "model": loaded.name})
            stats.computed += len(chunk)
            stats.tokens += es.tokens
            stats.forward_seconds += es.seconds
            stats.segments += 1
            out.append(df)
            start += len(chunk)
            log.info("%s %s %s: checkpoint of %d questions written (%d/%d)", loaded.name,
                     flavor, subject, len(chunk), start, len(positions))
        if checkpoint_seconds:
            step = max(1, min(int(checkpoint), int(checkpoint_seconds / max(per_question, 1e-6))))
    return pl.concat(out)


def since_process_start() -> tuple[float, float]:
    """(wall, CPU user + system) seconds since this process started (interpreter start-up
    and imports included)."""
    import psutil

    p = psutil.Process()
    cpu = p.cpu_times()
    return max(0.0, time.time() - p.create_time()), cpu.user + cpu.system


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def job_metrics(stats: JobStats, *, model: str, slug: str, flavor: str, shard: str,
                selection: str, subjects: list[str], dtype: str, wall_seconds: float
                ) -> dict[str, Any]:
    """The metrics file of one logits job (docs/cluster.md: learned resources)."""
    import resource

    import torch

    cuda = torch.cuda.is_available()
    return {
        "model": model, "slug": slug, "flavor": flavor, "shard": shard,
        "selection": selection, "subjects": subjects, "questions": stats.questions,
        "computed": stats.computed, "reused": stats.reused, "tokens": stats.tokens,
        "forward_seconds": round(stats.forward_seconds, 3),
        "tokens_per_s": (round(stats.tokens / stats.forward_seconds, 2)
                         if stats.forward_seconds > 0 else None),
        "load_seconds": round(stats.load_seconds, 3), "wall_seconds": round(wall_seconds, 3),
        "first_forward_seconds": (None if stats.first_forward_seconds is None
                                  else round(stats.first_forward_seconds, 3)),
        "peak_host_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mem_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                            if cuda else None),
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_name(),
        "n_gpus": torch.cuda.device_count() if cuda else 0,
        "dtype": dtype, "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "segments_written": stats.segments,
    }


def metrics_table(paths: list[str | Path]) -> pl.DataFrame:
    """One row per logits job from its metrics file: what it computed and reused."""
    cols = ["model", "flavor", "selection", "shard", "questions", "computed", "reused",
            "tokens", "forward_seconds", "tokens_per_s", "load_seconds", "wall_seconds",
            "device", "device_name", "finished"]
    rows = [{c: _read_json(Path(p)).get(c) for c in cols} for p in paths]
    return pl.DataFrame(rows, schema={c: (pl.Int64 if c in ("questions", "computed", "reused",
                                                            "tokens") else
                                          pl.Float64 if c.endswith(("seconds", "_s")) else
                                          pl.String) for c in cols})


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


# ---------------------------------------------------------------- plan, list
# (prune and purge: prune.py)

def plan_fingerprint(entry: dict[str, Any], model_dir: str | Path | None, name: str,
                     store_root: str | Path = DEFAULT_STORE) -> dict[str, Any] | None:
    """`models.fingerprint` at parse time: local files are hashed once per process and
    remembered in the store's `file_hashes.json` (by path, size, mtime, inode, ctime: a changed
    file is hashed again), so a dry run does not re-hash gigabytes of unchanged weights. The
    memo is written only when something new was hashed, and never needed: a store that
    cannot be written is only slower. None where the fingerprint is not known yet."""
    from . import models

    memo_path = Path(store_root) / "file_hashes.json"
    memo = _read_json(memo_path)
    before = json.dumps(memo, sort_keys=True)
    fp = models.fingerprint(entry, model_dir, memo, name=name)
    if json.dumps(memo, sort_keys=True) != before and Path(store_root).is_dir():
        try:  # merge: a concurrent job may have added other files' hashes meanwhile
            atomic_write_text(memo_path, json.dumps({**_read_json(memo_path), **memo},
                                                    sort_keys=True))
        except OSError as e:
            log.warning("could not remember model file hashes in %s (%s)", memo_path, e)
    return fp


def keyed_prompts(prompts: pl.DataFrame, max_length: Any) -> pl.DataFrame:
    """A prompt table's (flavor, subject, index, prompt_key): what planning needs, computed once
    per flavor and max-length setting and shared by every model and shard of a plan."""
    return prompts.select("flavor", "subject", "index").with_columns(
        prompt_keys(prompts, max_length))


def plan_keys(prompts_path: str | Path, flavor: str, max_length: Any,
              memo_dir: str | Path | None = None) -> pl.DataFrame:
    """`keyed_prompts` of a prompt table file, remembered in `memo_dir` (one small Parquet
    file per flavor, named by the table's path, size, mtime, inode and ctime, the max length
    and the store format): the keys hash every prompt's text, seconds per flavor, and a
    rewritten table always gets new ones. Without `memo_dir`, or where it cannot be written,
    they are computed. DamagedFileError for a damaged or foreign prompt table."""
    from .checks import read_prompts

    path = Path(prompts_path).resolve()
    st = path.stat()
    stamp = [str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, max_length,
             STORE_FORMAT]
    memo = (Path(memo_dir) / f"{flavor}-{sha256_text(json.dumps(stamp))[:16]}.parquet"
            if memo_dir is not None else None)
    if memo is not None and memo.is_file():
        try:
            return read_parquet_checked(memo, {"prompt_key": pl.String},
                                        {"stamp": stamp})
        except ValueError:
            pass  # damaged or foreign: computed again
    keyed = keyed_prompts(read_prompts(path, flavor, columns=PROMPT_KEY_COLUMNS), max_length)
    if memo is not None:
        try:
            atomic_write_parquet(keyed, memo, {"stamp": stamp})
            for old in memo.parent.glob(f"{flavor}-*.parquet"):
                if old != memo:
                    old.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remember prompt keys in %s (%s)", memo, e)
    return keyed


def plan_counts(prompts: pl.DataFrame, store: Store, flavor: str, subjects: list[str],
                questions_per_subject: int | None, max_length: Any) -> tuple[int, int]:
    """(selected, cached) questions of a shard, by prompt key (no tokenizer): an estimate
    the job itself confirms by exact input keys. `prompts` is a prompt table or its
    `keyed_prompts` (then `max_length` is the one it was keyed with). Reads only the store's
    key columns (segment footers and `prompt_key` pages)."""
    rows = select_rows(prompts.filter(pl.col("flavor") == flavor), subjects,
                       questions_per_subject)
    want = rows["prompt_key"] if "prompt_key" in rows.columns else prompt_keys(rows, max_length)
    cached = 0
    for subject in subjects:
        held = store.load(flavor, subject, ["prompt_key"])["prompt_key"].to_list()
        cached += int(want.filter(rows["subject"] == subject).is_in(held).sum())
    return rows.height, cached


def list_store(store_root: str | Path) -> pl.DataFrame:
    """One row per model key x flavor x subject: questions held, segments, bytes, identity."""
    out = []
    root = Path(store_root)
    # dot directories (`.pruned/`, the quarantine of `cache prune`) are not model stores
    for ident_dir in (sorted(p for p in root.iterdir() if p.is_dir()
                             and not p.name.startswith(".")) if root.is_dir() else []):
        info = _read_json(ident_dir / "identity.json")
        name = info.get("details", {}).get("name", "?")
        for subj_dir in sorted(ident_dir.glob("*/*")):
            if not subj_dir.is_dir():
                continue
            segs = sorted(subj_dir.glob("*.parquet"))
            n = (pl.scan_parquet(segs).select("input_key").unique().collect().height
                 if segs else 0)
            out.append({"model_key": ident_dir.name, "model": name,
                        "flavor": subj_dir.parent.name, "subject": subj_dir.name,
                        "questions": n, "segments": len(segs),
                        "bytes": sum(p.stat().st_size for p in subj_dir.iterdir()),
                        "identity": json.dumps(info.get("fingerprint", {}), sort_keys=True)})
    return pl.DataFrame(out, schema={"model_key": pl.String, "model": pl.String,
                                     "flavor": pl.String, "subject": pl.String,
                                     "questions": pl.Int64, "segments": pl.Int64,
                                     "bytes": pl.Int64, "identity": pl.String})


# ---------------------------------------------------------------- reading views

# keys of view metadata that legitimately vary between views of one model
SHARD_META_VARYING: frozenset[str] = frozenset({
    "flavor", "selection", "shard", "subjects", "subject", "questions_per_subject", "rows",
})


def _model_identity(meta: dict) -> str:
    ident = meta["identity"] if isinstance(meta.get("identity"), dict) else meta
    return json.dumps({k: v for k, v in ident.items() if k not in SHARD_META_VARYING},
                      sort_keys=True)


def read_shards(paths: list[Path | str]) -> pl.DataFrame:
    """Concatenate views; refuse views of one model whose identity (weights, tokenizer,
    dtype, device) differs, and questions cached twice."""
    seen: dict[str, tuple[str, Path]] = {}  # model -> (identity, first file)
    frames = []
    for p in map(Path, paths):
        df = read_parquet_checked(p)  # a damaged view is named, never reduced
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
