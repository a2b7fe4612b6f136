"""Outputs get the modes the umask gives any other tool (0644/0755 under umask 022), and
are still written atomically. (The whole workflow: tests/test_standalone.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import polars as pl
import pytest
from conftest_models import write_tiny_gguf
from synthetic_cache import synthetic_cache

from mmlu_flavors import io as mio
from mmlu_flavors.models import convert_gguf


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def assert_tree_modes(root: Path, mask: int) -> int:
    """Every file 0666 & ~mask, every directory 0777 & ~mask; returns how many files."""
    n = 0
    for p in [root, *root.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert mode(p) == want, f"{p}: {oct(mode(p))}, want {oct(want)}"
        n += p.is_file()
    return n


def test_umask_is_read_without_changing_it(umask) -> None:
    assert mio.umask() == umask
    assert mio.umask() == umask


def test_atomic_writes_follow_umask(umask, tmp_path) -> None:
    out = tmp_path / "out"  # created by the writer, like data/ and reports/
    mio.atomic_write_bytes(out / "a.bin", b"x")
    mio.atomic_write_text(out / "sub" / "b.md", "y")
    mio.atomic_write_parquet(pl.DataFrame({"x": [1]}), out / "c.parquet", {"k": 1})
    # replacing an existing file keeps the rule (the old file's mode does not leak)
    (out / "d.csv").write_text("old")
    (out / "d.csv").chmod(0o600)
    mio.atomic_write_text(out / "d.csv", "new")
    assert (out / "d.csv").read_text() == "new"
    assert assert_tree_modes(out, umask) == 4
    assert not list(out.rglob("*.tmp"))


def test_replace_dir_fixes_private_files(umask, tmp_path) -> None:
    tmp = mio.atomic_dir(tmp_path / "out")
    (tmp / "weights.safetensors").write_bytes(b"w")
    (tmp / "weights.safetensors").chmod(0o600)  # what safetensors' own writer leaves
    (tmp / "nested").mkdir(mode=0o700)
    (tmp / "nested" / "t.json").write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale").write_text("old")
    mio.replace_dir(tmp, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old dir left
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nested", "weights.safetensors"]
    assert assert_tree_modes(tmp_path / "out", umask) == 2


def test_converted_model_dir_is_shareable(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
        out = convert_gguf({"source": "gguf", "gguf_path": str(gguf)}, tmp_path / "m" / "tiny")
    finally:
        os.umask(old)
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    assert assert_tree_modes(out, 0o022) >= 4


def test_report_files_are_shareable(tmp_path) -> None:
    from mmlu_flavors import report
    from mmlu_flavors.reduce import predictions

    pred = tmp_path / "predictions.parquet"
    old = os.umask(0o022)
    try:
        mio.atomic_write_parquet(predictions(synthetic_cache({"m": 1.0}, subjects={"anatomy": 6})), pred)
        written = report.write_all(pred, tmp_path / "reports", None, {}, seed=0, n_boot=20)
    finally:
        os.umask(old)
    assert any(n.endswith(".png") for n in written)
    assert mode(pred) == 0o644
    assert assert_tree_modes(tmp_path / "reports", 0o022) == len(written)
