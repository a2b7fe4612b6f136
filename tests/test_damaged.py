"""Damaged or foreign files are named with the command that fixes them, or healed by the rule
that owns them; no step reduces or reports from a damaged input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest_models import write_tiny_gguf

from mmlu_flavors import checks, cli
from mmlu_flavors.data import table_checksum
from mmlu_flavors.io import (DamagedFileError, atomic_write_parquet, check_parquet,
                             forcerun_fix, read_parquet_checked)
from mmlu_flavors.models import MANIFEST_FILE, check_converted, convert_gguf, load_model

SUBJECTS = ["abstract_algebra", "anatomy"]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_data_byte(path: Path) -> None:
    """Change one byte in the middle of the largest column chunk (page data, not the footer):
    polars alone reads such a file without complaint."""
    md = pq.ParquetFile(path).metadata
    chunks = [md.row_group(r).column(c) for r in range(md.num_row_groups)
              for c in range(md.num_columns)]
    big = max(chunks, key=lambda c: c.total_compressed_size)
    start = min(o for o in (big.dictionary_page_offset, big.data_page_offset) if o)
    pos = start + big.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture()
def tables(questions, tmp_path) -> dict[str, Path]:
    """questions.parquet and helm prompts written by the real CLI steps."""
    part = questions.filter(pl.col("subject").is_in(SUBJECTS))
    q = tmp_path / "data" / "questions.parquet"
    atomic_write_parquet(part, q, {"checksum_sha256": table_checksum(part), "source": "test"})
    pr = tmp_path / "data" / "prompts" / "helm.parquet"
    assert cli.main(["prompts", "--questions", str(q), "--flavor", "helm", "--out", str(pr)]) == 0
    return {"questions": q, "prompts": pr}


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert len(err) == 1, err
    return err[0]


def test_checked_reader_names_file_problem_and_fix(tmp_path) -> None:
    p = tmp_path / "t.parquet"
    atomic_write_parquet(pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}), p, {"flavor": "helm"})
    assert read_parquet_checked(p, {"a": pl.Int64, "b": None}, {"flavor": "helm"}).height == 2
    cases = [
        ({"c": None}, None, "not the expected table: column(s) ['c'] missing"),
        ({"a": pl.Int8}, None, "not the expected table: a is Int64, expected Int8"),
        (None, {"flavor": "original"}, "foreign: metadata flavor is 'helm', expected 'original'"),
        (None, {"checksum_sha256": None}, "not written by this step: metadata 'checksum_sha256'"),
    ]
    for columns, meta, problem in cases:
        with pytest.raises(DamagedFileError) as e:
            read_parquet_checked(p, columns, meta)
        assert str(e.value).startswith(f"{p}: {problem}")
        assert str(e.value).endswith(f"; fix: snakemake --cores all --forcerun {p}")
    truncate(p)
    with pytest.raises(DamagedFileError, match=r"damaged: not a readable Parquet file"):
        check_parquet(p)
    assert forcerun_fix("a b/c.parquet") == "snakemake --cores all --forcerun 'a b/c.parquet'"


def test_changed_byte_is_found_by_page_crc(questions, tmp_path) -> None:
    p = tmp_path / "q.parquet"
    part = questions.filter(pl.col("subject") == "anatomy")
    atomic_write_parquet(part, p, {"checksum_sha256": table_checksum(part)})
    flip_data_byte(p)
    check_parquet(p)  # the footer is intact: only reading the pages can tell
    with pytest.raises(DamagedFileError, match=r"damaged: its data cannot be read \(OSError: "
                       r"could not verify page integrity"):
        read_parquet_checked(p)


def test_questions_checksum_mismatch(tables, tmp_path) -> None:
    """A questions table whose content is not what its checksum says: named, not used."""
    df = pl.read_parquet(tables["questions"])
    meta = check_parquet(tables["questions"])
    forged = df.with_columns(pl.col("question").str.replace("^", "X", literal=True))
    atomic_write_parquet(forged, tables["questions"], meta)
    with pytest.raises(DamagedFileError, match="content differs from the checksum"):
        checks.read_questions(tables["questions"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_prompts_step_refuses_damaged_questions(tables, damage, tmp_path, capsys) -> None:
    q = tables["questions"]
    if damage == "truncate":
        truncate(q)
    elif damage == "flip":
        flip_data_byte(q)
    else:  # another project's table under the same name
        pl.DataFrame({"question": ["?"]}).write_parquet(q)
    out = tmp_path / "data" / "prompts" / "original.parquet"
    rc = cli.main(["prompts", "--questions", str(q), "--flavor", "original", "--out", str(out)])
    assert rc == 2 and not out.exists()
    line = one_error_line(capsys)
    assert line.startswith(f"mmlu-flavors prompts: error: {q}: ")
    assert line.endswith(f"fix: snakemake --cores all --forcerun {q}")
    assert "File out of specification" not in line and "Traceback" not in line


def test_logits_step_refuses_foreign_prompts(tables, tmp_path, capsys) -> None:
    """helm's table handed to an original-flavor job: named before any model is loaded."""
    rc = cli.main(["logits", "--prompts", str(tables["prompts"]), "--flavor", "original",
                   "--model-name", "m", "--entry", json.dumps({"source": "local", "path": "/x"}),
                   "--subjects", "anatomy", "--out", str(tmp_path / "v.parquet")])
    assert rc == 2
    line = one_error_line(capsys)
    assert "foreign: metadata flavor is 'helm', expected 'original'" in line
    assert not (tmp_path / "v.parquet").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "columns"])
