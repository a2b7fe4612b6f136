"""The real Snakefile end to end on a tiny local model: outputs, no rework, resume, config errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from workflow_fixture import ROOT, SNAKEMAKE, make_tiny_model, snakemake, write_config

from mmlu_flavors.reduce import SCORERS

# every test here runs Snakemake on the real Snakefile (or uses a finished run of it)
pytestmark = pytest.mark.slow

SUBJECTS = ["abstract_algebra", "us_foreign_policy"]


@pytest.fixture(scope="module")
def tiny_model(questions, tmp_path_factory) -> Path:
    return make_tiny_model(questions, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("run")
    write_config(work, tiny_model, SUBJECTS, 2)
    snakemake(work, "--cores", "2")
    return work


def test_all_outputs_and_predictions(finished_run) -> None:
    rep = finished_run / "reports"
    for name in ["predictions.parquet", "scores.csv", "scores.md", "blog_comparison.md",
                 "rank_comparison.png", "flips.csv", "matrix_tiny-llama.png",
                 "subjects_tiny-llama.png", "attribution_tiny-llama.csv",
                 "attribution_tiny-llama.png", "explorer.html"]:
        assert (rep / name).stat().st_size > 0, name
    pred = pl.read_parquet(rep / "predictions.parquet")
    assert pred.columns == ["model", "prompt", "scorer", "subject", "index", "pred", "gold", "correct"]
    assert pred.height == 1 * 4 * len(SCORERS) * len(SUBJECTS) * 2  # model x flavor x scorer
    assert sorted(pred["subject"].unique().to_list()) == SUBJECTS
    assert sorted(pred["index"].unique().to_list()) == [0, 1]
    for flavor in ["original", "helm", "harness_e47e01b", "harness_current"]:
        assert (finished_run / f"data/cache/tiny-llama/{flavor}/first2/part00.parquet").exists()
    assert (finished_run / "logs/logits/tiny-llama/helm/first2/part00.log").stat().st_size > 0
    assert sorted(p.name for p in (rep / "explorer").glob("*.js")) == [f"{s}.js" for s in SUBJECTS]
    attribution = pl.read_csv(rep / "attribution_tiny-llama.csv")
    assert set(attribution.get_column("implementation_b")) == {"original", "helm"}
    info = (finished_run / "data/questions.json").read_text()
    assert '"source": "local"' in info and "checksum_sha256" in info


def test_second_run_does_no_work(finished_run) -> None:
    res = snakemake(finished_run, "-n", "--cores", "2")
    assert "Nothing to be done" in res.stdout + res.stderr


def test_bad_config_is_named(finished_run) -> None:
    for override, needle in [("flavors=[helmet]", "helmet"), ("bogus_key=1", "bogus_key"),
                             ("models=[nope]", "'nope' is not an entry of model_registry"),
                             ("questions_per_subject=zero", "questions_per_subject")]:
        res = snakemake(finished_run, "-n", "--cores", "1", "--config", override, check=False)
        assert res.returncode != 0, override
        assert needle in res.stderr + res.stdout, (override, res.stderr[-2000:])


def _logits_log(work: Path, flavor: str, selection: str) -> str:
    return (work / f"logs/logits/tiny-llama/{flavor}/{selection}/part00.log").read_text()


def test_killed_job_keeps_its_checkpoints(tiny_model, tmp_path) -> None:
    """SIGKILL the logits job (as the OOM killer or scancel would) inside its second subject;
    the rerun reuses every checkpoint written before and recomputes only the rest."""
    import psutil

    subjects = ["abstract_algebra", "high_school_european_history"]
    write_config(tmp_path, tiny_model, subjects, 8, flavors=["harness_e47e01b"],
                 checkpoint_questions=4)
    snakemake(tmp_path, "--cores", "1", "data/prompts/harness_e47e01b.parquet")
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    store = tmp_path / "data/cache/store"
    view = tmp_path / "data/cache/tiny-llama/harness_e47e01b/first8/part00.parquet"
    deadline = time.time() + 600
    while len(list(store.rglob("*.parquet"))) < 3 and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.02)
    for child in psutil.Process(proc.pid).children(recursive=True):
        if "logits" in child.cmdline():
            child.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) != 0 or view.exists()
    if view.exists():
        pytest.skip("the job finished before it could be killed")
    kept = {p: p.stat().st_mtime_ns for p in store.rglob("*.parquet")}
    assert len(kept) >= 3 and not any(p.name.endswith(".parquet") for p in
                                      (tmp_path / "data/cache").rglob(".*"))
    snakemake(tmp_path, "--cores", "1")
    assert f"computed {16 - 4 * len(kept)}, reused {4 * len(kept)} questions" in \
        _logits_log(tmp_path, "harness_e47e01b", "first8")
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert pl.read_parquet(view).height == 16


def test_resource_hints_never_rerun_model_work(finished_run, tmp_path) -> None:
    """Batch size, token budget, parameter count, GPUs, memory, runtime, partition, threads,
    checkpointing: none of them changes a cached number, so none reruns conversion or logits."""
    import yaml

    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    entry = cfg["model_registry"]["tiny-llama"]
    entry.update(batch_size=1, max_batch_tokens=77, params_b=65.0, gpus=2, mem_mb=1234,
                 runtime_min=9, slurm_partition="big", slurm_account="acct", constraint="a100")
    cfg.update(threads_per_model_job=2, checkpoint_questions=3, subjects_per_shard=57)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    res = snakemake(finished_run, "-n", "--cores", "2", "--configfile", str(edited))
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]


def test_growing_and_switching_selections(finished_run) -> None:
    """2 -> 3 questions computes one new question per subject and flavor; the dry run says so
    before any model is loaded; switching back to 2 runs nothing at all."""
    res = snakemake(finished_run, "-n", "--cores", "2", "--config", "questions_per_subject=3")
    out = res.stdout + res.stderr
    for flavor in ["original", "helm", "harness_e47e01b", "harness_current"]:
        assert f"tiny-llama / {flavor} / first3/part00: 6 questions, 4 cached, 2 to compute" \
            in out, out[-3000:]
    snakemake(finished_run, "--cores", "2", "--config", "questions_per_subject=3")
    for flavor in ["original", "helm", "harness_e47e01b", "harness_current"]:
        assert "computed 2, reused 4 questions" in _logits_log(finished_run, flavor, "first3")
    summary = pl.read_csv(finished_run / "reports/cache_summary.csv")
    assert summary["computed"].to_list() == [2] * 4 and summary["reused"].to_list() == [4] * 4
    res = snakemake(finished_run, "-n", "--cores", "2", "--config", "questions_per_subject=2")
    assert "logits" not in res.stdout, res.stdout[-3000:]


def test_attribution_variants_run(tiny_model, tmp_path) -> None:
    """A walked pair renders, runs and reduces the walk's intermediate prompts as flavors of
    their own; the attribution then moves one factor per step. The pair carries its own mode
    ([a, b, walk], as the embedded default's harness -> helm) over attribution_variants: none."""
    write_config(tmp_path, tiny_model, ["abstract_algebra"], 1,
                 flavors=["original", "harness_e47e01b"],
                 attribution_pairs=[["harness (acc)", "original", "walk"]],
                 attribution_variants="none")
    snakemake(tmp_path, "--cores", "2", "reports/attribution_tiny-llama.csv")
    variants = pl.read_parquet(tmp_path / "reports/attribution_variants.parquet")
    prompts = variants.get_column("prompt").unique().to_list()
    assert len(prompts) == 3 and all(p.startswith("attr_") for p in prompts)
    steps = pl.read_csv(tmp_path / "reports/attribution_tiny-llama.csv").filter(
        pl.col("kind") == "step")
    assert steps.get_column("factor").to_list() == [
        "start", "shots", "header", "template", "tokens", "scoring", "averaging"]
    walked = steps.get_column("prompt").to_list()
    assert walked[0] == "harness_e47e01b" and set(walked[1:4]) == set(prompts)
    assert walked[4:] == ["original"] * 3
