"""Prompt agreement with lm-eval 0.4.13 on many questions, no model run.

lm-eval builds its contexts for our flavor's task (``lmeval_local.FLAVOR_RUNS``) with a
recording LM (constant scores; with ``--tokenizer`` its chat template is rendered by lm-eval's
own HFLM code); we build ours (``build_prompts`` + ``tokenize_row`` for the rendered text) and
compare every context and continuation list byte for byte.

    .venv/bin/python bench/compare_lmeval_prompts.py --flavor lmeval_continuation --subjects all
    .venv/bin/python bench/compare_lmeval_prompts.py --flavor lmeval_chat \\
        --tokenizer data/models/smollm2-135m-instruct --subjects all
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "workflow"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench import lmeval_local  # noqa: E402  (sets the offline flags before HF imports)

import polars as pl  # noqa: E402


def compare_prompts(flavor: str, mmlu_dir: str | Path, subjects: list[str], limit: int | None,
                    num_fewshot: int = 5, tokenizer=None) -> pl.DataFrame:
    """One row per question: subject, index, same_context, same_continuations, same_gold."""
    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.flavors import get_flavor
    from mmlu_flavors.tokenize import chat_messages, render_chat

    variant, chat, multiturn = lmeval_local.FLAVOR_RUNS[flavor]
    got = lmeval_local.lmeval_contexts(mmlu_dir, subjects, limit, num_fewshot, variant=variant,
                                       tokenizer=tokenizer, apply_chat_template=chat,
                                       fewshot_as_multiturn=multiturn)
    ours = build_prompts(read_local(mmlu_dir, subjects), flavor, num_fewshot=num_fewshot,
                         subjects=subjects, questions_per_subject=limit)
    rows = ours.to_dicts()
    mode = get_flavor(flavor).chat  # the text tokenize_row feeds (no shot is dropped here)
    texts = ([render_chat(tokenizer, chat_messages(r, len(r["shots"]), mode), flavor)
              for r in rows] if chat else [r["prompt"] for r in rows])
    ours = ours.select("subject", "index", pl.Series("our_context", texts),
                       pl.col("continuations").alias("our_continuations"),
                       pl.col("gold").cast(pl.Int64).alias("our_gold"))
    df = got.join(ours, on=["subject", "index"], how="full", coalesce=True)
    return df.select(
        "subject", "index",
        same_context=(pl.col("context") == pl.col("our_context")).fill_null(False),
        same_continuations=(pl.col("continuations") == pl.col("our_continuations")).fill_null(False),
        same_gold=(pl.col("gold") == pl.col("our_gold")).fill_null(False),
    ).sort("subject", "index")


def main(argv: list[str] | None = None) -> int:
    from mmlu_flavors.data import SUBJECTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flavor", choices=sorted(lmeval_local.FLAVOR_RUNS))
    ap.add_argument("--quick", action="store_true",
                    help="CI: lmeval_continuation on abstract_algebra x 2 questions")
    ap.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    ap.add_argument("--subjects", default="all")
    ap.add_argument("--limit", type=int, default=None, help="questions per subject (first N)")
    ap.add_argument("--num-fewshot", type=int, default=5)
    ap.add_argument("--tokenizer", help="model directory whose tokenizer renders chat")
    a = ap.parse_args(argv)
    if a.quick:
        a.flavor, a.subjects, a.limit = a.flavor or "lmeval_continuation", "abstract_algebra", 2
    if not a.flavor:
        ap.error("--flavor is required")
    subjects = list(SUBJECTS) if a.subjects == "all" else a.subjects.split(",")
    tok = None
    if a.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.tokenizer)
    t0 = time.perf_counter()
    df = compare_prompts(a.flavor, a.mmlu, subjects, a.limit, a.num_fewshot, tok)
    bad = df.filter(~(pl.col("same_context") & pl.col("same_continuations") & pl.col("same_gold")))
    print(f"flavor {a.flavor}: {df.height} questions in {df['subject'].n_unique()} subjects, "
          f"{a.num_fewshot}-shot; same context {int(df['same_context'].sum())}, same "
          f"continuations {int(df['same_continuations'].sum())}, same gold "
          f"{int(df['same_gold'].sum())}; {time.perf_counter() - t0:.0f}s")
    if bad.height:
        print(bad.head(20))
    return 0 if bad.height == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
