"""Cluster resources derived from model entries (workflow/mmlu_flavors/resources.py) and what a
dry run of the real workflow with blog.yaml requests for the blog's eight models."""

from __future__ import annotations

import importlib.util
import math
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
    assert res["runtime"] > r7                    # 7B sits at the 15-minute floor here
    t, q = R.shard_tokens("harness_e47e01b", SHARD, None), R.shard_questions(SHARD, None)
    f = R.shard_forwards("harness_e47e01b", SHARD, None)
    assert (R.compute_seconds(LLAMA_65B, t, q, 2, f)   # ~10x the FLOPs per token
            >= 3 * R.compute_seconds(LLAMA_7B, t, q, 1, f))
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
    # the four 2023 flavors, plus the default attribution variants (attr_*)
    assert set(R.COUNTED_FLAVORS) == {"original", "helm", "harness_e47e01b", "harness_current"}
    assert set(R.COUNTED_FLAVORS) <= set(R.TOKEN_COUNTS)
    assert all(f in R.COUNTED_FLAVORS or f.startswith("attr_") for f in R.TOKEN_COUNTS)
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
    from mmlu_flavors.plan import load_config, run_flavors

    flavors = run_flavors(load_config([ROOT / "blog.yaml"], ROOT))  # + attribution variants
    assert len(jobs) == 8 * len(flavors) * 8  # models x flavors x shards of 8 subjects
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
    # 7B jobs mostly sit at the 15-minute floor, so the ratio of the sums is below the FLOPs'
    assert sum(r65) > 2 * sum(r7) and max(r65) <= 24 * 60
    assert int(by_model["llama-65b"][0]["mem_mb"]) > 124_000
    assert 16_000 < int(by_model["llama-7b"][0]["mem_mb"]) < 32_000
    # docs/cluster.md's resource table (bench/doc_figures.py) is what this dry run requests
    doc = (ROOT / "docs" / "cluster.md").read_text()
    block = doc[doc.index("<!-- BEGIN figures:resources"):doc.index("<!-- END figures:resources")]
    for line in block.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        js = by_model[cells[0]]
        runtimes = [int(j["runtime"]) for j in js]
        assert (len(js), cells[5], cells[6]) == (int(cells[3]), js[0]["mem_mb"],
                                                 f"{min(runtimes)}-{max(runtimes)}"), cells


