"""Tokenization: the fast stage (`tokenize.tokenize_rows`) against the per-question code path
(`tokenize.tokenize_row`), id for id, on the whole of MMLU.

For each tokenizer and flavor: every selected question's context and continuation ids,
shots kept, truncation flag and prompt must be equal; prints both paths' wall times (the
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
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

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
    p.add_argument("--tokenizer", action="append", required=True)
    p.add_argument("--flavors", default=DEFAULT_FLAVORS)
    p.add_argument("--subjects", default="all")
    p.add_argument("--questions-per-subject", type=int)
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--json")
    a = p.parse_args(argv)

    subjects = list(SUBJECTS) if a.subjects == "all" else a.subjects.split(",")
    questions = load_questions(resolve_source("local", str(REPO / "resources" / "mmlu"),
                                              "cais/mmlu", None), subjects)
    out = {"machine": f"{platform.machine()} {_cpu()} x{os.cpu_count()}",
           "load_before": os.getloadavg(), "results": []}
    failures = 0
    for tdir in a.tokenizer:
        tok = AutoTokenizer.from_pretrained(tdir)
        name = Path(tdir).name
        total_fast = total_ref = 0.0
        for flavor in a.flavors.split(","):
            fl = get_flavor(flavor)
            df = build_prompts(questions, flavor)
            df = df.filter(pl.col("subject").is_in(subjects)).sort("subject", "index")
            if a.questions_per_subject:
                df = df.filter(pl.int_range(pl.len()).over("subject") < a.questions_per_subject)
            rows = df.to_dicts()
            stats = FastStats()
            t = time.perf_counter()
            fast = []
            for s in df["subject"].unique(maintain_order=True).to_list():  # as the stage runs
                fast += tokenize_rows([r for r in rows if r["subject"] == s], tok,
                                      a.max_length, fl, stats=stats)
            t_fast = time.perf_counter() - t
            total_fast += t_fast
            rec = {"tokenizer": name, "flavor": flavor, "questions": len(rows),
                   "fast_seconds": round(t_fast, 2), "stats": stats.as_dict()}
            if not a.no_reference:
                t = time.perf_counter()
                ref = [tokenize_row(r, tok, a.max_length, fl) for r in rows]
                t_ref = time.perf_counter() - t
                total_ref += t_ref
                bad = [i for i, (x, y) in enumerate(zip(fast, ref)) if x != y]
                failures += len(bad)
                rec.update(reference_seconds=round(t_ref, 2), differing=len(bad),
                           first_differing=[(rows[i]["subject"], rows[i]["index"])
                                            for i in bad[:3]])
            out["results"].append(rec)
            print(json.dumps(rec), flush=True)
        print(f"{name}: fast {total_fast:.1f} s"
              + ("" if a.no_reference else f", per-question {total_ref:.1f} s"), flush=True)
    out["load_after"] = os.getloadavg()
    print("load average before/after:", out["load_before"], out["load_after"])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    if failures:
        print(f"FAIL: {failures} questions differ", file=sys.stderr)
        return 1
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
