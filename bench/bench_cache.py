"""What the logits cache saves: the main job from empty, grown, from scratch, after a hint edit.

Runs the real Snakefile (`snakemake --cores N`) in fresh work directories and reads the
questions each logits job computed and reused from `reports/cache_summary.csv`:

1. `empty`   the selection (default: the embedded default, first 12 questions) from an empty cache;
2. `grown`   the same directory grown to `--grow` questions per subject;
3. `scratch` a fresh directory computing the grown selection from empty (what 2 would cost
             without the cache);
4. `hint`    in the first directory, every resource hint of every model edited (batch size,
             token budget, parameters, GPUs, memory, runtime, partition, threads, checkpoint
             interval): `snakemake -n` and then a real run, which must run no model job.

Converted GGUF models are shared between the directories (`data/models` is linked), so the
figures are the cache's, not the one-off conversion's.

    .venv/bin/python bench/bench_cache.py --models smollm2-135m-instruct --out bench/results/cache.json

No --quick: four real Snakemake runs take minutes even on a tiny model; tests/test_workflow.py
and tests/test_cache_store.py assert the same counts in CI (tests/test_bench_quick.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _run(work: Path, cores: int, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory",
                          str(work), "--configfile", str(work / "config.yaml"),
                          "--cores", str(cores), *args],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise SystemExit(f"snakemake failed in {work}:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t, res.stdout + res.stderr


def _counts(work: Path) -> dict:
    s = pl.read_csv(work / "reports/cache_summary.csv")
    return {"computed": int(s["computed"].sum()), "reused": int(s["reused"].sum()),
            "logits_jobs": s.height}


def _workdir(base: Path, name: str, cfg: dict) -> Path:
    work = base / name
    (work / "data").mkdir(parents=True)
    models = ROOT / "data" / "models"
    if models.is_dir():
        (work / "data" / "models").symlink_to(models)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--models", nargs="*", help="default: the config's")
    p.add_argument("--subjects", nargs="*", help="default: the config's")
    p.add_argument("--grow", type=int, default=25)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the work directories")
    p.add_argument("--out", help="write the figures as JSON")
    a = p.parse_args()

    cfg = yaml.safe_load(Path(a.config).read_text())
    if a.models:
        cfg["models"] = a.models
    if a.subjects:
        cfg["subjects"] = a.subjects
    for key in ("mmlu_dir", "blog_csv"):  # relative to the checkout, not the work directory
        if cfg.get(key) and not Path(cfg[key]).is_absolute():
            cfg[key] = str((ROOT / cfg[key]).resolve())
    base = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    res: dict = {"models": cfg["models"], "subjects": cfg["subjects"],
                 "questions_per_subject": cfg["questions_per_subject"], "grow": a.grow,
                 "cores": a.cores, "load_average": os.getloadavg()}
    try:
        work = _workdir(base, "main", cfg)
        secs, _ = _run(work, a.cores)
        res["empty"] = {"seconds": round(secs, 1), **_counts(work)}
        secs, out = _run(work, a.cores, "--config", f"questions_per_subject={a.grow}")
        res["grown"] = {"seconds": round(secs, 1), **_counts(work)}
        scratch = _workdir(base, "scratch", {**cfg, "questions_per_subject": a.grow})
        secs, _ = _run(scratch, a.cores)
        res["scratch"] = {"seconds": round(secs, 1), **_counts(scratch)}

        edited = json.loads(json.dumps(cfg))
        for entry in edited["model_registry"].values():
            entry.update(batch_size=3, max_batch_tokens=4096, params_b=70.0, gpus=4,
                         mem_mb=99999, runtime_min=600, slurm_partition="other",
                         slurm_account="acct", constraint="h100")
        edited.update(threads_per_model_job=1, checkpoint_questions=7,
                      questions_per_subject=a.grow)
        (work / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        secs, out = _run(work, a.cores, "-n")
        res["hint_dry_run"] = {"seconds": round(secs, 1),
                               "nothing_to_be_done": "Nothing to be done" in out}
        secs, out = _run(work, a.cores)
        res["hint_run"] = {"seconds": round(secs, 1),
                           "model_jobs_run": out.count("rule logits:") + out.count("rule convert_gguf:")}
        res["load_average_after"] = os.getloadavg()
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if a.out:  # with the machine's description (bench/machine.py)
        machine.write_results(a.out, res, load_start=tuple(res["load_average"]))


if __name__ == "__main__":
    main()
