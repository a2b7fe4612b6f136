"""Per-question agreement of our `inspect_mmlu` flavor with inspect_evals 0.26 run on a local model.

Step 1 (the inspect venv, bench/setup_inspect.sh) runs the package's mmlu_0_shot / mmlu_5_shot
tasks on inspect_ai's Hugging Face provider::

    PYTHONPATH=workflow ~/.cache/mmlu-flavors/venvs/inspect/bin/python bench/inspect_local.py \\
        data/models/smollm2-135m-instruct resources/mmlu abstract_algebra --num-fewshot 0 5 \\
        --limit 25 --out ref.jsonl

Step 2 (project venv) runs our pipeline on the same questions (prompt table -> tokenize_row ->
run_fast -> cache rows -> reduce, scorer inspect_choice) and joins per (subject, index)::

    PYTHONPATH=workflow .venv/bin/python bench/compare_inspect.py \\
        data/models/smollm2-135m-instruct ref.jsonl [--out disagreements.csv]

Checked per question: the text the provider built (chat template or `role: content` lines)
byte for byte against ours, its ids against our context, its parsed answer against our
prediction and its C/I against our `correct`. A differing prediction counts as a tie when, on
our greedy path up to the first token where the two generations' texts part, some step's
top-2 log-prob margin is below --tie (default 1e-4): inspect generates a left-padded batch of
up to 32 prompts, whose float arithmetic differs from one unpadded prompt in the last bits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "workflow"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import polars as pl  # noqa: E402
from compare_lighteval import load_ref, our_rows  # noqa: E402

FLAVOR = "inspect_mmlu"
TIE = 1e-4


def _path_margin(model: Any, context: list[int], gen: list[int], steps: int) -> float:
    """The smallest top-2 log-prob margin over the first `steps` greedy steps of our path."""
    import torch

    ids = torch.tensor([list(context) + list(gen[:steps])])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, len(context) - 1:].float(), dim=-1)
    top = lp[:steps].topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def _first_split(tokenizer: Any, ours: list[int], theirs: str) -> int:
    """How many of our generated tokens decode to a prefix of their completion, plus one (the
    step where the two part), capped at our length."""
    for n in range(1, len(ours) + 1):
        if not theirs.startswith(tokenizer.decode(ours[:n], skip_special_tokens=True)):
            return n
    return len(ours)


def compare(ref: list[dict], cache: pl.DataFrame, tok: list, loaded: Any,
            tie: float = TIE) -> dict[str, Any]:
    from mmlu_flavors.reduce import predictions

    pred = predictions(cache, ["inspect_choice"]).select("subject", "index", "pred", "correct")
    pred_by = {(r["subject"], r["index"]): r for r in pred.to_dicts()}
    by_key = {(r["subject"], r["index"]): (r, t) for r, t in zip(cache.to_dicts(), tok)}
    out: dict[str, Any] = {"questions": 0, "prompt_equal": 0, "ids_equal": 0, "pred_equal": 0,
                           "text_equal": 0, "correct_equal": 0, "ties": 0, "disagree": []}
    for r in ref:
        key = (r["subject"], r["index"])
        o, t = by_key[key]
        p = pred_by[key]
        out["questions"] += 1
        out["prompt_equal"] += t.prompt == r["prompt"]
        out["ids_equal"] += list(t.request.context) == r["input_tokens"]
        out["text_equal"] += (o["gen_text"] or "") == r["completion"]
        ref_pred = "ABCD".index(r["answer"]) if r["answer"] in ("A", "B", "C", "D") else None
        same = p["pred"] == ref_pred
        out["pred_equal"] += same
        out["correct_equal"] += bool(p["correct"]) == (r["value"] == "C")
        if not same:
            steps = _first_split(loaded.tokenizer, o["gen_ids"], r["completion"])
            margin = _path_margin(loaded.model, t.request.context, o["gen_ids"], steps)
            near_tie = margin < tie
            out["ties"] += near_tie
            out["disagree"].append({"subject": key[0], "index": key[1], "tie": near_tie,
                                    "margin": margin, "ours_pred": p["pred"],
                                    "inspect_pred": ref_pred, "ours_text": o["gen_text"],
                                    "inspect_completion": r["completion"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("ref", nargs="+", help="JSONL from bench/inspect_local.py (same model)")
    p.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    p.add_argument("--tie", type=float, default=TIE)
    p.add_argument("--out", help="CSV of disagreeing questions")
    a = p.parse_args(argv)
    from mmlu_flavors.flavors import get_flavor
    from mmlu_flavors.models import load_model
    from mmlu_flavors.tokenize import rendering

    loaded = load_model({"source": "local", "path": a.model_dir, "dtype": "float32",
                         "device": "cpu"})
    print(f"{a.model_dir}: {FLAVOR} renders as {rendering(get_flavor(FLAVOR), loaded.tokenizer)}")
    bad, failed = [], False
    runs = [(path, k, [r for r in rows if r["num_fewshot"] == k and "index" in r])
            for path, rows in ((p, load_ref(p)) for p in a.ref)
            for k in sorted({r["num_fewshot"] for r in rows})]
    for path, k, ref in runs:
        if not ref:
            print(f"{path}: {k}-shot: no scored samples (the run failed)")
            failed = True
            continue
        cache, tok, _ = our_rows(loaded, a.mmlu, FLAVOR, k, [(r["subject"], r["index"]) for r in ref])
        res = compare(ref, cache, tok, loaded, a.tie)
        n = res["questions"]
        print(f"{path}: {FLAVOR} {k}-shot, {n} questions: prompts equal {res['prompt_equal']}/{n}, "
              f"input ids equal {res['ids_equal']}/{n}, generated text equal "
              f"{res['text_equal']}/{n}, predictions equal {res['pred_equal']}/{n} "
              f"({res['ties']} of the rest are ties < {a.tie}), correctness equal "
              f"{res['correct_equal']}/{n}")
        bad += [dict(d, file=str(path), num_fewshot=k) for d in res["disagree"]]
        failed |= (min(res["prompt_equal"], res["ids_equal"]) < n
                   or res["pred_equal"] + res["ties"] < n)
    if a.out and bad:
        pl.DataFrame(bad).write_csv(a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
