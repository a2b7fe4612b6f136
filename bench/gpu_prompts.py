"""Write bench/gpu_prompts.json.gz: real MMLU requests (token ids) of all four flavors for
bench/gpu_check.py, which runs where the tokenizer, polars and the MMLU CSVs are absent.

Token ids come from the flavors' own token rules (`tokenize.tokenize_row`) with the embedded
SmolLM2-135M-Instruct tokenizer (49,152 ids), so they fit every model gpu_check builds.

    PYTHONPATH=workflow python bench/gpu_prompts.py      # ~1 min; the file is ~1 MB
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


def main() -> None:
    from transformers import AutoTokenizer

    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.reduce import FLAVORS
    from mmlu_flavors.tokenize import letter_ids, tokenize_row

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", default=SUBJECTS)
    ap.add_argument("--questions", type=int, default=25)
    ap.add_argument("--max-length", type=int, default=2048, help="LLaMA's context")
    ap.add_argument("--tokenizer", type=Path,
                    default=ROOT / "data" / "models" / "smollm2-135m-instruct")
    ap.add_argument("--mmlu-dir", type=Path, default=ROOT / "resources" / "mmlu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_prompts.json.gz")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    subjects = a.subjects.split(",")
    qs = read_local(a.mmlu_dir, subjects)
    out = {"tokenizer": "SmolLM2-135M-Instruct (embedded GGUF, converted)",
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
