"""Per-question agreement of our lighteval_* flavors with lighteval 0.13 itself.

Step 1 (lighteval's venv, see bench/setup_lighteval.sh) dumps what the package does::

    PYTHONPATH=workflow ~/.cache/mmlu-flavors/venvs/lighteval/bin/python bench/lighteval_local.py \\
        data/models/smollm2-135m-instruct resources/mmlu abstract_algebra college_physics \\
        --task mcf --num-fewshot 5 --limit 25 --out /tmp/ref_mcf.jsonl

Step 2 (project venv) runs our pipeline on exactly those questions (prompt table ->
tokenize_row -> run_fast -> cache rows -> reduce) and joins per (subject, index)::

    PYTHONPATH=workflow .venv/bin/python bench/compare_lighteval.py \\
        data/models/smollm2-135m-instruct /tmp/ref_mcf.jsonl [--out disagreements.csv]

Checked per question: prompt bytes; the token ids fed (context, and for ``mcf`` each
continuation); for ``mcf`` |Δ loglik| of " A".." D" (our ``letter_cont_sum`` vs lighteval's
``logprobs``) and the argmax; for ``mmlu`` the generated text (ours ``gen_text`` vs
lighteval's ``text``) and exact match. A differing prediction whose top two choices (ours
or lighteval's) are within --tie (default 1e-4) is counted as a tie, not a disagreement.
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

FLAVOR_OF_TASK = {"mmlu": "lighteval_mmlu", "mcf": "lighteval_mcf"}
TIE = 1e-4


def load_ref(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def our_rows(loaded: Any, mmlu_dir: str | Path, flavor: str, num_fewshot: int,
             keys: list[tuple[str, int]]) -> tuple[pl.DataFrame, list, list[dict]]:
    """Our cache rows, tokenized requests and prompt rows for the (subject, index) questions
    (also bench/compare_helm_current.py's)."""
    from mmlu_flavors.cache import rows_from_results
    from mmlu_flavors.data import read_local
    from mmlu_flavors.engine import run_fast
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.tokenize import letter_ids, tokenize_row

    subjects = sorted({s for s, _ in keys})
    prompts = build_prompts(read_local(mmlu_dir, subjects), flavor, num_fewshot, subjects)
    want = pl.DataFrame({"subject": [s for s, _ in keys], "index": [i for _, i in keys]},
                        schema={"subject": pl.String, "index": pl.Int64})
    rows = prompts.join(want, on=["subject", "index"], how="semi").sort("subject", "index")
    prompt_rows = rows.to_dicts()
    tok = [tokenize_row(r, loaded.tokenizer, loaded.max_length) for r in prompt_rows]
    letters = letter_ids(loaded.tokenizer)
    res = run_fast(loaded.model, [t.request for t in tok], letters, progress=True)
    cache = rows_from_results("m", prompt_rows, tok, res, letters, loaded.tokenizer)
    return cache, tok, prompt_rows


def ours(loaded: Any, mmlu_dir: str | Path, flavor: str, num_fewshot: int,
         keys: list[tuple[str, int]]) -> tuple[pl.DataFrame, list]:
    """Our cache rows (and tokenized requests) for the given (subject, index) questions."""
    cache, tok, _ = our_rows(loaded, mmlu_dir, flavor, num_fewshot, keys)
    # the text the model saw: the prompt row's, or its chat rendering (lighteval_current)
    return cache.with_columns(pl.Series("prompt", [t.prompt for t in tok])), tok


def _argmax(v: list[float]) -> int:
    return max(range(len(v)), key=lambda i: (v[i], -i))


def _gap(v: list[float]) -> float:
    s = sorted(v, reverse=True)
    return s[0] - s[1]


def _cut_left(ours: list[int], theirs: list[int]) -> bool:
    """lighteval fed a left-truncated copy of our context: its last tokens, with the first
    special token kept (the tokenizer truncates the text, then adds BOS again: Gemma)."""
    if theirs == ours or len(theirs) >= len(ours) or not theirs:
        return False
    tail = ours[len(ours) - len(theirs):]
    return tail == theirs or (theirs[0] == ours[0] and tail[1:] == theirs[1:])


def compare(ref: list[dict], cache: pl.DataFrame, tok: list, tie: float = TIE) -> dict[str, Any]:
    """Agreement figures and the rows that disagree."""
    from mmlu_flavors.reduce import predictions

    task = ref[0]["task"]
    scorer = "greedy_em" if task == "mmlu" else "loglik_letter"
    pred = predictions(cache, [scorer]).select("subject", "index", "pred", "correct")
    by_key = {(r["subject"], r["index"]): (r, t) for r, t in zip(cache.to_dicts(), tok)}
    pred_by = {(r["subject"], r["index"]): r for r in pred.to_dicts()}
    out: dict[str, Any] = {"task": task, "questions": 0, "prompt_equal": 0, "ids_equal": 0,
                           "pred_equal": 0, "correct_equal": 0, "ties": 0,
                           "max_abs_dloglik": 0.0, "disagree": []}
    for r in ref:
        key = (r["subject"], r["index"])
        o, t = by_key[key]
        p = pred_by[key]
        out["questions"] += 1
        out["prompt_equal"] += o["prompt"] == r["prompt"]
        ctx = list(t.request.context)
        if task == "mcf":
            ids_ok = ctx == r["input_tokens"] == r["context_tokens"] and \
                [list(c) for c in o["letter_cont_ids"]] == r["output_tokens"]
            ours_ll, ref_ll = list(o["letter_cont_sum"]), r["logprobs"]
            d = max(abs(a - b) for a, b in zip(ours_ll, ref_ll))
            out["max_abs_dloglik"] = max(out["max_abs_dloglik"], d)
            ref_pred = _argmax(ref_ll)
            ref_correct = bool(r["metrics"]["acc"])
            near_tie = min(_gap(ours_ll), _gap(ref_ll)) < tie
            detail = {"ours": ours_ll, "lighteval": ref_ll, "abs_diff": d}
        elif _cut_left(ctx, r["input_tokens"]):
            # lighteval's generative batching truncated this prompt from the left (its token
            # budget is that of the call's longest-in-characters question + 5, see
            # docs/IMPLEMENTATIONS.md 5a): not the same input, counted apart
            out["lighteval_truncated"] = out.get("lighteval_truncated", 0) + 1
            out["questions"] -= 1
            out["prompt_equal"] -= o["prompt"] == r["prompt"]
            continue
        else:
            gen = r["output_tokens"][0]
            ids_ok = ctx == r["input_tokens"] and list(o["gen_ids"])[:len(gen)] == gen
            # lighteval stops at "\n" on plain prompts, at EOS only under a chat template
            ref_text = r["text"][0] if o["chat"] else r["text"][0].split("\n")[0]
            ref_text = ref_text.strip()
            ref_pred = "ABCD".index(ref_text) if ref_text in ("A", "B", "C", "D") else None
            ref_correct = bool(r["metrics"]["em"])
            near_tie = False  # greedy margins are not in lighteval's output
            detail = {"ours": o["gen_text"], "lighteval": r["text"][0]}
        out["ids_equal"] += ids_ok
        same = p["pred"] == ref_pred
        out["pred_equal"] += same
        out["correct_equal"] += bool(p["correct"]) == ref_correct
        if not same:
            out["ties"] += near_tie
            out["disagree"].append({"subject": key[0], "index": key[1], "tie": near_tie,
                                    "ours_pred": p["pred"], "lighteval_pred": ref_pred,
                                    "detail": json.dumps(detail)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("ref", nargs="+", help="JSONL from bench/lighteval_local.py (same model)")
    p.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    p.add_argument("--tie", type=float, default=TIE)
    p.add_argument("--out", help="CSV of disagreeing questions")
    p.add_argument("--flavor", help="our flavor to compare (default: lighteval_mmlu for task "
                   "mmlu, lighteval_mcf for mcf); lighteval_current for runs made with "
                   "bench/lighteval_local.py --chat-template auto")
    a = p.parse_args(argv)
    from mmlu_flavors.models import load_model

    loaded = load_model({"source": "local", "path": a.model_dir, "dtype": "float32",
                         "device": "cpu"})
    bad_rows, failed = [], False
    for path in a.ref:
        ref = load_ref(path)
        task, k = ref[0]["task"], ref[0]["num_fewshot"]
        flavor = a.flavor or FLAVOR_OF_TASK[task]
        cache, tok = ours(loaded, a.mmlu, flavor, k, [(r["subject"], r["index"]) for r in ref])
        res = compare(ref, cache, tok, a.tie)
        n = res["questions"]
        print(f"{path}: {flavor} {k}-shot, {n} questions: prompts equal "
              f"{res['prompt_equal']}/{n}, token ids equal {res['ids_equal']}/{n}, predictions "
              f"equal {res['pred_equal']}/{n} ({res['ties']} of the rest are ties < {a.tie}), "
              f"correctness equal {res['correct_equal']}/{n}"
              + (f", max |dloglik| {res['max_abs_dloglik']:.2e}" if task == "mcf" else "")
              + (f"; {res['lighteval_truncated']} more questions left-truncated by lighteval's "
                 "generative batching, not compared" if res.get("lighteval_truncated") else ""))
        bad_rows += [dict(d, file=str(path)) for d in res["disagree"]]
        failed |= res["prompt_equal"] < n or res["ids_equal"] < n or \
            res["pred_equal"] + res["ties"] < n
    if a.out and bad_rows:
        pl.DataFrame(bad_rows).write_csv(a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
