"""The data stage reads MMLU as raw strings and names what is wrong with bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors.data import (SHIPPED_MMLU_DIR, SUBJECTS, MMLUDataError, Source,
                               load_questions, read_hub, resolve_source, save_hub_layout,
                               table_checksum)


def test_counts_and_schema(questions: pl.DataFrame) -> None:
    counts = dict(questions.group_by("split").len().iter_rows())
    assert counts == {"dev": 285, "val": 1531, "test": 14042}
    assert questions["subject"].n_unique() == 57 == len(SUBJECTS)
    assert questions["choices"].list.len().unique().to_list() == [4]
    assert set(questions["answer"].unique().to_list()) == {0, 1, 2, 3}


def test_none_cell_stays_text(questions: pl.DataFrame) -> None:
    # college_computer_science test row 10 has a choice whose text is "None" (pandas makes it nan)
    row = questions.filter((pl.col("split") == "test") & (pl.col("subject") == "college_computer_science")
                           & (pl.col("index") == 10)).row(0, named=True)
    assert row["choices"][0] == "None"
    n_none = questions.filter(pl.col("choices").list.contains("None")).height
    assert n_none >= 10


def _copy(mmlu_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "mmlu"
    shutil.copytree(mmlu_dir, dst)
    (dst / "SHA256SUMS").unlink()
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_missing_subject_file_named(mmlu_dir: Path, tmp_path: Path) -> None:
    d = _copy(mmlu_dir, tmp_path)
    (d / "val" / "anatomy_val.csv").unlink()
    with pytest.raises(MMLUDataError, match=r"anatomy_val\.csv: missing \(subject anatomy, split val\)"):
        load_questions(Source("local", str(d)))


def test_missing_split_named(mmlu_dir: Path, tmp_path: Path) -> None:
    d = _copy(mmlu_dir, tmp_path)
    shutil.rmtree(d / "dev")
    with pytest.raises(MMLUDataError, match="split directory 'dev/' is missing"):
        load_questions(Source("local", str(d)))


def test_wrong_subject_count_named(mmlu_dir: Path, tmp_path: Path) -> None:
    d = _copy(mmlu_dir, tmp_path)
    (d / "test" / "virology_test.csv").unlink()
    with pytest.raises(MMLUDataError, match=r"expected the 57 MMLU subjects, found 56; missing \['virology'\]"):
        load_questions(Source("local", str(d)))


@pytest.mark.parametrize("rel, extra, message", [
    ("test/anatomy_test.csv", "What?,a,b,c,A\n", r"anatomy_test\.csv: row 135 has 5 fields"),
    ("dev/virology_dev.csv", "What?,a,b,c,d,E\n",
     r"virology_dev\.csv: row 5: answer 'E' is not one of A, B, C, D"),
])
def test_bad_row_is_named(mmlu_dir: Path, tmp_path: Path, rel: str, extra: str, message: str) -> None:
    d = _copy(mmlu_dir, tmp_path)
    p = d / rel
    p.write_text(p.read_text() + extra)
    with pytest.raises(MMLUDataError, match=message):
        load_questions(Source("local", str(d)))


def test_checksum_mismatch_detected(mmlu_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "mmlu"
    shutil.copytree(mmlu_dir, dst)
    p = dst / "test" / "anatomy_test.csv"
    p.chmod(0o644)
    p.write_text(p.read_text().replace("skull", "skulls", 1))
    with pytest.raises(MMLUDataError, match=r"anatomy_test\.csv: SHA-256 differs"):
        load_questions(Source("local", str(dst)))


def test_source_resolution(mmlu_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """mmlu_dir -> shipped copy -> Hub; none reachable: one line naming each place tried."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    absent, no_copy = str(tmp_path / "absent"), tmp_path / "no-copy"
    assert resolve_source("auto", str(mmlu_dir), "cais/mmlu") == \
        Source("local", str(mmlu_dir.resolve()))
    shipped = Source("shipped", str(SHIPPED_MMLU_DIR))
    assert resolve_source("auto", absent, "cais/mmlu") == shipped
    assert resolve_source("auto", None, "cais/mmlu") == shipped
    assert resolve_source("local", None, "cais/mmlu") == shipped
    assert resolve_source("hub", str(mmlu_dir), "cais/mmlu", check_hub=False) == \
        Source("hub", "cais/mmlu", None)
    hub_copy = tmp_path / "hub_copy"
    hub_copy.mkdir()  # a local directory in the Hub layout is always reachable
    assert resolve_source("auto", absent, str(hub_copy), shipped=no_copy).kind == "hub"
    with pytest.raises(MMLUDataError) as e:
        resolve_source("auto", absent, "cais/mmlu", shipped=no_copy)
    assert str(e.value) == (
        f"no MMLU data reachable (mmlu_source: auto); tried: mmlu_dir {absent} (no such "
        f"directory); shipped copy {no_copy} (missing); Hub dataset cais/mmlu (offline "
        "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and not in the local Hub cache)")
    with pytest.raises(MMLUDataError, match=r"\(mmlu_source: local\); tried: shipped copy \S+ "
                       r"\(missing\)$"):
        resolve_source("local", None, "cais/mmlu", shipped=no_copy)
    with pytest.raises(MMLUDataError, match="mmlu_source"):
        resolve_source("s3", None, "cais/mmlu")


def test_hub_path_with_local_copy(questions: pl.DataFrame, tmp_path: Path, monkeypatch) -> None:
    """The real `datasets` code path, on a local directory in the Hub repository's layout."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    subjects = ["abstract_algebra", "college_computer_science"]
    part = questions.filter(pl.col("subject").is_in(subjects))
    repo = save_hub_layout(part, tmp_path / "cais_mmlu")
    got = read_hub(str(repo), subjects=subjects).sort("split", "subject", "index")
    assert table_checksum(got) == table_checksum(part.sort("split", "subject", "index"))
    with pytest.raises(MMLUDataError, match="could not load subject 'anatomy'"):
        read_hub(str(repo), subjects=["anatomy"])
