"""A static page to look at questions: `explorer.html` plus one data script per subject.

The page (no server, works from file://, no network) lets a user pick a model and a question
(filters: subject, "implementations disagree", flips between two implementations) and shows,
per prompt flavor side by side, the exact prompt (shots collapsible), the letter
probabilities, the answer-text log-likelihoods, the greedy token, gold and every scorer's
verdict. For a flavor rendered through a model's chat template it also shows, per model, the
text that model saw (`model_inputs`: rendered again from the prompt row with the model's
tokenizer and checked against the cache's hash of the fed text).

Data layout (all written atomically):
* `explorer.html`: the page, its CSS/JS inline, and a small index (models, cells, subjects,
  every question's verdict under every prompt x scorer cell as '0'/'1' strings) so filters
  over all 14,042 questions run without loading any subject;
* `<data_dir>/<subject>.js`: `MMLU_EXPLORER_LOAD("<subject>", {...})` with the subject's
  prompts (headers, shots and test-block templates interned, so each question's text is
  stored once, not once per flavor) and each model's cached numbers; loaded on demand by a
  <script> tag (fetch() of file:// is blocked in Chromium). When all subject data together
  is under `inline_limit` bytes it is also inlined into the page, which then works on its
  own (e.g. inside Snakemake's HTML report).

Inputs are explicit paths (predictions, prompt tables, cache view files, questions): the
builder never globs the cache.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from .categories import category_of
from .data import LETTERS
from .io import atomic_write_text
from .flavors import implementations
from .reduce import FLAVORS, SCORERS

CACHE_COLUMNS: tuple[str, ...] = (
    "model", "flavor", "subject", "index", "letter_logprobs", "greedy_text", "greedy_logprob",
    "letter_cont_sum", "text_cont_sum", "choice_chars", "n_shots", "truncated",
    "context_tokens", "chat", "prompt_sha256",
)
PROMPT_COLUMNS: tuple[str, ...] = (
    "flavor", "subject", "index", "prompt", "header", "shots", "test_block", "shot_rows",
)
DIGITS = 4  # log-probs are stored rounded to this many decimals
DEFAULT_INLINE_LIMIT = 4_000_000
_TEMPLATE = Path(__file__).with_name("explorer_page.html")


# ---------------------------------------------------------------- small helpers

def _num(x: float | None) -> float | None:
    """Round a log-prob for the page; non-finite and missing values become null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), DIGITS)


def _nums(xs: Sequence[float | None] | None) -> list[float | None] | None:
    return None if xs is None else [_num(x) for x in xs]


