"""Byte-compare our lighteval_* prompts with lighteval's own, on every question dumped.

Input: JSONL written by ``bench/lighteval_local.py`` (any mode; ``--prompts-only`` dumps
every test question without a model). For each row, our flavor (``lighteval_mmlu`` for
task ``mmlu``, ``lighteval_mcf`` for ``mcf``) renders the same subject with the same number
of shots, and the prompt string, the shot rows (CSV rows, in prompt order), the scored
continuation strings and the gold index must be equal::

    PYTHONPATH=workflow .venv/bin/python bench/compare_lighteval_prompts.py \\
        --mmlu resources/mmlu /tmp/le/prompts_mmlu_5.jsonl ...

Prints, per file, questions compared and how many differ (first few shown); exit 1 if any.
`--quick` (CI) compares the rows lighteval itself recorded in tests/golden/lighteval_prompts.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "workflow") not in sys.path:
    sys.path.insert(0, str(ROOT / "workflow"))

FLAVOR_OF_TASK = {"mmlu": "lighteval_mmlu", "mcf": "lighteval_mcf"}


def load_rows(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(rows: list[dict], questions) -> tuple[int, list[str]]:
    """(questions compared, messages for every mismatch)."""
    from mmlu_flavors.prompts import build_prompts

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["num_fewshot"]), []).append(r)
    n, bad = 0, []
    for (task, k), group in sorted(groups.items()):
        subjects = sorted({r["subject"] for r in group})
        ours = build_prompts(questions, FLAVOR_OF_TASK[task], num_fewshot=k, subjects=subjects)
        by_key = {(r["subject"], r["index"]): r for r in ours.iter_rows(named=True)}
        for r in group:
            n += 1
            o = by_key.get((r["subject"], r["index"]))
            where = f"{task} {k}-shot {r['subject']}/{r['index']}"
            if o is None:
                bad.append(f"{where}: no prompt of ours")
                continue
            if o["prompt"] != r["prompt"]:
                i = next((j for j, (a, b) in enumerate(zip(o["prompt"], r["prompt"])) if a != b),
                         min(len(o["prompt"]), len(r["prompt"])))
                bad.append(f"{where}: prompt differs at char {i}: ours {o['prompt'][i:i + 40]!r} "
                           f"lighteval {r['prompt'][i:i + 40]!r}")
            elif list(o["shot_rows"]) != r["fewshot_index"]:
                bad.append(f"{where}: shots ours {list(o['shot_rows'])} lighteval {r['fewshot_index']}")
            elif list(o["continuations"]) != r["choices"] or int(o["gold"]) != r["gold"]:
                bad.append(f"{where}: continuations/gold differ")
    return n, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", nargs="*")
    p.add_argument("--quick", action="store_true",
                   help="compare tests/golden/lighteval_prompts.jsonl (lighteval's own rows)")
    p.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    a = p.parse_args(argv)
    from mmlu_flavors.data import read_local

    if a.quick:
        a.jsonl = a.jsonl or [str(ROOT / "tests" / "golden" / "lighteval_prompts.jsonl")]
    if not a.jsonl:
        p.error("give JSONL files of bench/lighteval_local.py, or --quick")
    subjects = sorted({r["subject"] for path in a.jsonl for r in load_rows(path)})
    questions = read_local(a.mmlu, subjects)
    failed = False
    for path in a.jsonl:
        n, bad = compare(load_rows(path), questions)
        print(f"{path}: {n} questions compared, {n - len(bad)} byte-equal, {len(bad)} differ")
        for m in bad[:10]:
            print("  " + m)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
