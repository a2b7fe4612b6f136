"""A tiny local model and a config for running the real Snakefile in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

from conftest import BLOG_CSV, MMLU_DIR, ROOT
from conftest_models import tiny_llama
from tiny_tokenizers import bytelevel_no_bos

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def make_tiny_model(questions: pl.DataFrame, path: Path) -> Path:
    """save_pretrained a random tiny Llama with a small byte-level BPE tokenizer."""
    tok = bytelevel_no_bos(questions)
    tiny_llama(seed=3, vocab=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_config(workdir: Path, model_dir: Path, subjects: list[str], n: int,
                 **extra) -> Path:
    cfg = {
        "mmlu_source": "local", "mmlu_dir": str(MMLU_DIR),
        "flavors": ["original", "helm", "harness_e47e01b", "harness_current"],
        "num_fewshot": 5, "subjects": subjects, "questions_per_subject": n,
        "models": ["tiny-llama"],
        "model_registry": {"tiny-llama": {"source": "local", "path": str(model_dir),
                                          "dtype": "float32", "device": "cpu",
                                          "batch_size": 4, "params_b": 0.001}},
        "subjects_per_shard": 57, "threads_per_model_job": 1,
        "bootstrap_samples": 50, "bootstrap_seed": 1,
        "blog_csv": str(BLOG_CSV),
        # the attribution runs, without prompt variants (each would be one more flavor to run;
        # the variants' wiring is tested by test_attribution_variants_run)
        "attribution_variants": "none",
    }
    cfg.update(extra)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              **popen) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res