def test_report_refuses_damaged_predictions(tmp_path, damage, capsys) -> None:
    from synthetic_cache import synthetic_cache

    from mmlu_flavors.reduce import predictions

    pred = tmp_path / "reports" / "predictions.parquet"
    atomic_write_parquet(predictions(synthetic_cache({"m": 1.0}, subjects={"anatomy": 30})), pred)
    if damage == "truncate":
        truncate(pred, 0.9)
    elif damage == "flip":
        flip_data_byte(pred)
    else:
        pl.read_parquet(pred).drop("correct").write_parquet(pred)
    rc = cli.main(["report", "--predictions", str(pred), "--out-dir", str(tmp_path / "reports"),
                   "--samples", "20"])
    assert rc == 2
    assert f"error: {pred}: " in one_error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["predictions.parquet"]


def test_predictions_step_refuses_damaged_view(tmp_path, capsys) -> None:
    from synthetic_cache import synthetic_cache

    view = tmp_path / "v.parquet"
    atomic_write_parquet(synthetic_cache({"m": 1.0}, subjects={"anatomy": 30}), view)
    flip_data_byte(view)
    out = tmp_path / "predictions.parquet"
    assert cli.main(["predictions", "--out", str(out), str(view)]) == 2
    assert f"error: {view}: damaged" in one_error_line(capsys)
    assert not out.exists()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("conv")
    gguf = write_tiny_gguf(tmp / "tiny.gguf")
    entry = {"source": "gguf", "gguf_path": str(gguf), "device": "cpu"}
    return entry, convert_gguf(entry, tmp / "models" / "tiny")


def test_converted_dir_manifest(converted, tmp_path) -> None:
    entry, good = converted
    manifest = json.loads((good / MANIFEST_FILE).read_text())
    assert {"config.json", "model.safetensors", "mmlu_flavors_model.json"} <= set(manifest)
    check_converted(good, entry)
    d = shutil.copytree(good, tmp_path / "tiny")
    weights = d / "model.safetensors"
    truncate(weights, 0.7)
    with pytest.raises(DamagedFileError) as e:
        load_model(entry, d)  # the loader is never reached
    assert str(e.value).startswith(f"{d}: damaged: model.safetensors has ")
    assert str(e.value).endswith(f"fix: snakemake --cores all --forcerun {d}")
    weights.unlink()
    with pytest.raises(DamagedFileError, match="damaged: model.safetensors missing"):
        check_converted(d, entry)
    with pytest.raises(DamagedFileError, match=r"foreign: converted from tiny.gguf, the model "
                       r"entry names other.gguf"):
        check_converted(good, {"source": "gguf", "gguf_file": "other.gguf"})
    (d / "mmlu_flavors_model.json").write_text("{")
    with pytest.raises(DamagedFileError, match="not a converted model directory"):
        check_converted(d, entry)


