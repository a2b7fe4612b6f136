"""Byte-compare crfm-helm 0.5.16's MMLU prompts (bench/helm_local.py) with our `helm` flavor
(HELM cab5d89) and with the cab5d89 golden rows.

    PYTHONPATH=workflow .venv/bin/python bench/compare_helm_prompts.py /tmp/helm0516.jsonl \\
        --mmlu resources/mmlu --golden tests/golden/helm.jsonl

Per question: prompt bytes, the gold letter(s), and the request parameters (max_tokens 1,
temperature 0, no stop sequence in the request, the A-D output mapping). Exit 1 on any difference.
`--quick` (CI): only the prompt comparison, on the golden rows produced by HELM cab5d89 itself
(tests/golden/helm.jsonl), no HELM run needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "workflow") not in sys.path:
    sys.path.insert(0, str(ROOT / "workflow"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", nargs="?")
    p.add_argument("--quick", action="store_true",
                   help="compare our helm prompts with tests/golden/helm.jsonl only")
    p.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    p.add_argument("--golden", default=None, help="cab5d89 golden rows (subject, index, prompt)")
    a = p.parse_args(argv)
    from mmlu_flavors.data import LETTERS, read_local
    from mmlu_flavors.prompts import build_prompts

    if a.quick:
        return _quick(a.golden or str(ROOT / "tests" / "golden" / "helm.jsonl"), a.mmlu)
    if not a.jsonl:
        p.error("give the JSONL of bench/helm_local.py, or --quick")
    rows = [json.loads(x) for x in open(a.jsonl, encoding="utf-8") if x.strip()]
    subjects = sorted({r["subject"] for r in rows})
    ours = build_prompts(read_local(a.mmlu, subjects), "helm", 5, subjects)
    by_key = {(r["subject"], r["index"]): r for r in ours.iter_rows(named=True)}
    bad = []
    for r in rows:
        o = by_key[(r["subject"], r["index"])]
        where = f"{r['subject']}/{r['index']}"
        gold_texts = {o["choices"][o["gold"]]}
        our_gold = sorted(L for L, c in zip(LETTERS, o["choices"]) if c in gold_texts)
        if o["prompt"] != r["prompt"]:
            i = next((j for j, (x, y) in enumerate(zip(o["prompt"], r["prompt"])) if x != y),
                     min(len(o["prompt"]), len(r["prompt"])))
            bad.append(f"{where}: prompt differs at char {i}: ours {o['prompt'][i:i + 30]!r} "
                       f"helm {r['prompt'][i:i + 30]!r}")
        elif r["gold_letters"] != our_gold:
            bad.append(f"{where}: gold ours {our_gold} helm {r['gold_letters']}")
        # the request carries no stop sequence (as in cab5d89): the spec's "\n" is not passed on
        elif (r["max_tokens"], r["temperature"], r["stop_sequences"]) != (1, 0.0, []) or \
                list(r["output_mapping"]) != list(LETTERS):
            bad.append(f"{where}: request parameters {r['max_tokens']}, {r['temperature']}, "
                       f"{r['stop_sequences']}, {list(r['output_mapping'])}")
    n = len(rows)
    print(f"{a.jsonl}: {n} questions, {n - len(bad)} equal to our helm flavor (HELM cab5d89), "
          f"{len(bad)} differ")
    for m in bad[:10]:
        print("  " + m)
    if a.golden:
        gold = [json.loads(x) for x in open(a.golden, encoding="utf-8") if x.strip()]
        helm = {(r["subject"], r["index"]): r["prompt"] for r in rows}
        same = sum(helm.get((g["subject"], g["index"])) == g["prompt"] for g in gold)
        print(f"{a.golden}: {same}/{len(gold)} cab5d89 golden prompts equal to 0.5.16's")
        bad += ["golden"] * (len(gold) - same)
    return 1 if bad else 0


def _quick(golden: str, mmlu: str) -> int:
    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts

    gold = [json.loads(x) for x in open(golden, encoding="utf-8") if x.strip()]
    subjects = sorted({g["subject"] for g in gold})
    ours = {(r["subject"], r["index"]): r["prompt"]
            for r in build_prompts(read_local(mmlu, subjects), "helm", 5, subjects).iter_rows(
                named=True)}
    same = sum(ours.get((g["subject"], g["index"])) == g["prompt"] for g in gold)
    print(f"{golden}: {same}/{len(gold)} cab5d89 golden prompts equal to our helm flavor")
    return 0 if gold and same == len(gold) else 1


if __name__ == "__main__":
    raise SystemExit(main())
