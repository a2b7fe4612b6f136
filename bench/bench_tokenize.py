"""Tokenization: the fast stage (`tokenize.tokenize_rows`) against the per-question code path
(`tokenize.tokenize_row`), id for id, on the whole of MMLU.

For each tokenizer and flavor: every selected question's context and continuation ids,
shots kept, truncation flag and prompt must be equal; prints both paths' wall and CPU times (the
per-question path is skipped with --no-reference, which then only times the fast path).

    .venv/bin/python bench/bench_tokenize.py --tokenizer DIR [--tokenizer DIR ...]
        [--flavors original,helm,harness_e47e01b,harness_current] [--subjects all]
        [--questions-per-subject N] [--json bench/results/tokenize.json]

A tokenizer DIR holds tokenizer.json (e.g. a converted model directory,
data/models/smollm2-135m-instruct); --max-length defaults to 8192 (SmolLM2's context).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "bench"))

import machine as bench_machine  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DEFAULT_FLAVORS = "original,helm,harness_e47e01b,harness_current"


def main(argv: list[str] | None = None) -> int:
    import polars as pl
    from transformers import AutoTokenizer

    from mmlu_flavors.data import SUBJECTS, load_questions, resolve_source
    from mmlu_flavors.flavors import get_flavor
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.tokenize import FastStats, tokenize_row, tokenize_rows

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", action="append")
    p.add_argument("--quick", action="store_true", help="a small tokenizer trained on MMLU "
                   "(bench/quick.py), 2 subjects x 5 questions: seconds")
    p.add_argument("--flavors", default=DEFAULT_FLAVORS)
    p.add_argument("--subjects", default="all")
    p.add_argument("--questions-per-subject", type=int)
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.quick:
        a.subjects, a.questions_per_subject = "abstract_algebra,anatomy", 5
    elif not a.tokenizer:
        p.error("--tokenizer DIR is required (or --quick)")

    subjects = list(SUBJECTS) if a.subjects == "all" else a.subjects.split(",")
    questions = load_questions(resolve_source("local", str(REPO / "resources" / "mmlu"),
                                              "cais/mmlu", None), subjects)
    load_start = bench_machine.load_now()
    out = {"results": []}
    failures = 0
    if a.quick:
        from quick import tiny_tokenizer

        tokenizers = [("tiny-bytelevel", tiny_tokenizer(subjects))]
    else:
        tokenizers = [(Path(t).name, AutoTokenizer.from_pretrained(t)) for t in a.tokenizer]
    for name, tok in tokenizers:
        total_fast = total_ref = total_cpu = 0.0
        for flavor in a.flavors.split(","):
            fl = get_flavor(flavor)
            df = build_prompts(questions, flavor)
            df = df.filter(pl.col("subject").is_in(subjects)).sort("subject", "index")
            if a.questions_per_subject:
                df = df.filter(pl.int_range(pl.len()).over("subject") < a.questions_per_subject)
            rows = df.to_dicts()
            stats = FastStats()
            t, c = time.perf_counter(), time.process_time()
            fast = []
            for s in df["subject"].unique(maintain_order=True).to_list():  # as the stage runs
                fast += tokenize_rows([r for r in rows if r["subject"] == s], tok,
                                      a.max_length, fl, stats=stats)
            t_fast, c_fast = time.perf_counter() - t, time.process_time() - c
            total_fast += t_fast
            total_cpu += c_fast
            rec = {"tokenizer": name, "flavor": flavor, "questions": len(rows),
                   "fast_seconds": round(t_fast, 2), "fast_cpu_seconds": round(c_fast, 2),
                   "stats": stats.as_dict()}
            if not a.no_reference:
                t, c = time.perf_counter(), time.process_time()
                ref = [tokenize_row(r, tok, a.max_length, fl) for r in rows]
                t_ref = time.perf_counter() - t
                rec["reference_cpu_seconds"] = round(time.process_time() - c, 2)
                total_ref += t_ref
                bad = [i for i, (x, y) in enumerate(zip(fast, ref)) if x != y]
                failures += len(bad)
                rec.update(reference_seconds=round(t_ref, 2), differing=len(bad),
                           first_differing=[(rows[i]["subject"], rows[i]["index"])
                                            for i in bad[:3]])
            out["results"].append(rec)
            print(json.dumps(rec), flush=True)
        print(f"{name}: fast {total_fast:.1f} s wall, {total_cpu:.1f} s CPU (user+sys, "
              "all threads)"
              + ("" if a.no_reference else f", per-question {total_ref:.1f} s"), flush=True)
    doc = bench_machine.write_results(a.json, out["results"], quick=a.quick,
                                      load_start=load_start)
    print("load average before/after:", load_start, doc["machine"]["load_average_end"])
    if failures:
        print(f"FAIL: {failures} questions differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
