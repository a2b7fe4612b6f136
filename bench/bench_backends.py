"""The inference engine as a factor (not a test): the Q4 GGUF run by llama.cpp (`llama_cpp`
backend) vs its float32 dequantization run by transformers (`transformers` backend, our
batched engine), on the same token ids, questions and flavors, both embedded models.

Per model and flavor: accuracy of each engine with its flavor's own scorer, the paired
bootstrap 95% CI of the difference (questions resampled, both engines together), verdict
flips (questions one engine gets right and the other wrong), the largest |delta log-prob|
over every cached number (letters at the answer position, every continuation token);
then speed side by side in one run: wall time and tokens/s of both engines on the same
work (engines alternate flavor by flavor), and with `--server`, the `openai_completions`
backend against a llama-cpp-python server on 127.0.0.1 vs the in-process `llama_cpp`
backend on the same model inputs (seconds per request).

    PYTHONPATH=workflow python bench/bench_backends.py --quick        # seconds
    PYTHONPATH=workflow python bench/bench_backends.py --subjects 4 --questions 25 --server

Prompts: real MMLU from `--mmlu-dir` (default resources/mmlu). Results: JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

import polars as pl  # noqa: E402
import yaml  # noqa: E402

import machine  # noqa: E402

from mmlu_flavors import engine, models, reduce, stats as S  # noqa: E402
from mmlu_flavors.backends import llamacpp  # noqa: E402
from mmlu_flavors.cache import rows_from_results  # noqa: E402
from mmlu_flavors.data import Source, load_questions  # noqa: E402
from mmlu_flavors.prompts import build_prompts  # noqa: E402
from mmlu_flavors.tokenize import letter_ids, tokenize_row  # noqa: E402

FLAVORS = ["original", "helm", "harness_e47e01b", "harness_current"]
SUBJECTS = ["high_school_geography", "marketing", "abstract_algebra", "us_foreign_policy",
            "college_biology", "world_religions", "nutrition", "sociology"]


def paired_ci(pt: pl.DataFrame, pl_: pl.DataFrame, n_boot: int = 1000, seed: int = 0
              ) -> tuple[float, float, float]:
    """Accuracy difference llama_cpp - transformers (question-weighted) and its percentile 95%
    CI: the report's paired bootstrap (`stats.bootstrap_subject_means`, questions resampled
    within subjects, the same resample for both engines)."""
    both = pl.concat([pt.with_columns(model=pl.lit("a")), pl_.with_columns(model=pl.lit("b"))])
    sb = S.bootstrap_subject_means(both, ("model",), n_boot, seed)
    point, boot = sb.micro()
    d = boot[:, 1] - boot[:, 0]
    lo, hi = S.percentile_ci(d)
    return float(point[1] - point[0]), float(lo), float(hi)


def max_delta(x: pl.DataFrame, y: pl.DataFrame) -> float:
    cols = ["letter_logprobs", "letter_cont_logprobs", "text_cont_logprobs"]
    out = 0.0
    for c in cols:
        a = x[c].explode().explode() if c != "letter_logprobs" else x[c].explode()
        b = y[c].explode().explode() if c != "letter_logprobs" else y[c].explode()
        d = (a.cast(pl.Float64) - b.cast(pl.Float64)).abs().max()
        out = max(out, float(d or 0.0))
    return out


def server_overhead(gguf: Path, seqs: list[list[int]], tok, n_ctx: int) -> dict:
    """Seconds per model input: openai_completions (HTTP, llama-cpp-python server) vs the
    in-process llama_cpp evaluator, same inputs, one request in flight."""
    from mmlu_flavors.backends import openai_completions as oc

    proc, url = llamacpp.start_server(gguf, "bench", n_ctx)
    try:
        entry = {"base_url": url, "server_model": "bench",
                 "revision": "bench", "max_in_flight": 1, "max_retries": 8}
        sess = oc.Session(entry, tok)
        sess.wait_ready(60, proc)
        t = time.perf_counter()
        for s in seqs:
            sess.score(s)
        server = (time.perf_counter() - t) / len(seqs)
    finally:
        proc.terminate()
        proc.wait(30)
    llm = llamacpp.open_llama(gguf, {"n_ctx": n_ctx})
    ev = llamacpp.Evaluator(llm, engine.EngineStats())
    t = time.perf_counter()
    for s in seqs:
        llm.n_tokens = 0  # each input evaluated in full, in a cleared context
        ev.logits(s, len(s) - 1)
    local = (time.perf_counter() - t) / len(seqs)
    llm.close()
    return {"requests": len(seqs), "server_s_per_request": round(server, 4),
            "in_process_s_per_request": round(local, 4),
            "overhead_s_per_request": round(server - local, 4),
            "token_id_prompts": sess.as_ids}


def run_model(name: str, entry: dict, questions, subjects, n, workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = models.resolve_gguf(entry, workdir, name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                              dtype=torch.float32).eval()
    llm = llamacpp.open_llama(gguf, {**entry, "n_ctx": 2048})
    letters = letter_ids(tok)
    out: dict = {"flavors": {}, "speed": {b: [0.0, 0, 0.0, 0, 0]
                                          for b in ("transformers", "llama_cpp")}}
    views = {"transformers": [], "llama_cpp": []}
    for k, flavor in enumerate(FLAVORS):
        rows = build_prompts(questions, flavor, subjects=subjects,
                             questions_per_subject=n).to_dicts()
        toks = [tokenize_row(r, tok, 2048) for r in rows]
        reqs = [t.request for t in toks]
        order = ["transformers", "llama_cpp"] if k % 2 == 0 else ["llama_cpp", "transformers"]
        res = {}
        for backend in order:  # alternate which engine runs first
            st = engine.EngineStats()
            t, c = time.perf_counter(), time.process_time()
            if backend == "transformers":
                res[backend] = engine.run_fast(hf, reqs, letters, progress=False, stats=st)
            else:
                res[backend] = llamacpp.run_requests(llm, reqs, letters, st)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            sp = out["speed"][backend]
            sp[0] += wall
            sp[1] += st.tokens
            sp[2] += cpu
            sp[3] += len(reqs)
            sp[4] += st.forwards
            views[backend].append(rows_from_results(f"{name} ({backend})", rows, toks,
                                                    res[backend], letters, tok))
        tv = views["transformers"][-1]
        lv = views["llama_cpp"][-1]
        scorer = reduce.DIAGONAL[flavor]
        pt = reduce.predictions(tv, [scorer]).sort("subject", "index")
        pl_ = reduce.predictions(lv, [scorer]).sort("subject", "index")
        a = pt["correct"].to_numpy().astype(float)
        b = pl_["correct"].to_numpy().astype(float)
        diff, lo, hi = paired_ci(pt, pl_)
        out["flavors"][flavor] = {
            "scorer": scorer, "questions": len(a),
            "acc_transformers": round(a.mean(), 4), "acc_llama_cpp": round(b.mean(), 4),
            "diff": round(diff, 4), "ci95": [round(lo, 4), round(hi, 4)],
            "verdict_flips": int((a != b).sum()),
            "pred_changes": int((pt["pred"] != pl_["pred"]).fill_null(True).sum()),
            "max_abs_delta_logprob": round(max_delta(tv, lv), 4),
        }
        print(name, flavor, out["flavors"][flavor], flush=True)
    for backend, (sec, tokens, cpu, prompts, fwd) in out["speed"].items():
        # tokens: what this engine evaluated (each shares prefixes its own way), so also the
        # same work measured the same way: prompts (questions x flavors) per second
        out["speed"][backend] = {"wall_s": round(sec, 2), "cpu_s": round(cpu, 2),
                                 "prompts": prompts, "forwards": fwd, "tokens": tokens,
                                 "tokens_per_s": round(tokens / sec, 1) if sec else None,
                                 "prompts_per_s": round(prompts / sec, 2) if sec else None}
    out["speed"]["wall_ratio_llama_over_transformers"] = round(
        out["speed"]["llama_cpp"]["wall_s"] / out["speed"]["transformers"]["wall_s"], 3)
    llm.close()
    out["_gguf"], out["_tok"] = gguf, tok
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 subject x 2 questions, one model")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--questions", type=int, default=25)
    ap.add_argument("--server", action="store_true", help="also measure openai_completions")
    ap.add_argument("--mmlu-dir", default=str(ROOT / "resources" / "mmlu"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.quick:
        a.models, a.subjects, a.questions = a.models[:1], 1, 2
    registry = yaml.safe_load((ROOT / "config.yaml").read_text())["model_registry"]
    questions = load_questions(Source("local", a.mmlu_dir))
    subjects = SUBJECTS[:a.subjects]
    load0 = machine.load_now()
    result: dict = {"threads": llamacpp.threads(), "llama_cpp_python": llamacpp.version(),
                    "subjects": subjects, "questions_per_subject": a.questions, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            r = run_model(name, registry[name], questions, subjects, a.questions, Path(tmp))
            gguf, tok = r.pop("_gguf"), r.pop("_tok")
            if a.server:
                # zero-shot `original` prompts: llama-cpp-python's server sorts the whole
                # vocabulary in Python for each echoed position (minutes for a 5-shot Gemma
                # prompt), and answers HTTP 500 to echo on a prompt without BOS (SmolLM2)
                rows = build_prompts(questions, "original", num_fewshot=0, subjects=subjects,
                                     questions_per_subject=2).to_dicts()
                seqs = [list(tokenize_row(x, tok, 2048).request.context) for x in rows]
                if tok.bos_token_id is not None and seqs[0][0] == tok.bos_token_id:
                    r["server"] = server_overhead(gguf, seqs, tok, 2048)
                else:
                    r["server"] = {"skipped": "llama-cpp-python's server answers HTTP 500 to "
                                              "echo on prompts without BOS"}
                print(name, "server", r["server"], flush=True)
            result["models"][name] = r
            print(name, "speed", r["speed"], flush=True)
    out = a.out or (None if a.quick else machine.RESULTS / "bench_backends.json")
    doc = machine.write_results(out, result, quick=a.quick, load_start=load0)
    print(json.dumps(doc, indent=2))

if __name__ == "__main__":
    main()
