"""Prompt tables: one row per test question and flavor, built from the questions table."""

from __future__ import annotations

import polars as pl

from .flavors import Q, get_flavor, read_as
from .io import sha256_text

PROMPT_SCHEMA = {
    "flavor": pl.String, "subject": pl.String, "index": pl.Int64, "prompt": pl.String,
    "header": pl.String, "shots": pl.List(pl.String), "test_block": pl.String,
    "shot_split": pl.String, "shot_rows": pl.List(pl.Int64),
    "shot_queries": pl.List(pl.String), "shot_answers": pl.List(pl.String),
    "continuations": pl.List(pl.String), "gold": pl.Int8, "choices": pl.List(pl.String),
    "num_fewshot": pl.Int64, "prompt_sha256": pl.String,
}


def _qs(df: pl.DataFrame, reading: str) -> list[Q]:
    """Rows of one split and subject as the flavor's reference reads them."""
    return [read_as(Q(r["question"], tuple(r["choices"]), int(r["answer"]), int(r["index"])),
                    reading)
            for r in df.sort("index").iter_rows(named=True)]


def build_prompts(questions: pl.DataFrame, flavor: str, num_fewshot: int = 5,
                  subjects: list[str] | None = None,
                  questions_per_subject: int | None = None) -> pl.DataFrame:
    """Render every test question of the chosen subjects with `flavor`.

    Shots are selected over the whole subject before any subset is taken, so the first N
    questions of a subject get exactly the prompts a full run gives them.
    """
    fl = get_flavor(flavor)
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    present = sorted(questions.filter(pl.col("split") == "test")["subject"].unique().to_list())
    chosen = present if subjects is None else list(subjects)
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ValueError(f"subjects {missing} have no test questions in the questions table")
    by_split = questions.partition_by("split", "subject", as_dict=True)
    rows: list[dict] = []
    for subject in chosen:
        test = _qs(by_split[("test", subject)], fl.reading)
        pool = _qs(by_split[(fl.shot_split, subject)], fl.reading)
        rendered = fl.render(subject, test, pool, num_fewshot)
        if questions_per_subject is not None:
            rendered, test = rendered[:questions_per_subject], test[:questions_per_subject]
        for r, q in zip(rendered, test):
            # a reordered flavor's row carries its shown choices, gold and choice_perm
            r.setdefault("gold", q.answer)
            r.setdefault("choices", list(q.choices))
            r.update(flavor=flavor, shot_split=fl.shot_split, num_fewshot=num_fewshot,
                     prompt_sha256=sha256_text(r["prompt"]))
            rows.append(r)
    if fl.choice_order == "identity":
        return pl.DataFrame(rows, schema=PROMPT_SCHEMA)  # the table as before issue 20
    return pl.DataFrame(rows, schema={**PROMPT_SCHEMA, "choice_perm": pl.List(pl.Int8)})


def assemble(header: str, shots: list[str], test_block: str, n_shots: int) -> str:
    """The prompt with only the first `n_shots` shots (how references shorten a prompt)."""
    return header + "".join(shots[:n_shots]) + test_block