class _Interner:
    """Strings (or JSON-able values) -> small ids, so repeated text is stored once."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._ids: dict[str, int] = {}

    def id(self, value: Any) -> int:
        key = json.dumps(value, ensure_ascii=False)
        if key not in self._ids:
            self._ids[key] = len(self.values)
            self.values.append(value)
        return self._ids[key]


def block_template(block: str, question: str, choices: Sequence[str]) -> list[str] | None:
    """Literal pieces around the question and the four choices in a test block, so that
    block == t[0] + question + t[1] + choices[0] + t[2] + ... + choices[3] + t[5];
    None when they do not occur in that order (the block is then stored literally)."""
    pieces, pos = [], 0
    for value in (question, *choices):
        at = block.find(value, pos) if value else pos
        if at < 0:
            return None
        pieces.append(block[pos:at])
        pos = at + len(value)
    pieces.append(block[pos:])
    return pieces


def fill_template(t: Sequence[str], question: str, choices: Sequence[str]) -> str:
    """Inverse of block_template (the page's JavaScript does the same)."""
    values = (question, *choices)
    return "".join(t[k] + values[k] for k in range(len(values))) + t[-1]


def js_literal(obj: Any) -> str:
    """JSON that is also safe inside an HTML <script> element."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            .replace("</", "<\\/").replace("<!--", "<\\u0021--"))


def _ordered(present: set[str], canonical: Sequence[str]) -> list[str]:
    return [x for x in canonical if x in present] + sorted(present - set(canonical))


# ---------------------------------------------------------------- reading inputs

def read_cache_views(paths: Sequence[Path | str]) -> pl.DataFrame:
    """The columns the page shows, from the given cache view files (no globbing)."""
    if not paths:
        raise ValueError("explorer: no cache view files given")
    frames = []
    for p in paths:
        try:
            frames.append(pl.read_parquet(p, columns=list(CACHE_COLUMNS)))
        except pl.exceptions.ColumnNotFoundError as e:
            raise ValueError(f"explorer: cache file {p} lacks a column the page needs: {e}"
                             ) from None
    return pl.concat(frames, how="vertical_relaxed")


def read_prompt_tables(paths: Sequence[Path | str]) -> pl.DataFrame:
    frames = [pl.read_parquet(p, columns=list(PROMPT_COLUMNS)) for p in paths]
    if not frames:
        raise ValueError("explorer: no prompt tables given")
    return pl.concat(frames, how="vertical_relaxed")


def model_inputs(cache: pl.DataFrame, prompt_paths: Sequence[Path | str],
                 tokenizers: Mapping[str, tuple[Any, int]]) -> pl.DataFrame:
    """The text each model saw for its chat-rendered questions (cache rows with `chat`):
    model, flavor, subject, index, before, after, text. When the text is `before` + the plain
    prompt (with the shots the model kept) + `after` (a template around one user message),
    `text` is null; otherwise (shots as turns) `before`/`after` are null and `text` is the
    whole rendering. Each rendering is checked against the cache's `prompt_sha256`."""
    from .flavors import get_flavor
    from .prompts import assemble
    from .tokenize import model_input

    schema = {"model": pl.String, "flavor": pl.String, "subject": pl.String,
              "index": pl.Int64, "before": pl.String, "after": pl.String, "text": pl.String}
    chat = cache.filter(pl.col("chat").fill_null(False))
    if chat.height == 0:
        return pl.DataFrame(schema=schema)
    missing = sorted(set(chat["model"].unique().to_list()) - set(tokenizers))
    if missing:
        raise ValueError(f"explorer: no tokenizer given for {missing}, whose cached prompts went "
                         "through a chat template (--models)")
    flavors = set(chat["flavor"].unique().to_list())
    # only the chat flavors' rows are read in full (the page's columns were read already)
    rows = pl.concat([pl.scan_parquet(p).filter(pl.col("flavor").is_in(list(flavors)))
                      .collect() for p in prompt_paths], how="diagonal_relaxed")
    by = {(r["flavor"], r["subject"], r["index"]): r for r in rows.iter_rows(named=True)}
    out = []
    for m, f, s, i, n, sha in chat.select("model", "flavor", "subject", "index", "n_shots",
                                          "prompt_sha256").iter_rows():
        row = by.get((f, s, i))
        if row is None:
            raise ValueError(f"explorer: {f}/{s}/{i} is cached but not in the prompt tables")
        tok, max_length = tokenizers[m]
        text = model_input(row, tok, max_length, get_flavor(f), n, sha)
        plain = assemble(row["header"], row["shots"], row["test_block"], n)
        if plain and text.count(plain) == 1:
            before, after = text.split(plain)
            out.append((m, f, s, i, before, after, None))
        else:
            out.append((m, f, s, i, None, None, text))
    return pl.DataFrame(out, schema=schema, orient="row")


def seen_data(inputs: pl.DataFrame, pos: dict[int, int]) -> dict[str, Any]:
    """model_inputs rows of one model x flavor x subject -> the page's form: interned
    before/after parts, per question [before, after] ids (null: not chat-rendered), and
    whole renderings by position."""
    parts, q, literal = _Interner(), [None] * len(pos), {}
    for i, before, after, text in inputs.select("index", "before", "after", "text").iter_rows():
        k = pos.get(i)
        if k is None:
            continue
        if text is None:
            q[k] = [parts.id(before), parts.id(after)]
        else:
            literal[str(k)] = text
    return {"parts": parts.values, "q": q, "literal": literal}


# ---------------------------------------------------------------- building the data

def build_index(pred: pl.DataFrame) -> dict[str, Any]:
    """Models, flavors, cells, subjects and every verdict as '0'/'1' strings (page index)."""
    models = sorted(pred.get_column("model").unique().to_list())
    flavors = _ordered(set(pred.get_column("prompt").unique().to_list()),
                       list(dict.fromkeys([*FLAVORS, *(i.flavor for i in implementations().values())])))
    scorers = _ordered(set(pred.get_column("scorer").unique().to_list()), SCORERS)
    present = set(pred.select("prompt", "scorer").unique().iter_rows())
    cells = [(f, s) for f in flavors for s in scorers if (f, s) in present]
    questions = pred.select("subject", "index").unique().sort("subject", "index")
    subjects = questions.group_by("subject", maintain_order=True).agg(pl.col("index"))
    order = questions.with_row_index("pos")
    grid = (order.join(pl.DataFrame({"model": models}), how="cross")
            .join(pl.DataFrame(cells, schema=["prompt", "scorer"], orient="row"), how="cross"))
    verdict = (grid.join(pred.select("model", "prompt", "scorer", "subject", "index", "correct"),
                         on=["model", "prompt", "scorer", "subject", "index"], how="left")
               .with_columns(c=pl.when(pl.col("correct").is_null()).then(pl.lit("-"))
                             .when(pl.col("correct")).then(pl.lit("1")).otherwise(pl.lit("0")))
               .sort("model", "prompt", "scorer", "pos")
               .group_by("model", "prompt", "scorer", maintain_order=True)
               .agg(pl.col("c").str.join("")))
    correct = {m: {} for m in models}
    for m, f, s, bits in verdict.iter_rows():
        correct[m][f"{f}|{s}"] = bits
    impls = {name: [i.flavor, i.scorer] for name, i in implementations().items()
             if (i.flavor, i.scorer) in present}
    return {
        "models": models, "flavors": flavors, "scorers": scorers,
        "cells": [f"{f}|{s}" for f, s in cells], "implementations": impls,
        "letters": list(LETTERS),
        "subjects": [{"name": s, "category": category_of(s), "index": idx}
                     for s, idx in subjects.iter_rows()],
        "correct": correct,
    }


def subject_data(subject: str, idx: list[int], questions: pl.DataFrame, prompts: pl.DataFrame,
                 cache: pl.DataFrame, pred: pl.DataFrame, flavors: Sequence[str],
                 models: Sequence[str], cells: Sequence[str],
                 rotations: pl.DataFrame | None = None,
                 inputs: pl.DataFrame | None = None) -> dict[str, Any]:
    """Everything the page shows for one subject, column-oriented in `idx` order (with
    `rotations`, choice_order.py's per-question table: each verdict under each cyclic
    rotation of the choices; with `inputs`, `model_inputs` rows: the chat-rendered text each
    model saw)."""
    pos = {i: k for k, i in enumerate(idx)}
    n = len(idx)
    q = {r["index"]: r for r in questions.iter_rows(named=True)}
    missing = [i for i in idx if i not in q]
    if missing:
        raise ValueError(f"explorer: {subject} questions {missing[:5]} are not in the "
                         "questions table")
    qtext = [q[i]["question"] for i in idx]
    choices = [list(q[i]["choices"]) for i in idx]
    out: dict[str, Any] = {
        "subject": subject, "index": idx, "gold": [int(q[i]["answer"]) for i in idx],
        "question": qtext, "choices": choices, "prompts": {}, "models": {},
    }
    for f in flavors:
        rows = prompts.filter(pl.col("flavor") == f)
        if rows.height == 0:
            continue
        headers, shots, tpls = _Interner(), _Interner(), _Interner()
        q_hdr, q_shots, q_tpl, literal = [0] * n, [[] for _ in range(n)], [-1] * n, {}
        for r in rows.iter_rows(named=True):
            k = pos[r["index"]]
            if r["header"] + "".join(r["shots"]) + r["test_block"] != r["prompt"]:
                raise ValueError(f"explorer: prompt of {f}/{subject}/{r['index']} is not "
                                 "header + shots + test_block")
            q_hdr[k] = headers.id(r["header"])
            q_shots[k] = [shots.id(s) for s in r["shots"]]
            t = block_template(r["test_block"], qtext[k], choices[k])
            if t is None or fill_template(t, qtext[k], choices[k]) != r["test_block"]:
                literal[str(k)] = r["test_block"]
            else:
                q_tpl[k] = tpls.id(t)
        if rows.height != n:
            raise ValueError(f"explorer: prompt table of {f} has {rows.height} of {n} "
                             f"{subject} questions")
        out["prompts"][f] = {"headers": headers.values, "q_header": q_hdr,
                             "shots": shots.values, "q_shots": q_shots,
                             "templates": tpls.values, "q_template": q_tpl,
                             "literal": literal}
    for m in models:
        entry: dict[str, Any] = {"flavors": {}, "pred": {}}
        if inputs is not None and inputs.height:
            mine = inputs.filter(pl.col("model") == m)
            seen = {f: seen_data(part, pos) for (f,), part in
                    mine.partition_by("flavor", as_dict=True).items()}
            if seen:
                entry["seen"] = seen
        for f in flavors:
            rows = cache.filter((pl.col("model") == m) & (pl.col("flavor") == f))
            if rows.height == 0:
                continue
            cols: dict[str, list] = {c: [None] * n for c in (
                "letter_lp", "letter_cont", "text_cont", "chars", "greedy", "greedy_lp",
                "n_shots", "truncated", "ctx")}
            for r in rows.iter_rows(named=True):
                k = pos.get(r["index"])
                if k is None:
                    continue
                cols["letter_lp"][k] = _nums(r["letter_logprobs"])
                cols["letter_cont"][k] = _nums(r["letter_cont_sum"])
                cols["text_cont"][k] = _nums(r["text_cont_sum"])
                cols["chars"][k] = r["choice_chars"]
                cols["greedy"][k] = r["greedy_text"]
                cols["greedy_lp"][k] = _num(r["greedy_logprob"])
                cols["n_shots"][k] = r["n_shots"]
                cols["truncated"][k] = r["truncated"]
                cols["ctx"][k] = r["context_tokens"]
            entry["flavors"][f] = cols
        mp = pred.filter(pl.col("model") == m)
        for cell in cells:
            f, s = cell.split("|")
            chars = ["-"] * n
            for i, p in (mp.filter((pl.col("prompt") == f) & (pl.col("scorer") == s))
                         .select("index", "pred").iter_rows()):
                if i in pos:
                    chars[pos[i]] = "-" if p is None else str(int(p))
            entry["pred"][cell] = "".join(chars)
        out["models"][m] = entry
    if rotations is not None and rotations.height:
        out["rotations"] = rotation_data(rotations, pos)
    return out


def rotation_data(rotations: pl.DataFrame, pos: dict[int, int]) -> dict[str, Any]:
    """choice_order_questions rows of one subject -> {model: {implementation: {"v": [...],
    "p": [...]}}}: per question 5 characters, rotations 0..3 then the debiased estimate; `v`
    the verdict ('1', '0', '-'), `p` the predicted ORIGINAL letter ('-': none)."""
    n = len(pos)
    out: dict[str, Any] = {}
    for (m, impl), part in rotations.group_by(["model", "implementation"], maintain_order=True):
        v = [["-"] * 5 for _ in range(n)]
        p = [["-"] * 5 for _ in range(n)]
        for i, r, pred, ok in part.select("index", "rotation", "pred", "correct").iter_rows():
            k = pos.get(i)
            if k is None:
                continue
            col = 4 if r < 0 else int(r)
            v[k][col] = "-" if ok is None else ("1" if ok else "0")
            p[k][col] = "-" if pred is None else LETTERS[int(pred)]
        out.setdefault(m, {})[impl] = {"v": ["".join(x) for x in v], "p": ["".join(x) for x in p]}
    return out


def build_explorer(predictions: Path | str, prompts: Sequence[Path | str],
                   cache: Sequence[Path | str], questions: Path | str, out_html: Path | str,
                   data_dir: Path | str, inline_limit: int = DEFAULT_INLINE_LIMIT,
                   choice_order: Path | str | None = None,
                   tokenizers: Mapping[str, tuple[Any, int]] | None = None) -> dict[str, Any]:
    """Write the page and one data script per subject; returns sizes and counts.
    `choice_order`: reports/choice_order_questions.parquet (choice_permutations: cyclic);
    `tokenizers`: model name -> (tokenizer, max length), to show chat-rendered inputs."""
    out_html, data_dir = Path(out_html), Path(data_dir)
    pred = pl.read_parquet(predictions)
    if pred.height == 0:
        raise ValueError(f"explorer: {predictions} has no predictions")
    index = build_index(pred)
    wanted = pred.select("subject", "index").unique()
    qs = (pl.read_parquet(questions, columns=["split", "subject", "index", "question",
                                              "choices", "answer"])
          .filter(pl.col("split") == "test").join(wanted, on=["subject", "index"], how="semi"))
    pr = read_prompt_tables(prompts).join(wanted, on=["subject", "index"], how="semi")
    ca = read_cache_views(cache).join(wanted, on=["subject", "index"], how="semi")
    seen = model_inputs(ca, prompts, tokenizers or {})
    seen_by = seen.partition_by("subject", as_dict=True)
    pr_by = pr.partition_by("subject", as_dict=True)
    ca_by = ca.partition_by("subject", as_dict=True)
    qs_by = qs.partition_by("subject", as_dict=True)
    pred_by = pred.partition_by("subject", as_dict=True)
    rot_by = (pl.read_parquet(choice_order).partition_by("subject", as_dict=True)
              if choice_order else {})
    data_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(data_dir, out_html.parent)).as_posix()
    scripts: list[str] = []
    sizes: dict[str, int] = {}
    for subj in index["subjects"]:
        s = subj["name"]
        empty_p, empty_c = pr.clear(), ca.clear()
        d = subject_data(s, subj["index"], qs_by.get((s,), qs.clear()), pr_by.get((s,), empty_p),
                         ca_by.get((s,), empty_c), pred_by[(s,)], index["flavors"],
                         index["models"], index["cells"], rot_by.get((s,)),
                         seen_by.get((s,)))
        script = f"MMLU_EXPLORER_LOAD({js_literal(s)},{js_literal(d)});\n"
        atomic_write_text(data_dir / f"{s}.js", script)
        subj["file"] = f"{rel}/{s}.js"
        sizes[s] = len(script.encode("utf-8"))
        scripts.append(script)
    total = sum(sizes.values())
    inline = total <= inline_limit
    page = (_TEMPLATE.read_text(encoding="utf-8")
            .replace("/*INDEX*/null", js_literal(index))
            .replace("<!--INLINE-->", "".join(f"<script>{s}</script>\n" for s in scripts)
                     if inline else ""))
    atomic_write_text(out_html, page)
    return {"html_bytes": len(page.encode("utf-8")), "data_bytes": total,
            "largest_subject": max(sizes, key=sizes.get), "largest_bytes": max(sizes.values()),
            "subjects": len(sizes), "questions": wanted.height, "inline": inline,
            "chat_rendered": seen.height}
