"""Cluster resources derived from model entries (workflow/mmlu_flavors/resources.py) and what a
dry run of the real workflow with blog.yaml requests for the blog's eight models."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmlu_flavors import resources as R
from mmlu_flavors.data import SUBJECTS

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
BLOG = yaml.safe_load((ROOT / "blog.yaml").read_text())

LLAMA_7B = {"source": "hub", "hub_id": "huggyllama/llama-7b", "dtype": "float16", "params_b": 6.7}
LLAMA_65B = {"source": "hub", "hub_id": "huggyllama/llama-65b", "dtype": "float16",
             "params_b": 65.2, "device_map": "auto"}
SHARD = SUBJECTS[:8]


def test_7b_fp16_one_gpu() -> None:
    res = R.model_resources(LLAMA_7B, "original", SHARD, None)
    assert res["gpu"] == 1
    # 12.5 GiB of weights: host RAM holds one copy plus slack, well below a node
    assert 16_000 <= res["mem_mb"] <= 32_000
    assert 15 <= res["runtime"] <= 120
    assert set(res) == {"gpu", "mem_mb", "runtime"}


def test_65b_fp16_two_80gb_gpus() -> None:
    res = R.model_resources(LLAMA_65B, "harness_e47e01b", SHARD, None)
    assert res["gpu"] == 2                       # 121 GiB of weights + headroom > 80 < 160
    assert 150_000 <= res["mem_mb"] <= 200_000   # >= weights (121 GiB = 124,000 MB)
    r7 = R.model_resources(LLAMA_7B, "harness_e47e01b", SHARD, None)["runtime"]
    assert res["runtime"] >= 3 * r7               # ~10x the FLOPs per token, same fixed parts
    assert res["runtime"] <= 24 * 60
    # 40 GB GPUs: four of them
    assert R.gpu_count({**LLAMA_65B, "gpu_mem_gb": 40}) == 4


def test_weights_and_dtypes() -> None:
    assert R.weights_bytes(LLAMA_7B) == pytest.approx(13.4e9)
    assert R.weights_bytes({**LLAMA_7B, "dtype": "float32"}) == pytest.approx(26.8e9)
    assert R.weights_bytes({**LLAMA_7B, "dtype": "bfloat16"}) == R.weights_bytes(LLAMA_7B)
    assert R.weights_bytes({k: v for k, v in LLAMA_7B.items() if k != "dtype"}) == \
        pytest.approx(26.8e9)  # no dtype loads as float32 (models.load_model)


def test_cpu_entry_requests_no_gpu() -> None:
    tiny = {"source": "local", "path": "x", "dtype": "float32", "device": "cpu", "params_b": 0.001}
    res = R.model_resources(tiny, "helm", ["abstract_algebra"], 2)
    assert "gpu" not in res
    assert res["mem_mb"] <= 4000 and res["runtime"] == R.RUNTIME_MIN_MIN


def test_overrides() -> None:
    e = {**LLAMA_7B, "gpus": 2, "device_map": "auto", "mem_mb": 50000, "runtime_min": 7,
         "slurm_partition": "a100", "slurm_account": "proj", "constraint": "a100_80g"}
    assert R.model_resources(e, "helm", SHARD, None) == {
        "gpu": 2, "mem_mb": 50000, "runtime": 7, "slurm_partition": "a100",
        "slurm_account": "proj", "constraint": "a100_80g"}


def test_multi_gpu_needs_device_map() -> None:
    with pytest.raises(ValueError, match="device_map: auto"):
        R.gpu_count({k: v for k, v in LLAMA_65B.items() if k != "device_map"})
    with pytest.raises(ValueError, match="more than one node"):
        R.gpu_count({**LLAMA_65B, "dtype": "float32", "params_b": 400})


def test_runtime_follows_tokens() -> None:
    assert set(R.TOKEN_COUNTS) == {"original", "helm", "harness_e47e01b", "harness_current"}
    for table in R.TOKEN_COUNTS.values():
        assert list(table) == list(SUBJECTS)
        assert sum(q for q, _ in table.values()) == 14042
    full = R.shard_tokens("helm", SUBJECTS, None)
    assert R.shard_tokens("helm", SUBJECTS, 10) < full / 10
    big = {**LLAMA_65B, "params_b": 65.2}
    assert (R.runtime_minutes(big, R.shard_tokens("helm", ["professional_law"], None), 2)
            > R.runtime_minutes(big, R.shard_tokens("helm", ["abstract_algebra"], None), 2))


def test_blog_yaml_entries() -> None:
    blog_csv = ROOT / "resources" / "blog" / "mmlu_scores.csv"  # the shipped published table
    reg = BLOG["model_registry"]
    assert BLOG["models"] == list(reg)
    assert len(reg) == 8 and BLOG["subjects"] == "all" and BLOG["questions_per_subject"] is None
    ids = {line.split(",")[1] for line in blog_csv.read_text().splitlines()[1:] if line}
    assert {e["hub_id"] for e in reg.values()} == ids
    gpus = {m: R.gpu_count(e) for m, e in reg.items()}
    assert gpus == {"llama-65b": 2, "falcon-40b": 2, "llama-30b": 1, "gpt-neox-20b": 1,
                    "llama-13b": 1, "llama-7b": 1, "falcon-7b": 1,
                    "redpajama-incite-7b-base": 1}
    assert {m for m, e in reg.items() if e.get("device_map") == "auto"} == \
        {"llama-65b", "falcon-40b", "llama-30b"}


def _dry_run(tmp_path: Path, *extra: str) -> str:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), str(ROOT / "blog.yaml"), *extra]
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "MMLU_SLURM_GPU_PARTITION": "gpu"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def logits_jobs(out: str) -> list[dict]:
    """(wildcards, resources) of each logits job printed by a dry run."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        if not block.startswith("rule logits:"):
            continue
        wc = dict(kv.split("=", 1) for kv in
                  re.search(r"wildcards: (.*)", block).group(1).split(", "))
        res = dict(kv.split("=", 1) for kv in
                   re.search(r"resources: (.*)", block).group(1).split(", "))
        jobs.append({**wc, **res})
    return jobs


