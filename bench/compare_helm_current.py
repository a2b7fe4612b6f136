"""Per-question agreement of our `helm_current` flavor with crfm-helm 0.5.16 run on a local model.

Step 1 (the helm venv, bench/setup_helm.sh) runs HELM's prompt path and Hugging Face client::

    ~/.cache/mmlu-flavors/venvs/helm/bin/python bench/helm_current_local.py data/models/smollm2-135m-instruct \\
        resources/mmlu abstract_algebra college_physics --limit 25 --num-fewshot 5 --out ref.jsonl

Step 2 (project venv) runs our pipeline on the same questions (prompt table -> tokenize_row ->
run_fast -> cache rows -> reduce, scorer greedy_token) and joins per (subject, index)::

    PYTHONPATH=workflow .venv/bin/python bench/compare_helm_current.py \\
        data/models/smollm2-135m-instruct ref.jsonl [--out disagreements.csv]

Checked per question: the plain prompt (HELM's ``request.prompt``) and the text its client
sends (``get_prompt``: the chat-wrapped prompt when the tokenizer has a template) byte for
byte against ours; the ids its server tokenizes against our context; the stripped completion
mapped through HELM's output mapping against our prediction, and HELM's ``exact_match``
against our ``correct``. A differing prediction whose greedy margin (our top-2 log-probs) is
below --tie (default 1e-4) counts as a tie. Also checked: HELM's too-long policy had nothing to
do (plain prompt tokens + 1 <= the deployment's max_sequence_length), since the reference
runner's window service is a stand-in that says every prompt fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "workflow"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import polars as pl  # noqa: E402
from compare_lighteval import load_ref, our_rows  # noqa: E402

FLAVOR = "helm_current"
TIE = 1e-4


def ours(loaded: Any, mmlu_dir: str | Path, num_fewshot: int, keys: list[tuple[str, int]],
         flavor: str = FLAVOR) -> tuple[pl.DataFrame, list, list[dict]]:
    """Our cache rows, tokenized requests and prompt rows for the (subject, index) questions."""
    return our_rows(loaded, mmlu_dir, flavor, num_fewshot, keys)


def compare(ref: list[dict], cache: pl.DataFrame, tok: list, prompt_rows: list[dict],
            tokenizer: Any, tie: float = TIE) -> dict[str, Any]:
    from mmlu_flavors.reduce import predictions

    pred = predictions(cache, ["greedy_token"]).select("subject", "index", "pred", "correct")
    pred_by = {(r["subject"], r["index"]): r for r in pred.to_dicts()}
    by_key = {(r["subject"], r["index"]): (r, t, p)
              for r, t, p in zip(cache.to_dicts(), tok, prompt_rows)}
    out: dict[str, Any] = {"questions": 0, "prompt_equal": 0, "client_prompt_equal": 0,
                           "ids_equal": 0, "pred_equal": 0, "correct_equal": 0, "ties": 0,
                           "fits": 0, "chat": 0, "disagree": []}
    for r in ref:
        key = (r["subject"], r["index"])
        o, t, prow = by_key[key]
        p = pred_by[key]
        out["questions"] += 1
        out["chat"] += bool(r["apply_chat_template"])
        out["prompt_equal"] += prow["prompt"] == r["prompt"]
        out["client_prompt_equal"] += t.prompt == r["client_prompt"]
        out["ids_equal"] += list(t.request.context) == r["input_tokens"]
        plain = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        out["fits"] += len(plain) + r["max_tokens"] <= r["max_sequence_length"]
        # HELM's output mapping is letter -> choice text; its prediction is the stripped
        # completion when that is one of the mapping's letters
        letter = r["completion"].strip()
        ref_pred = "ABCD".index(letter) if letter in r["output_mapping"] else None
        same = p["pred"] == ref_pred
        out["pred_equal"] += same
        out["correct_equal"] += bool(p["correct"]) == bool(r["exact_match"])
        if not same:
            lp = sorted(o["topk_logprobs"], reverse=True)
            near_tie = len(lp) > 1 and lp[0] - lp[1] < tie
            out["ties"] += near_tie
            out["disagree"].append({"subject": key[0], "index": key[1], "tie": near_tie,
                                    "ours_pred": p["pred"], "helm_pred": ref_pred,
                                    "ours_greedy": o["greedy_text"],
                                    "helm_completion": r["completion"],
                                    "helm_tokens": json.dumps(r["generated_tokens"])})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("ref", nargs="+", help="JSONL from bench/helm_current_local.py (same model)")
    p.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    p.add_argument("--tie", type=float, default=TIE)
    p.add_argument("--out", help="CSV of disagreeing questions")
    a = p.parse_args(argv)
    from mmlu_flavors.models import load_model
    from mmlu_flavors.tokenize import rendering
    from mmlu_flavors.flavors import get_flavor

    loaded = load_model({"source": "local", "path": a.model_dir, "dtype": "float32",
                         "device": "cpu"})
    print(f"{a.model_dir}: {FLAVOR} renders as {rendering(get_flavor(FLAVOR), loaded.tokenizer)}")
    bad, failed = [], False
    # one file may hold several shot counts (helm_current_local.py --num-fewshot 0 5)
    runs = [(path, k, [r for r in rows if r["num_fewshot"] == k])
            for path, rows in ((p, load_ref(p)) for p in a.ref)
            for k in sorted({r["num_fewshot"] for r in rows})]
    for path, k, ref in runs:
        cache, tok, prows = ours(loaded, a.mmlu, k, [(r["subject"], r["index"]) for r in ref])
        res = compare(ref, cache, tok, prows, loaded.tokenizer, a.tie)
        n = res["questions"]
        print(f"{path}: {FLAVOR} {k}-shot, {n} questions (HELM applied the chat template to "
              f"{res['chat']}): plain prompts equal {res['prompt_equal']}/{n}, client prompts "
              f"equal {res['client_prompt_equal']}/{n}, input ids equal {res['ids_equal']}/{n}, "
              f"predictions equal {res['pred_equal']}/{n} ({res['ties']} of the rest are ties "
              f"< {a.tie}), correctness equal {res['correct_equal']}/{n}, fit without the "
              f"too-long policy {res['fits']}/{n}")
        bad += [dict(d, file=str(path)) for d in res["disagree"]]
        failed |= (min(res["prompt_equal"], res["client_prompt_equal"], res["ids_equal"],
                       res["fits"]) < n or res["pred_equal"] + res["ties"] < n)
    if a.out and bad:
        pl.DataFrame(bad).write_csv(a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
