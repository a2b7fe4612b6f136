"""Select golden rows for tests/golden from lighteval's own output (bench/lighteval_local.py).

Prompt rows (no model): for each SUBJECT, test rows PROMPT_INDICES, from ``--prompts-only``
dumps (tasks mmlu and mcf, 0 and 5 shots)::

    python bench/lighteval_golden.py prompts /tmp/le/prompts_*_*.jsonl

Model rows: the first N rows of each (task, shots) of a model's reference runs::

    python bench/lighteval_golden.py model smollm2-135m-instruct /tmp/le/ref_smollm2-*.jsonl

Rows are copied as lighteval wrote them (prompt, shot rows, token ids, log-probs, generated
text, metric), never edited; tests/golden/README.md lists the commands that made them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
# college_mathematics: dev row 2 (a shot in every 5-shot prompt) holds "\r\n"; college_physics
# holds "\r" only in val (unused by lighteval), kept to show its prompts stay plain
SUBJECTS = ("abstract_algebra", "college_mathematics", "college_physics", "us_foreign_policy")
PROMPT_INDICES = (0, 1, 2)
MODEL_ROWS = 4  # per (task, shots)


def _read(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        rows += [json.loads(x) for x in open(p, encoding="utf-8") if x.strip()]
    return rows


def _write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(rows)} rows -> {out}")


def prompt_rows(paths: list[str]) -> list[dict]:
    keep = [{k: r[k] for k in ("task", "num_fewshot", "subject", "index", "prompt",
                               "fewshot_index", "choices", "gold")}
            for r in _read(paths)
            if r["subject"] in SUBJECTS and r["index"] in PROMPT_INDICES]
    return sorted(keep, key=lambda r: (r["task"], r["num_fewshot"], r["subject"], r["index"]))


def model_rows(model: str, paths: list[str]) -> list[dict]:
    out, seen = [], {}
    for r in _read(paths):
        key = (r["task"], r["num_fewshot"])
        if seen.get(key, 0) < MODEL_ROWS:
            seen[key] = seen.get(key, 0) + 1
            out.append(dict(r, model=model))
    return sorted(out, key=lambda r: (r["task"], r["num_fewshot"], r["subject"], r["index"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a1 = sub.add_parser("prompts")
    a1.add_argument("jsonl", nargs="+")
    a2 = sub.add_parser("model")
    a2.add_argument("model")
    a2.add_argument("jsonl", nargs="+")
    a = p.parse_args(argv)
    if a.what == "prompts":
        _write(prompt_rows(a.jsonl), GOLDEN / "lighteval_prompts.jsonl")
    else:
        _write(model_rows(a.model, a.jsonl), GOLDEN / f"lighteval_{a.model}.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