def _check_blog_jobs(jobs: list[dict]) -> None:
    assert len(jobs) == 8 * 4 * 8  # models x flavors x shards of 8 subjects
    by_model = {}
    for j in jobs:
        by_model.setdefault(j["model"], []).append(j)
    assert set(by_model) == set(BLOG["models"])
    for m, js in by_model.items():
        assert {j.get("gpu") for j in js} == {str(R.gpu_count(BLOG["model_registry"][m]))}, m
        assert all(j["slurm_partition"] == "gpu" for j in js)
    r65 = [int(j["runtime"]) for j in by_model["llama-65b"]]
    r7 = [int(j["runtime"]) for j in by_model["llama-7b"]]
    r7_of = {(j["flavor"], j["shard"]): int(j["runtime"]) for j in by_model["llama-7b"]}
    assert all(int(j["runtime"]) > r7_of[j["flavor"], j["shard"]]
               for j in by_model["llama-65b"])
    assert sum(r65) > 3 * sum(r7) and max(r65) <= 24 * 60
    assert int(by_model["llama-65b"][0]["mem_mb"]) > 124_000
    assert 16_000 < int(by_model["llama-7b"][0]["mem_mb"]) < 32_000


def test_dry_run_blog_resources(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--cores", "1")
    _check_blog_jobs(logits_jobs(out))
    # (the data and score stages are localrules; a dry run does not show that, the SLURM
    # test counts the submitted jobs instead)


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm not installed")
def test_dry_run_blog_with_slurm_profile(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--profile", str(ROOT / "profiles" / "slurm"))
    _check_blog_jobs(logits_jobs(out))
