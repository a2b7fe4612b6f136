"""`mmlu-flavors plan`: planned GPU-hours per model and flavor before a run (offline), and the
GPU-hours finished jobs used (their metrics files) after it (workflow/mmlu_flavors/plan.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from mmlu_flavors import plan as P
from mmlu_flavors import resources as R
from mmlu_flavors.data import SUBJECTS

from test_resources import job_metrics

ROOT = Path(__file__).resolve().parents[1]
BLOG = yaml.safe_load((ROOT / "blog.yaml").read_text())
# config.yaml's flavors, then the attribution variants (attr_*) the workflow also runs
FLAVORS = P.run_flavors(P.load_config([ROOT / "blog.yaml"], ROOT))


def _plan(cwd: Path, *args: str) -> str:
    """The CLI in a subprocess with the network made unusable (offline by construction)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    r = subprocess.run([sys.executable, "-m", "mmlu_flavors.cli", "plan", *args], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _expected_gpu_hours(entry: dict, flavor: str) -> float:
    """Assumed: per shard of 8 subjects, (load + forward FLOPs + weight streaming of the
    schedule's forward calls) x GPUs."""
    gpus = R.gpu_count(entry)
    total = 0.0
    for i in range(0, len(SUBJECTS), BLOG["subjects_per_shard"]):
        subjects = SUBJECTS[i:i + BLOG["subjects_per_shard"]]
        tokens = R.shard_tokens(flavor, subjects, None)
        forwards = R.shard_forwards(flavor, subjects, None)
        assert 0 < forwards < R.shard_questions(subjects, None) * 2  # not 2 per question
        total += R.load_seconds(entry) + R.compute_seconds(
            entry, tokens, R.shard_questions(subjects, None), gpus, forwards)
    return total / 3600 * gpus


def test_plan_blog_yaml_offline_lists_every_model(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    out = _plan(tmp_path, "--configfile", str(ROOT / "blog.yaml"))
    rows = [line for line in out.splitlines() if line.startswith("| ") and "assumed" in line]
    assert len(rows) == len(BLOG["models"]) * len(FLAVORS)  # every model x flavor, assumed
    for model in BLOG["models"]:
        mine = [r for r in rows if r.split("|")[1].strip() == model]
        assert [r.split("|")[2].strip() for r in mine] == FLAVORS
    table = P.plan_table(P.load_config([ROOT / "blog.yaml"], tmp_path), tmp_path)
    assert table.height == 8 * len(FLAVORS) and set(table["model"]) == set(BLOG["models"])
    assert FLAVORS[:4] == ["original", "helm", "harness_e47e01b", "harness_current"]
    for row in table.iter_rows(named=True):
        entry = BLOG["model_registry"][row["model"]]
        assert row["gpu_hours"] == pytest.approx(_expected_gpu_hours(entry, row["flavor"]))
        assert row["jobs"] == 8 and row["questions"] == 14042
    total = table["gpu_hours"].sum()
    assert f"{total:.1f} GPU-hours" in out
    # the smaller embedded models of config.yaml are not planned: blog.yaml's list replaced it
    assert "smollm2" not in out


def test_plan_uses_measured_throughput_and_shows_used_hours(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    done = tmp_path / "data/cache/llama-7b/helm/all/part00.metrics.json"
    done.parent.mkdir(parents=True)
    m = job_metrics(tokens_per_s=300.0, subjects=SUBJECTS[:8], wall_seconds=5400.0)
    done.write_text(json.dumps(m))
    table = P.plan_table(P.load_config([ROOT / "blog.yaml"], tmp_path), tmp_path)
    seven = {r["flavor"]: r for r in table.filter(pl.col("model") == "llama-7b").iter_rows(named=True)}
    assert seven["helm"]["basis"] == "measured: 1 job(s) on NVIDIA A100-SXM4-80GB"
    assert seven["original"]["basis"].endswith("(other flavors)")
    assert seven["helm"]["tokens_per_s"] == pytest.approx(300.0)
    meas = R.measured([m], BLOG["model_registry"]["llama-7b"], "helm")
    expect = sum(R.learned_seconds(meas, "helm", SUBJECTS[i:i + 8], None)[1]
                 for i in range(0, 57, 8)) / 3600
    assert seven["helm"]["gpu_hours"] == pytest.approx(expect)
    assert table.filter(pl.col("model") == "llama-13b")["basis"].str.starts_with("assumed").all()
    out = _plan(tmp_path, "--configfile", str(ROOT / "blog.yaml"))
    assert "measured: 1 job(s) on NVIDIA A100-SXM4-80GB" in out
    assert "Used by finished logits jobs" in out and "1.50" in out   # 5400 s x 1 GPU


def test_used_gpu_hours_per_model_and_device(tmp_path: Path) -> None:
    files = []
    for i, over in enumerate([dict(wall_seconds=3600.0, n_gpus=2),
                              dict(wall_seconds=1800.0, n_gpus=2, shard="part01"),
                              dict(model="llama-13b", slug="llama-13b", wall_seconds=7200.0),
                              dict(model="tiny", slug="tiny", device="cpu", n_gpus=0,
                                   device_name="Intel Xeon", wall_seconds=60.0)]):
        f = tmp_path / f"{i}.metrics.json"
        f.write_text(json.dumps(job_metrics(**over)))
        files.append(f)
    used = P.used_gpu_hours(files)
    by = {r["model"]: r for r in used.iter_rows(named=True)}
    assert by["llama-7b"]["jobs"] == 2 and by["llama-7b"]["gpu_hours"] == pytest.approx(3.0)
    assert by["llama-7b"]["job_hours"] == pytest.approx(1.5)
    assert by["llama-13b"]["gpu_hours"] == pytest.approx(2.0)
    assert by["tiny"]["gpu_hours"] == 0 and by["tiny"]["job_hours"] == pytest.approx(60 / 3600)
    assert by["llama-7b"]["computed"] == 2 * 1076
    out = tmp_path / "cost.csv"
    P.write_cost(files + [tmp_path / "missing.metrics.json"], out)
    assert pl.read_csv(out)["gpu_hours"].sum() == pytest.approx(5.0)
    assert P.used_gpu_hours([]).height == 0


def test_plan_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [nope]\nmodel_registry: {}\nflavors: [helm]\nsubjects: all\n")
    with pytest.raises(ValueError, match=r"models \['nope'\] are not entries of model_registry"):
        P.load_config([bad], tmp_path)
    with pytest.raises(ValueError, match="missing.yaml"):
        P.load_config([tmp_path / "missing.yaml"], tmp_path)
    # Snakemake's merge: mappings merge, lists replace
    assert P.merge_config({"a": {"x": 1, "y": [1]}, "l": [1, 2]},
                          {"a": {"y": [2]}, "l": [3]}) == {"a": {"x": 1, "y": [2]}, "l": [3]}
