"""GPU check of the engine: exactness and throughput on random-weight models, one JSON.

Runs where only PyTorch and transformers are installed, with no network and no weights:
models are built from configs with random weights (SmolLM2-135M's config and a ~1.1B
Llama-shaped config: TinyLlama-1.1B's shape with SmolLM2's 49,152-id vocabulary), the
requests are real MMLU prompts of all four flavors, tokenized beforehand with SmolLM2's
tokenizer (bench/gpu_prompts.json.gz, written by bench/gpu_prompts.py). Per model:

* exactness, float32 and bfloat16: `run_fast` (batched) vs `run_naive` in the same dtype on
  the first N requests of each flavor: largest |difference| of any cached value and verdict
  flips (argmax letter, argmax letter-continuation sum, argmax text-continuation sum);
* throughput (bfloat16; float32 too unless --quick): both engine modes over all requests
  of each flavor: tokens, forwards, tokens per forward (median, mean), seconds, tokens/s;
  the prefix-tree minimum of the model inputs and compute time / (minimum / raw rate);
* raw forward: the transformer body alone on random ids at batch shapes of the engine's
  budget (rows x 256, 512, 1024 tokens), best rate = the "raw forward throughput";
* a plain lm-eval-like baseline: one row per distinct (context + continuation)[:-1] input
  (left-truncated to max_length + 1 first), sorted longest first, right-padded batches of
  --baseline-batch rows with an attention mask, full `model(ids).logits`.

    bash bench/gpu_check.sh                    # on the GPU machine: < 8 min, writes gpu_check.json
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu_check_cpu.json   # smoke test

`--quick` (CI, seconds on a CPU): the first model only, 2 narrow layers, the 2 shortest
questions per flavor, float32 only, one small raw-forward shape: checks that it runs, its figures mean
nothing. The JSON carries the machine's description (bench/machine.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from pathlib import Path
from statistics import median

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

from mmlu_flavors.engine import (EngineStats, default_max_batch_tokens, run_fast,  # noqa: E402
                                 run_naive)
from mmlu_flavors.request import Request  # noqa: E402

SMOLLM2_135M = dict(  # data/models/smollm2-135m-instruct/config.json
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
    eos_token_id=2, pad_token_id=2)
LLAMA_1B = dict(  # TinyLlama-1.1B's shape, SmolLM2's vocabulary
    vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
    eos_token_id=2, pad_token_id=2)
CONFIGS = {"smollm2-135m-shape": SMOLLM2_135M, "llama-1.1b-shape": LLAMA_1B}


QUICK = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def build(cfg: dict, device: str, dtype: torch.dtype, quick: bool) -> torch.nn.Module:
    """Random weights from `cfg` (--quick: 2 narrow layers, for a CPU smoke test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(cfg, **(QUICK if quick else {}))
    rope = cfg.pop("rope_theta")
    config = LlamaConfig(**cfg, rope_parameters={"rope_type": "default", "rope_theta": rope},
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trie_nodes(seqs) -> int:
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


def minimum_tokens(reqs: list[Request]) -> int:
    """Distinct prefix-tree nodes of the model inputs (context, context + cont[:-1])."""
    return trie_nodes([r.context for r in reqs]
                      + [r.context + c[:-1] for r in reqs for c in r.continuations])


def compare(fast, naive) -> tuple[float, int, int]:
    dev, flips, n = 0.0, 0, 0
    argmax = lambda xs: max(range(len(xs)), key=lambda i: (xs[i], -i))  # noqa: E731
    for f, r in zip(fast, naive):
        pairs = [(f.greedy_logprob, r.greedy_logprob)]
        pairs += [(a, b) for a, b in zip(f.candidate_logprobs, r.candidate_logprobs)
                  if a is not None]
        pairs += [(a, b) for x, y in zip(f.token_logprobs, r.token_logprobs)
                  for a, b in zip(x, y)]
        dev = max(dev, max(abs(a - b) for a, b in pairs))
        lf = [v if v is not None else -1e30 for v in f.candidate_logprobs]
        lr = [v if v is not None else -1e30 for v in r.candidate_logprobs]
        for a, b in ((lf, lr), (f.sums[:4], r.sums[:4]), (f.sums[4:], r.sums[4:])):
            flips += argmax(a) != argmax(b)
            n += 1
    return dev, flips, n


def raw_body(model, device: str, shapes: list[tuple[int, int]], vocab: int) -> dict[str, float]:
    """Body-only forward tokens/s per (rows, width), best of 3 after a warm-up."""
    out = {}
    with torch.inference_mode():
        for rows, width in shapes:
            ids = torch.randint(3, vocab, (rows, width), device=device)
            model.model(input_ids=ids)
            sync(device)
            best = 0.0
            for _ in range(3):
                t0 = time.perf_counter()
                model.model(input_ids=ids).last_hidden_state.float().sum().item()
                best = max(best, rows * width / (time.perf_counter() - t0))
            out[f"{rows}x{width}"] = best
    return out


def baseline(model, reqs: list[Request], device: str, batch: int) -> dict:
    """lm-eval-like: one row per distinct (context + cont)[-(max_length+1):][:-1], sorted
    longest first, right-padded batches with an attention mask, full logits."""
    rows = {}
    for r in reqs:
        for c in r.continuations:
            if c:
                inp = tuple((r.context + c)[-(r.max_length + 1):][:-1])
                rows.setdefault(inp, []).append(c)
    seqs = sorted(rows, key=len, reverse=True)
    tokens = forwards = 0
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(seqs), batch):
            chunk = seqs[s:s + batch]
            width = len(chunk[0])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, q in enumerate(chunk):
                ids[i, :len(q)] = torch.tensor(q)
                mask[i, :len(q)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp = torch.log_softmax(logits.float(), dim=-1)
            for i, q in enumerate(chunk):
                for c in rows[q]:
                    tgt = torch.tensor(c, device=device)
                    lp[i, len(q) - len(c):len(q)].gather(1, tgt[:, None]).sum().item()
            tokens += len(chunk) * width
            forwards += 1
    sync(device)
    secs = time.perf_counter() - t0
    return {"tokens": tokens, "forwards": forwards, "seconds": secs,
            "tok_s": tokens / secs, "rows": len(seqs), "batch_rows": batch}


def engine_run(model, reqs, letters, mode: str, budget: int | None, device: str) -> dict:
    st = EngineStats()
    sync(device)
    run_fast(model, reqs, letters, progress=False, stats=st, mode=mode,
             max_batch_tokens=budget)
    sync(device)
    ft = st.forward_tokens
    return {"mode": st.extra.get("mode"), "tokens": st.tokens, "pad_tokens": st.pad_tokens,
            "forwards": st.forwards, "tokens_per_forward_median": median(ft),
            "tokens_per_forward_mean": st.tokens / st.forwards,
            "forwards_per_question": st.forwards / len(reqs), "seconds": st.seconds,
            "tok_s": st.tokens_per_s, "max_batch_tokens": st.extra.get("max_batch_tokens")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true",
                    help="2 narrow layers, 2 questions per flavor: checks that it runs")
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--prompts", type=Path, default=ROOT / "bench" / "gpu_prompts.json.gz")
    ap.add_argument("--naive", type=int, default=10, help="requests per flavor vs run_naive")
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--baseline-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    a = ap.parse_args()
    t_start = time.perf_counter()
    load0 = tuple(round(x, 2) for x in __import__("os").getloadavg())
    data = json.loads(gzip.open(a.prompts, "rt", encoding="utf-8").read())
    letters = data["letter_ids"]
    per_flavor = 2 if a.quick else None
    if a.quick:  # the shortest requests: full-vocabulary logits of long ones are slow on a CPU
        data["flavors"] = {f: sorted(rows, key=lambda r: len(r["context"]))
                           for f, rows in data["flavors"].items()}
    flavors = {f: [Request(r["context"], r["continuations"], r["max_length"])
                   for r in rows[:per_flavor]] for f, rows in data["flavors"].items()}
    naive_n = min(a.naive, 2) if a.quick else a.naive
    budget = a.max_batch_tokens or default_max_batch_tokens(a.device)
    report: dict = {
        "device": a.device, "quick": a.quick, "torch": torch.__version__,
        "python": platform.python_version(), "prompts": str(a.prompts.name),
        "questions_per_flavor": {f: len(r) for f, r in flavors.items()},
        "max_batch_tokens": budget, "models": {}}
    import transformers
    report["transformers"] = transformers.__version__
    if a.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
        report["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    all_reqs = [r for rs in flavors.values() for r in rs]
    minimum = {f: minimum_tokens(rs) for f, rs in flavors.items()}
    import machine

    report["machine"] = machine.describe(load0)
    for name in a.models.split(",")[:1 if a.quick else None]:
        m: dict = {"config": {**CONFIGS[name], **(QUICK if a.quick else {})}}
        report["models"][name] = m
        for dtype in (torch.float32,) if a.quick else (torch.float32, torch.bfloat16):
            dn = str(dtype).removeprefix("torch.")
            t0 = time.perf_counter()
            model = build(CONFIGS[name], a.device, dtype, a.quick)
            d: dict = {"build_s": time.perf_counter() - t0, "exactness": {}, "flavors": {}}
            m[dn] = d
            for f, rs in flavors.items():
                fast = run_fast(model, rs[:naive_n], letters, progress=False)
                naive = run_naive(model, rs[:naive_n], letters)
                dev, flips, n = compare(fast, naive)
                d["exactness"][f] = {"requests": len(fast), "max_abs_diff": dev,
                                     "verdict_flips": flips, "verdicts": n}
                print(f"{name} {dn} {f}: batched vs naive max |diff| {dev:.2e}, "
                      f"flips {flips}/{n}", flush=True)
            if dtype == torch.float32 and not a.quick and a.device.startswith("cuda") \
                    and name != next(iter(CONFIGS)):
                del model
                continue  # fp32 throughput for the small model only (time budget)
            shapes = ([(2, 128)] if a.quick else
                      sorted({(max(1, budget // w), w) for w in (256, 512, 1024)}))
            d["raw_body_tok_s"] = raw_body(model, a.device, shapes, CONFIGS[name]["vocab_size"])
            best = max(d["raw_body_tok_s"].values())
            for f, rs in flavors.items():
                d["flavors"][f] = {"minimum_tokens": minimum[f]}
                for mode in ("batched", "per_question"):
                    r = engine_run(model, rs, letters, mode, budget, a.device)
                    r["share_of_raw"] = r["tok_s"] / best
                    r["time_over_minimum_at_raw"] = r["seconds"] / (minimum[f] / best)
                    d["flavors"][f][mode] = r
                    print(f"{name} {dn} {f} {mode}: {r['tokens']:,} tokens, "
                          f"{r['forwards']} forwards, median {r['tokens_per_forward_median']:,.0f}"
                          f" tok/forward, {r['tok_s']:,.0f} tok/s ({r['share_of_raw']:.0%} of "
                          f"raw {best:,.0f}), {r['time_over_minimum_at_raw']:.2f}x min",
                          flush=True)
            b = baseline(model, all_reqs, a.device, a.baseline_batch)
            tot = {mode: sum(d["flavors"][f][mode]["seconds"] for f in flavors)
                   for mode in ("batched", "per_question")}
            b["seconds_batched_engine"] = tot["batched"]
            b["seconds_per_question_engine"] = tot["per_question"]
            b["speedup_batched_engine"] = b["seconds"] / tot["batched"]
            d["lmeval_like_baseline"] = b
            print(f"{name} {dn} baseline: {b['tokens']:,} tokens in {b['seconds']:.1f}s "
                  f"({b['tok_s']:,.0f} tok/s); batched engine {tot['batched']:.1f}s, "
                  f"per-question {tot['per_question']:.1f}s", flush=True)
            del model
            if a.device.startswith("cuda"):
                d["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.empty_cache()
    report["total_seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out} in {report['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
