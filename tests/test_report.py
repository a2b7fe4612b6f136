"""report.write_all writes every file from a small synthetic cache."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from synthetic_cache import synthetic_cache

from mmlu_flavors import report
from mmlu_flavors.reduce import IMPLEMENTATIONS, predictions

BLOG = Path(__file__).resolve().parents[1] / "resources" / "blog" / "mmlu_scores.csv"
BLOG_ROWS = """model,hub_id,helm,harness,original
llama-65b,huggyllama/llama-65b,0.637,0.488,0.636
llama-7b,huggyllama/llama-7b,0.339,0.342,0.351
"""


@pytest.fixture()
def blog_csv(tmp_path: Path) -> Path:
    if BLOG.exists():
        return BLOG
    p = tmp_path / "mmlu_scores.csv"
    p.write_text(BLOG_ROWS)
    return p


PUBLISHED_2023 = ("original", "helm", "harness_e47e01b", "harness_current")


def _run(tmp_path: Path, models, blog_csv: Path, hub_ids: dict[str, str],
         flavors=PUBLISHED_2023):
    cache = synthetic_cache(models, flavors=flavors,
                            subjects={"anatomy": 12, "astronomy": 8, "philosophy": 10})
    pred_path = tmp_path / "predictions.parquet"
    predictions(cache).write_parquet(pred_path)
    out = tmp_path / "reports"
    written = report.write_all(pred_path, out, blog_csv, hub_ids, seed=0, n_boot=100)
    return out, written


def test_write_all_files(tmp_path, blog_csv):
    models = {"tiny/model-a": 0.2, "model-b": 1.5}
    out, written = _run(tmp_path, models, blog_csv, {})
    expected = report.output_names(list(models))
    assert sorted(written) == sorted(expected)
    for name in expected:
        f = out / name
        assert f.is_file() and f.stat().st_size > 0, name
        if name.endswith(".png"):
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "matrix_tiny-model-a.png").exists()
    scores = pl.read_csv(out / "scores.csv")
    # every built-in implementation of the flavors the cache holds
    assert scores.height == 2 * sum(f in PUBLISHED_2023 for f, _ in IMPLEMENTATIONS.values())
    assert {"model", "implementation", "averaging", "score", "score_lo", "score_hi", "micro",
            "macro", "rank"} <= set(scores.columns)
    own = dict(scores.select("implementation", "averaging").unique().iter_rows())
    assert own == {"original": "micro", "harness_current": "micro", "helm": "macro",
                   "harness (acc)": "macro", "harness acc_norm": "macro"}
    md = (out / "scores.md").read_text()
    assert "| model-b |" in md and "helm (macro)" in md and "30 test questions" in md
    blog = (out / "blog_comparison.md").read_text()
    assert "None of the models in this run" in blog and "llama-7b" in blog


def test_every_builtin_flavor_joins_tables_and_plots(tmp_path, blog_csv):
    from mmlu_flavors.flavors import BUILTIN, implementations

    models = {"model-a": 0.2, "model-b": 1.5}
    out, _ = _run(tmp_path, models, blog_csv, {}, flavors=tuple(BUILTIN))
    scores = pl.read_csv(out / "scores.csv")
    impls = implementations(list(BUILTIN))
    assert scores.height == 2 * len(impls)
    assert scores["implementation"].unique(maintain_order=True).to_list() == list(impls)
    assert {"lmeval_continuation (acc)", "lmeval_chat"} <= set(impls)
    own = dict(scores.select("implementation", "averaging").unique().iter_rows())
    assert own["lighteval"] == own["lighteval MCF"] == "macro"
    matrix = pl.read_csv(out / "matrix.csv")
    assert set(matrix["prompt"]) == set(BUILTIN)
    assert "lmeval_chat (micro)" in (out / "scores.md").read_text()
    flips = pl.read_csv(out / "flips.csv")
    assert {"model", "implementation_a", "implementation_b", "subject", "index"} <= set(flips.columns)
    assert (flips.get_column("correct_a") != flips.get_column("correct_b")).all()


def test_blog_match_by_hub_id_and_single_model(tmp_path, blog_csv):
    out, _ = _run(tmp_path, {"my-llama": 1.0}, blog_csv, {"my-llama": "huggyllama/llama-7b"})
    blog = (out / "blog_comparison.md").read_text()
    assert "None of the models" not in blog
    row = next(line for line in blog.splitlines()
               if line.startswith("| my-llama | llama-7b | original |"))
    ours = pl.read_csv(out / "scores.csv").filter(pl.col("implementation") == "original")
    diff = ours.get_column("score")[0] - 0.351
    assert "0.351" in row and f"{diff:+.3f}" in row
    assert (out / "rank_comparison.png").stat().st_size > 0


def test_match_blog_by_name_case_insensitive():
    blog = pl.read_csv(BLOG_ROWS.encode())
    assert report.match_blog(["LLaMA-7B", "x", "y"], blog, {"y": "HuggyLlama/llama-65b"}) == {
        "LLaMA-7B": "llama-7b", "y": "llama-65b"}


def test_without_blog_csv(tmp_path):
    out, written = _run(tmp_path, ("a", "b"), None, {})
    assert "No published table" in (out / "blog_comparison.md").read_text()
    assert "scores.md" in written


def test_a_model_without_one_implementation_gets_an_empty_cell(tmp_path, blog_csv):
    """A chat flavor left out for a model without a chat template (chat_without_template:
    skip): the report still writes every file; that model's cell is "—", ranks, differences
    and Kendall taus of that implementation use only the models that have it."""
    models = {"base": 0.2, "instruct": 1.5, "other": 0.8}
    cache = synthetic_cache(models, flavors=("helm", "harness_current"),
                            subjects={"anatomy": 12, "astronomy": 8})
    cache = cache.filter(~((pl.col("model") == "base") & (pl.col("flavor") == "harness_current")))
    pred_path = tmp_path / "predictions.parquet"
    predictions(cache).write_parquet(pred_path)
    out = tmp_path / "reports"
    written = report.write_all(pred_path, out, blog_csv, {}, seed=0, n_boot=50)
    assert sorted(written) == sorted(report.output_names(list(models)))
    scores = pl.read_csv(out / "scores.csv")
    hc = scores.filter(pl.col("implementation") == "harness_current")
    assert sorted(hc["model"].to_list()) == ["instruct", "other"]
    assert sorted(hc["rank"].to_list()) == [1.0, 2.0]  # ranked among the two that ran it
    row = next(x for x in (out / "scores.md").read_text().splitlines() if x.startswith("| base |"))
    assert row.count("—") == 1
    diffs = pl.read_csv(out / "differences.csv")
    assert diffs.filter(pl.col("model") == "base").height == 0
    tau = pl.read_csv(out / "kendall.csv").row(0, named=True)
    assert tau["n_models"] == 2
