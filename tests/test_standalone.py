"""The repository alone runs the main job: shipped MMLU and published table, no sibling
folder, no network (HF_HUB_OFFLINE=1); with no data anywhere it stops before any model work."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from workflow_fixture import ROOT, SNAKEMAKE, make_tiny_model

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def copy_repository(dst: Path) -> Path:
    """The files a clone has (tracked, plus new files not ignored), nothing else."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a file deleted but not yet committed is skipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def run_in(repo: Path, extra_config: Path, *args: str) -> subprocess.CompletedProcess:
    """snakemake in the copied repository with its own config.yaml plus `extra_config`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [SNAKEMAKE, "--configfile", "config.yaml", str(extra_config), *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900,
                          env={**env, **OFFLINE}, umask=0o022)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("clone")
    repo = copy_repository(base / "repo")
    assert not (base / "shared").exists() and not (repo / "data" / "models").exists()
    return repo


def tiny_config(path: Path, model_dir: Path) -> Path:
    """Only what a user would add for their own model; data and blog_csv stay default."""
    path.write_text(yaml.safe_dump({
        "models": ["tiny-llama"], "flavors": ["original", "harness_current"],
        "subjects": ["abstract_algebra", "college_mathematics"], "questions_per_subject": 2,
        "bootstrap_samples": 20, "threads_per_model_job": 1,
        "model_registry": {"tiny-llama": {"source": "local", "path": str(model_dir),
                                          "device": "cpu", "params_b": 0.001}},
    }))
    return path


def test_default_config_names_nothing_outside() -> None:
    text = (ROOT / "config.yaml").read_text()
    assert "../" not in text and "shared" not in text
    cfg = yaml.safe_load(text)
    assert cfg["mmlu_dir"] is None and cfg["blog_csv"] == "resources/blog/mmlu_scores.csv"


@pytest.mark.slow  # runs Snakemake
def test_fresh_clone_runs_offline(clone, questions, tmp_path) -> None:
    model = make_tiny_model(questions, tmp_path / "tiny")
    res = run_in(clone, tiny_config(tmp_path / "tiny.yaml", model), "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    info = json.loads((clone / "data/questions.json").read_text())
    assert info["source"] == "shipped"
    assert Path(info["location"]) == (clone / "resources/mmlu").resolve()
    assert info["rows"] == {"dev": 285, "val": 1531, "test": 14042}
    blog = (clone / "reports/blog_comparison.md").read_text()
    published = pl.read_csv(clone / "resources/blog/mmlu_scores.csv")
    assert published.height == 8
    for r in published.iter_rows(named=True):
        row = f"| {r['model']} | {r['hub_id']} | {r['helm']:.3f} | {r['harness']:.3f} | " \
              f"{r['original']:.3f} |"
        assert row in blog, row
    pred = pl.read_parquet(clone / "reports/predictions.parquet")
    assert sorted(pred["subject"].unique()) == ["abstract_algebra", "college_mathematics"]
    # files people can share: every output 0644, every directory 0755 under umask 022
    outputs = [p for d in ("data", "reports", "logs") for p in (clone / d).rglob("*")]
    assert len([p for p in outputs if p.suffix in (".parquet", ".png", ".md", ".csv")]) > 10
    bad = {str(p.relative_to(clone)): oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs
           if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)}
    assert not bad


@pytest.mark.slow  # runs Snakemake
def test_no_data_anywhere_stops_before_model_work(clone, tmp_path) -> None:
    """Shipped copy removed, no mmlu_dir, Hub offline: one line names each place tried,
    and no job (conversion, logits) starts."""
    bare = copy_repository(tmp_path / "bare")
    shutil.rmtree(bare / "resources" / "mmlu")
    extra = tiny_config(tmp_path / "tiny.yaml", tmp_path / "no-model-needed")
    res = run_in(bare, extra, "--cores", "1", "--config", "mmlu_dir=../nowhere")
    assert res.returncode != 0
    line = next(ln for ln in res.stderr.splitlines() if "no MMLU data reachable" in ln)
    assert "mmlu_dir ../nowhere (no such directory)" in line
    assert f"shipped copy {bare / 'resources' / 'mmlu'} (missing)" in line
    assert "Hub dataset cais/mmlu (offline" in line
    assert [p.name for p in (bare / "data").iterdir()] == ["README.md"]
    assert not (bare / "logs").exists()


def test_published_table_is_the_shipped_one() -> None:
    """resources/blog is the table of the post (blog.yaml runs its hub_ids: test_resources)."""
    df = pl.read_csv(ROOT / "resources/blog/mmlu_scores.csv")
    assert df.columns == ["model", "hub_id", "helm", "harness", "original"]
    assert df.filter(pl.col("model") == "llama-65b").row(0) == (
        "llama-65b", "huggyllama/llama-65b", 0.637, 0.488, 0.636)


def test_shipped_mmlu_is_all_of_mmlu(questions) -> None:
    """The shipped copy is byte for byte the reference files (SHA256SUMS checked on read)."""
    from mmlu_flavors.data import SHIPPED_MMLU_DIR, Source, load_questions, table_checksum, \
        verify_checksums

    assert verify_checksums(SHIPPED_MMLU_DIR) == 171
    shipped = load_questions(Source("shipped", str(SHIPPED_MMLU_DIR)))
    assert table_checksum(shipped) == table_checksum(questions)