@pytest.mark.slow  # runs Snakemake
def test_dry_run_blog_resources(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--cores", "1")
    _check_blog_jobs(logits_jobs(out))
    # (the data and score stages are localrules; a dry run does not show that, the SLURM
    # test counts the submitted jobs instead)


@pytest.mark.slow  # runs Snakemake
@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm not installed")
def test_dry_run_blog_with_slurm_profile(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--profile", str(ROOT / "profiles" / "slurm"))
    _check_blog_jobs(logits_jobs(out))


# ---------------------------------------------------------------- retries

def test_retries_grow_runtime_and_memory_up_to_a_cap() -> None:
    base = R.model_resources(LLAMA_7B, "helm", SHARD, None)
    tries = [R.model_resources(LLAMA_7B, "helm", SHARD, None, attempt=a) for a in (1, 2, 3)]
    assert tries[0] == base
    assert [t["runtime"] for t in tries] == [base["runtime"], 2 * base["runtime"],
                                             4 * base["runtime"]]
    assert tries[1]["mem_mb"] == math.ceil(base["mem_mb"] * 1.5 / 100) * 100
    assert tries[2]["mem_mb"] == 2 * base["mem_mb"]            # default cap: twice the first
    capped = R.model_resources(LLAMA_7B, "helm", SHARD, None, attempt=9, max_runtime_min=100,
                               max_mem_mb=30_000)
    assert capped["runtime"] == 100 and capped["mem_mb"] == 30_000
    # an entry's own runtime_min grows too (it may simply be too short)
    assert R.model_resources({**LLAMA_7B, "runtime_min": 1}, "helm", SHARD, None,
                             attempt=3)["runtime"] == 4
    # a cap below the first request never shrinks it
    assert R.grown_runtime(300, 2, max_runtime_min=100) == 300


# ---------------------------------------------------------------- learned resources

def job_metrics(**over) -> dict:
    """A metrics file as `mmlu-flavors logits` writes it (the keys of cache.job_metrics)."""
    m = {"model": "llama-7b", "slug": "llama-7b", "flavor": "helm", "shard": "part00",
         "selection": "all", "subjects": SHARD, "questions": 1076, "computed": 1076,
         "reused": 0, "tokens": 0, "forward_seconds": 0.0, "tokens_per_s": None,
         "load_seconds": 95.0, "wall_seconds": 0.0, "peak_host_mem_mb": 9000.0,
         "peak_gpu_mem_mb": 15000.0, "device": "cuda", "device_name": "NVIDIA A100-SXM4-80GB",
         "n_gpus": 1, "dtype": "float16", "hostname": "gpu001", "slurm_job_id": "17",
         "finished": "2026-11-28T10:00:00+0000"}
    m.update(over)
    if "tokens" not in over:   # 1.1 model tokens per TOKEN_COUNTS token
        m["tokens"] = int(R.shard_tokens(m["flavor"], m["subjects"], R.selection_n(m["selection"]))
                          / R.TOKENIZER_FACTOR * 1.1 * m["computed"] / m["questions"])
    if "forward_seconds" not in over:
        m["forward_seconds"] = m["tokens"] / over.get("tokens_per_s", 4000.0)
    m["tokens_per_s"] = m["tokens"] / m["forward_seconds"] if m["forward_seconds"] else None
    if "wall_seconds" not in over:
        m["wall_seconds"] = m["load_seconds"] + m["forward_seconds"] + 0.02 * m["questions"]
    return m


def test_learned_runtime_and_memory_from_metrics() -> None:
    m = job_metrics(tokens_per_s=300.0)  # a slow GPU: runtimes above the floor
    meas = R.measured([m], LLAMA_7B, "helm")
    assert meas is not None and meas.jobs == 1 and meas.flavor_matched
    assert meas.tokens_per_s == pytest.approx(300.0)
    assert meas.token_ratio == pytest.approx(1.1, rel=1e-3)     # the model's own tokenizer
    assert meas.overhead_s_per_question == pytest.approx(0.02, rel=1e-3)
    other = SUBJECTS[8:16]
    res = R.model_resources(LLAMA_7B, "helm", other, None, metrics=[m])
    tokens = R.shard_tokens("helm", other, None) / R.TOKENIZER_FACTOR * 1.1
    seconds = 95.0 + tokens / 300.0 + 0.02 * R.shard_questions(other, None)
    minutes = math.ceil(1.25 * seconds / 60) + 10
    assert res["runtime"] == max(15, 5 * math.ceil(minutes / 5))
    assert res["runtime"] != R.model_resources(LLAMA_7B, "helm", other, None)["runtime"]
    assert res["mem_mb"] == math.ceil((9000 * 1.25 + 1024) / 100) * 100
    assert res["gpu"] == 1                                          # GPUs stay as derived
    # ten times slower hardware: about ten times the compute part
    slow = R.model_resources(LLAMA_7B, "helm", other, None,
                             metrics=[job_metrics(tokens_per_s=30.0)])
    assert slow["runtime"] > 5 * res["runtime"] - 60
    # retries grow learned requests as well; entry overrides still win
    assert R.model_resources(LLAMA_7B, "helm", other, None, metrics=[m],
                             attempt=2)["runtime"] == 2 * res["runtime"]
    pinned = R.model_resources({**LLAMA_7B, "runtime_min": 33, "mem_mb": 12345}, "helm",
                               other, None, metrics=[m])
    assert (pinned["runtime"], pinned["mem_mb"]) == (33, 12345)


def test_learned_resources_pick_matching_hardware() -> None:
    a100 = job_metrics(tokens_per_s=4000.0)
    h100 = job_metrics(tokens_per_s=9000.0, device_name="NVIDIA H100 80GB HBM3", shard="part01")
    cpu = job_metrics(tokens_per_s=50.0, device="cpu", device_name="Intel Xeon", n_gpus=0,
                      peak_gpu_mem_mb=None)
    # the slowest GPU type measured (a job may land on either); CPU runs never size GPU jobs
    assert R.measured([a100, h100, cpu], LLAMA_7B, "helm").device_name == a100["device_name"]
    # a constraint picks the hardware whose name contains it
    assert R.measured([a100, h100], {**LLAMA_7B, "constraint": "h100"},
                      "helm").tokens_per_s == pytest.approx(9000.0)
    # a CPU entry uses only CPU runs
    cpu_entry = {**LLAMA_7B, "device": "cpu"}
    assert R.measured([a100, h100, cpu], cpu_entry, "helm").device_name == "Intel Xeon"
    # another dtype, or nothing computed (every question reused): not usable
    assert R.measured([job_metrics(dtype="float32")], LLAMA_7B, "helm") is None
    assert R.measured([job_metrics(computed=0, reused=1076, tokens=0, forward_seconds=0.0,
                                   tokens_per_s=None)], LLAMA_7B, "helm") is None
    # the same flavor is preferred; another flavor's jobs stand in when there is none
    e47 = job_metrics(flavor="harness_e47e01b", tokens_per_s=6000.0, shard="part02")
    assert R.measured([a100, e47], LLAMA_7B, "harness_e47e01b").tokens_per_s == \
        pytest.approx(6000.0)
    got = R.measured([a100], LLAMA_7B, "harness_current")
    assert got is not None and not got.flavor_matched
    # several jobs: all their tokens over all their forward seconds
    two = R.measured([a100, job_metrics(tokens_per_s=2000.0, shard="part03")], LLAMA_7B, "helm")
    assert 2000.0 < two.tokens_per_s < 4000.0 and two.jobs == 2


def test_read_metrics_skips_bad_files(tmp_path: Path, capsys) -> None:
    import json

    good, bad = tmp_path / "a.metrics.json", tmp_path / "b.metrics.json"
    good.write_text(json.dumps(job_metrics()))
    bad.write_text("{not json")
    assert [m["shard"] for m in R.read_metrics([good, bad, tmp_path / "missing.json"])] == \
        ["part00"]
    assert "b.metrics.json" in capsys.readouterr().err
