"""Write bench/gpu_prompts.json.gz: real MMLU requests (token ids) of all four flavors for
bench/gpu_check.py, which runs where the tokenizer, polars and the MMLU CSVs are absent.

Token ids come from the flavors' own token rules (`tokenize.tokenize_row`) with the embedded
SmolLM2-135M-Instruct tokenizer (49,152 ids), so they fit every model gpu_check builds.

    PYTHONPATH=workflow python bench/gpu_prompts.py      # ~1 min; the file is ~1 MB
    python bench/gpu_prompts.py --quick --out /tmp/p.json.gz   # CI: a small trained tokenizer,
                                                               # 1 subject x 2 questions
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

SUBJECTS = "abstract_algebra,anatomy,high_school_biology,marketing"
FLAVORS = ("original", "helm", "harness_e47e01b", "harness_current")  # what gpu_check runs


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.tokenize import letter_ids, tokenize_row

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", default=SUBJECTS)
    ap.add_argument("--questions", type=int, default=25)
    ap.add_argument("--max-length", type=int, default=2048, help="LLaMA's context")
    ap.add_argument("--tokenizer", type=Path,
                    default=ROOT / "data" / "models" / "smollm2-135m-instruct")
    ap.add_argument("--mmlu-dir", type=Path, default=ROOT / "resources" / "mmlu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_prompts.json.gz")
    ap.add_argument("--quick", action="store_true",
                    help="CI: a small BPE tokenizer trained on MMLU, 1 subject x 2 questions")
    a = ap.parse_args(argv)
    if a.quick:
        a.subjects, a.questions = "abstract_algebra", 2
    subjects = a.subjects.split(",")
    qs = read_local(a.mmlu_dir, subjects)
    if a.quick:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_tokenizers import bytelevel_no_bos

        tok, tok_name = bytelevel_no_bos(qs), "tiny byte-level BPE (--quick)"
    else:
        if not (a.tokenizer / "tokenizer.json").exists():
            sys.path.insert(0, str(ROOT / "bench"))
            from lmeval_local import smollm2_model_dir

            a.tokenizer = smollm2_model_dir()
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        tok_name = "SmolLM2-135M-Instruct (embedded GGUF, converted)"
    out = {"tokenizer": tok_name,
           "vocab_size": len(tok), "max_length": a.max_length, "subjects": subjects,
           "questions_per_subject": a.questions, "letter_ids": letter_ids(tok), "flavors": {}}
    for flavor in FLAVORS:
        prompts = build_prompts(qs, flavor, subjects=subjects, questions_per_subject=a.questions)
        rows = []
        for row in prompts.iter_rows(named=True):
            r = tokenize_row(row, tok, a.max_length).request
            rows.append({"subject": row["subject"], "index": row["index"],
                         "context": r.context, "continuations": r.continuations,
                         "max_length": r.max_length})
        out["flavors"][flavor] = rows
        print(f"{flavor}: {len(rows)} requests, "
              f"{sum(len(r['context']) for r in rows):,} context tokens")
    with gzip.open(a.out, "wt", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
