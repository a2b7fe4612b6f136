"""Every flavor reproduces the reference code's prompts byte for byte."""

from __future__ import annotations

import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import golden
from mmlu_flavors.flavors import (FLAVORS, Q, helm_balanced_sample, shots_harness_e47e01b,
                                  shuffle_position_e47e01b, subject_original, subject_spaced)
from mmlu_flavors.prompts import assemble, build_prompts

ALL = list(FLAVORS)


@pytest.fixture(scope="module")
def tables(questions: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {f: build_prompts(questions, f) for f in ALL}


def _row(df: pl.DataFrame, subject: str, index: int) -> dict:
    return df.filter((pl.col("subject") == subject) & (pl.col("index") == index)).row(0, named=True)


@pytest.mark.parametrize("rec", golden("original"), ids=lambda r: f"{r['subject']}-{r['index']}")
def test_original_golden(tables, rec) -> None:
    row = _row(tables["original"], rec["subject"], rec["index"])
    assert row["prompt"] == rec["prompt"]
    assert row["continuations"] == rec["scored_strings"]
    assert "ABCD"[row["gold"]] == rec["gold_letter"]


@pytest.mark.parametrize("rec", golden("helm"), ids=lambda r: f"{r['subject']}-{r['index']}")
def test_helm_golden(tables, rec) -> None:
    row = _row(tables["helm"], rec["subject"], rec["index"])
    assert row["prompt"] == rec["prompt"]
    assert "ABCD"[row["gold"]] == rec["gold_letter"]
    assert row["continuations"] == ["A", "B", "C", "D"]


@pytest.mark.parametrize("rec", golden("harness_e47e01b"), ids=lambda r: f"{r['subject']}-{r['index']}")
def test_harness_e47e01b_golden(tables, questions, rec) -> None:
    row = _row(tables["harness_e47e01b"], rec["subject"], rec["index"])
    assert row["prompt"] == rec["context"]
    assert row["continuations"] == rec["continuations"]
    assert row["gold"] == rec["gold"]
    n_test = questions.filter((pl.col("split") == "test") & (pl.col("subject") == rec["subject"])).height
    assert shuffle_position_e47e01b(n_test)[rec["index"]] == rec["doc_id"]


@pytest.mark.parametrize("rec", golden("harness_current"),
                         ids=lambda r: f"{r['subject']}-{r['index']}-{r['num_fewshot']}shot")
def test_harness_current_golden(questions, rec) -> None:
    df = build_prompts(questions, "harness_current", num_fewshot=rec["num_fewshot"],
                       subjects=[rec["subject"]])
    row = _row(df, rec["subject"], rec["index"])
    assert row["prompt"] == rec["context"]
    assert row["continuations"] == rec["continuations"]
    assert row["gold"] == rec["gold"]


def test_helm_fewshot_orders(tables) -> None:
    for subject, order in {"us_foreign_policy": [0, 3, 1, 2, 4],
                           "abstract_algebra": [1, 0, 4, 3, 2]}.items():
        rows = tables["helm"].filter(pl.col("subject") == subject)["shot_rows"].to_list()
        assert all(r == order for r in rows), subject


def test_helm_sampler_balances_labels_and_handles_duplicates() -> None:
    pool = [Q(f"q{i}", ("x", "y", "z", "w"), i % 2, i) for i in range(6)]  # labels x,y,x,y,x,y
    picked = helm_balanced_sample(pool, 4)
    labels = [pool[i].choices[pool[i].answer] for i in picked]
    assert sorted(labels) == ["x", "x", "y", "y"] and len(set(picked)) == 4
    dup = Q("q", ("same", "other", "same", "w"), 2, 0)
    assert FLAVORS["helm"].answered(dup).endswith("Answer: A\n\n")  # first correct choice's letter


def test_subject_formatting() -> None:
    assert subject_original("us_foreign_policy") == " us foreign policy"
    assert "about  us foreign policy." in FLAVORS["original"].header("us_foreign_policy")
    assert "about us foreign policy." in FLAVORS["helm"].header("us_foreign_policy")
    assert "about us foreign policy." in FLAVORS["harness_current"].header("us_foreign_policy")
    assert subject_spaced("high_school_us_history") == "high school us history"


def test_harness_e47e01b_drops_the_document_itself() -> None:
    test = [Q("same", ("a", "b", "c", "d"), 0, 0)]
    pool = [Q("same", ("a", "b", "c", "d"), 0, i) for i in range(6)]  # all equal to the doc
    assert shots_harness_e47e01b(test, pool, 5) == [[]]
    pool2 = [Q(f"v{i}", ("a", "b", "c", "d"), 0, i) for i in range(6)]
    shots = shots_harness_e47e01b(test, pool2, 5)[0]
    assert len(shots) == 5 and len(set(shots)) == 5


def test_shots_depend_only_on_subject_not_subset(questions, tables) -> None:
    for f in ALL:
        sub = build_prompts(questions, f, subjects=["us_foreign_policy", "virology"],
                            questions_per_subject=7)
        assert sub.height == 14
        full = tables[f].join(sub.select("subject", "index"), on=["subject", "index"])
        assert sub.sort("subject", "index")["prompt"].to_list() == \
            full.sort("subject", "index")["prompt"].to_list()


def test_parts_rebuild_prompt_and_shot_sources(tables) -> None:
    for f, df in tables.items():
        r = df.row(123, named=True)
        assert assemble(r["header"], r["shots"], r["test_block"], len(r["shots"])) == r["prompt"]
        assert len(r["shots"]) == len(r["shot_rows"]) == 5
        assert r["shot_split"] == ("val" if f == "harness_e47e01b" else "dev")
    e47 = tables["harness_e47e01b"].filter(pl.col("subject") == "anatomy")
    assert e47["shot_rows"].n_unique() > 1  # per-question draws
    orig = tables["original"].filter(pl.col("subject") == "anatomy")
    assert orig["shot_rows"].to_list()[0] == [0, 1, 2, 3, 4]


def test_zero_shot_prompts_are_the_test_block(questions) -> None:
    for f in ALL:
        df = build_prompts(questions, f, num_fewshot=0, subjects=["anatomy"])
        r = df.row(0, named=True)
        assert r["shots"] == [] and r["prompt"] == r["header"] + r["test_block"]


def test_cli_builds_all_subjects_fast(mmlu_dir, tmp_path) -> None:
    t0 = time.perf_counter()
    for f in ALL:
        out = tmp_path / f"{f}.parquet"
        subprocess.run([sys.executable, "-m", "mmlu_flavors.cli", "prompts", "--mmlu", str(mmlu_dir),
                        "--flavor", f, "--out", str(out)], check=True, capture_output=True)
        df = pl.read_parquet(out)
        assert df.height == 14042 and df["subject"].n_unique() == 57
    elapsed = time.perf_counter() - t0
    print(f"57 subjects x 4 flavors via the CLI: {elapsed:.1f}s")


def test_unknown_flavor_is_named(questions) -> None:
    with pytest.raises(ValueError, match="unknown flavor 'helmet'"):
        build_prompts(questions, "helmet")
