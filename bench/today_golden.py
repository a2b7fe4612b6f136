"""Select golden rows for tests/golden from the real packages' runs of today's flavors.

The first N rows per shot count of a model's reference runs, copied as the package wrote them
(never edited)::

    python bench/today_golden.py helm smollm2-135m-instruct $OUT/helm_smollm2-135m-instruct_05.jsonl
    python bench/today_golden.py lighteval gemma-3-270m $OUT/le_gemma-3-270m_?.jsonl

helm: rows of bench/helm_current_local.py (crfm-helm 0.5.16) -> today_helm_<model>.jsonl;
lighteval: rows of bench/lighteval_local.py --chat-template auto (lighteval 0.13) ->
today_lighteval_<model>.jsonl; inspect: rows of bench/inspect_local.py (inspect_evals 0.26) ->
today_inspect_<model>.jsonl (scored samples only). tests/golden/README.md lists the commands that made them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
ROWS = 6  # per shot count


def select(paths: list[str], model: str, n: int = ROWS) -> list[dict]:
    out, seen = [], {}
    for p in paths:
        for line in open(p, encoding="utf-8"):
            if not line.strip():
                continue
            r = json.loads(line)
            if "index" not in r:  # a failed run's summary line (bench/inspect_local.py)
                continue
            k = r["num_fewshot"]
            if seen.get(k, 0) < n:
                seen[k] = seen.get(k, 0) + 1
                out.append(dict(r, model=model))
    return sorted(out, key=lambda r: (r["num_fewshot"], r["subject"], r["index"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=("helm", "lighteval", "inspect"))
    p.add_argument("model")
    p.add_argument("jsonl", nargs="+")
    p.add_argument("--rows", type=int, default=ROWS)
    a = p.parse_args(argv)
    rows = select(a.jsonl, a.model, a.rows)
    out = GOLDEN / f"today_{a.tool}_{a.model}.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