def test_heal_removes_only_damaged(tables, converted, tmp_path) -> None:
    entry, good = converted
    model = shutil.copytree(good, tmp_path / "models" / "tiny")
    truncate(model / "model.safetensors")
    truncate(tables["prompts"])
    targets = [(tables["questions"], checks.check_questions),
               (tables["prompts"], lambda p: checks.check_prompts(p, "helm")),
               (model, lambda p: check_converted(p, entry)),
               (tmp_path / "absent.parquet", checks.check_readable)]
    assert len(checks.heal(targets, dry_run=True)) == 2 and tables["prompts"].exists()
    lines = checks.heal(targets)
    assert len(lines) == 2
    assert lines[0] == (f"{tables['prompts']}: damaged: not a readable Parquet file "
                        "(ArrowInvalid: Parquet magic bytes not found in footer. Either the file "
                        "is corrupted or this is not a parquet file.); removed; its rule "
                        "recomputes it when needed")
    assert lines[1].startswith(f"{model}: damaged: model.safetensors has ")
    assert lines[1].endswith("; removed; its rule recomputes it when needed")
    assert not tables["prompts"].exists() and not model.exists()
    assert tables["questions"].exists()


# ---------------------------------------------------------------- the workflow heals

@pytest.fixture(scope="module")
def finished_run(questions, tmp_path_factory) -> Path:
    from workflow_fixture import make_tiny_model, snakemake, write_config

    work = tmp_path_factory.mktemp("run")
    model = make_tiny_model(questions, tmp_path_factory.mktemp("models") / "tiny")
    write_config(work, model, SUBJECTS, 2, flavors=["original", "helm"], bootstrap_samples=20)
    snakemake(work, "--cores", "2")
    return work


@pytest.mark.slow  # runs Snakemake
def test_workflow_heals_truncated_outputs(finished_run) -> None:
    """Truncated prompt table, cache view and predictions: the next run names each and
    removes it; the rules that own them recompute them, equal to the first run's."""
    from workflow_fixture import snakemake

    w = finished_run
    before = {p: read_parquet_checked(w / p) for p in
              ["reports/predictions.parquet", "data/prompts/helm.parquet"]}
    damaged = ["data/prompts/helm.parquet", "data/cache/tiny-llama/original/first2/part00.parquet",
               "reports/predictions.parquet"]
    for p in damaged:
        truncate(w / p)
    dry = snakemake(w, "-n", "--cores", "2")
    assert all((w / p).exists() for p in damaged)  # a dry run only reports
    assert "data/prompts/helm.parquet: damaged: not a readable Parquet file" in dry.stderr
    res = snakemake(w, "--cores", "2")
    for p in damaged:
        assert (f"{p}: damaged: not a readable Parquet file (ArrowInvalid: Parquet magic bytes "
                "not found in footer.") in res.stderr
    # the view and the predictions were needed at once; the prompt table (its helm view is
    # intact) when something needs it
    assert read_parquet_checked(w / damaged[2]).equals(before["reports/predictions.parquet"])
    check_parquet(w / damaged[1])
    snakemake(w, "--cores", "1", "data/prompts/helm.parquet")
    assert read_parquet_checked(w / damaged[0]).equals(before["data/prompts/helm.parquet"])


@pytest.mark.slow  # runs Snakemake
def test_workflow_never_reports_from_changed_bytes(finished_run) -> None:
    """One byte changed inside predictions.parquet (footer intact, so only a full read can
    tell): the report step stops with one line naming the file and the fix, leaves no report
    file, and the named fix restores the run."""
    from workflow_fixture import snakemake

    w = finished_run
    snakemake(w, "--cores", "2")  # complete, whatever ran before
    pred = w / "reports/predictions.parquet"
    flip_data_byte(pred)
    res = snakemake(w, "--cores", "2", check=False)
    assert res.returncode != 0
    log = (w / "logs/report.log").read_text().splitlines()
    errors = [ln for ln in log if ln.startswith("mmlu-flavors report: error: ")]
    assert errors == [f"mmlu-flavors report: error: {Path('reports/predictions.parquet')}: "
                      "damaged: its data cannot be read (OSError: could not verify page "
                      "integrity, CRC checksum verification failed for page_ordinal 0); "
                      "fix: snakemake --cores all --forcerun reports/predictions.parquet"]
    assert not (w / "reports/blog_comparison.md").exists()
    assert not (w / "reports/scores.csv").exists()
    snakemake(w, "--cores", "2", "--forcerun", "reports/predictions.parquet")
    assert (w / "reports/blog_comparison.md").exists()
    read_parquet_checked(pred)
