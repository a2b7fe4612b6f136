"""Faults of docs/reliability.md not covered elsewhere: config names, shell metacharacters,
short or foreign data files, an unreachable Hub model, a full disk, a killed Snakemake and two
runs in one directory. Each asserts what the user sees."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors import cli
from mmlu_flavors.data import MMLUDataError, Source, load_questions, table_checksum
from mmlu_flavors.io import atomic_write_parquet, atomic_write_text
from workflow_fixture import ROOT, SNAKEMAKE, make_tiny_model, snakemake, write_config


@pytest.fixture(scope="module")
def tiny_model(questions, tmp_path_factory) -> Path:
    return make_tiny_model(questions, tmp_path_factory.mktemp("models") / "tiny")


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- config

TINY = {"source": "local", "path": "/nonexistent/tiny", "device": "cpu"}


@pytest.mark.parametrize("extra, needle", [
    ({"subjects": ["astrology"]}, "subjects: unknown MMLU subject(s) ['astrology']"),
    ({"subjects": ["anatomy; rm -rf ~"]}, "subjects"),  # schema: ^[a-z_]+$
    ({"models": ["Tiny", "tiny"], "model_registry": {"Tiny": TINY, "tiny": TINY}},
     "models: two names map to the same path slug"),
    ({"blog_csv": "nowhere/scores.csv"}, "blog_csv: no such file nowhere/scores.csv"),
    ({"model_registry": {"tiny-llama": {"source": "hub"}}}, "hub_id"),
    ({"model_registry": {"tiny-llama": {"source": "local", "path": "/x", "dtype": "int3"}}},
     "int3"),
])
@pytest.mark.slow  # runs Snakemake
def test_config_errors_stop_before_any_job(tmp_path, extra, needle) -> None:
    subjects = extra.pop("subjects", ["anatomy"])
    write_config(tmp_path, Path("/nonexistent/tiny"), subjects, 1, **extra)
    res = snakemake(tmp_path, "--cores", "1", check=False)
    assert res.returncode != 0
    assert needle in res.stderr + res.stdout, res.stderr[-2000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow  # runs Snakemake
def test_shell_metacharacters_in_a_model_name(tiny_model, tmp_path) -> None:
    """A name full of shell syntax is a path slug in file names and a quoted argument in
    commands: nothing is executed, and the tables carry the name as given."""
    name = "tiny; touch INJECTED $(touch INJECTED2) `touch INJECTED3` 'q\" & |"
    write_config(tmp_path, tiny_model, ["anatomy"], 1, flavors=["harness_current"],
                 models=[name], bootstrap_samples=10,
                 model_registry={name: {"source": "local", "path": str(tiny_model),
                                        "device": "cpu", "params_b": 0.001}})
    snakemake(tmp_path, "--cores", "1")
    assert not list(tmp_path.rglob("INJECTED*")) and not list(Path.cwd().glob("INJECTED*"))
    slug = "tiny-touch-injected-touch-injected2-touch-injected3-q"
    assert (tmp_path / f"data/cache/{slug}/harness_current/first1/part00.parquet").exists()
    assert (tmp_path / f"reports/matrix_{slug}.png").exists()
    pred = pl.read_parquet(tmp_path / "reports/predictions.parquet")
    assert pred["model"].unique().to_list() == [name]


@pytest.mark.parametrize("text, message", [
    ("model,helm,harness,original\nllama-7b,0.339,0.342,0.351\n", r"column\(s\) \['hub_id'\] missing"),
    ("model,hub_id,helm,harness,original\nllama-7b,huggyllama/llama-7b,33.9,34.2,35.1\n",
     r"scores must lie in \[0, 1\]; row \('llama-7b'"),
    ("model,hub_id,helm,harness,original\nllama-7b,x,n/a,0.3,0.3\n", r"not a CSV with columns"),
])
def test_malformed_published_table_named(tmp_path, text, message) -> None:
    from mmlu_flavors.report import read_blog

    p = tmp_path / "scores.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=rf"^published table {p}: {message}"):
        read_blog(p)


# ---------------------------------------------------------------- data

def _copy_without_sums(mmlu_dir: Path, tmp_path: Path) -> Path:
    dst = Path(shutil.copytree(mmlu_dir, tmp_path / "mmlu"))
    (dst / "SHA256SUMS").unlink()
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: b.index(b"\n", len(b) // 2) + 20], r"anatomy_test\.csv: row 68 has 1 fields"),
    (lambda b: b"", r"anatomy_test\.csv: no rows"),
    (lambda b: b"\xff\xfe" + b, r"anatomy_test\.csv: not UTF-8 text"),
    (lambda b: b + b'"an open quote,a,b,c,d,A\n', r"anatomy_test\.csv: row 135 has 1 fields"),
])
def test_short_or_foreign_csv_named(mmlu_dir, tmp_path, damage, message) -> None:
    """Without SHA256SUMS (a user's own copy) a cut or foreign file is still named by row."""
    d = _copy_without_sums(mmlu_dir, tmp_path)
    p = d / "test" / "anatomy_test.csv"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(MMLUDataError, match=message):
        load_questions(Source("local", str(d)), ["anatomy"])


def test_cr_inside_fields_is_kept_raw(mmlu_dir) -> None:
    """Rows with "\\r\\n" inside a quoted field are read as one row each with the bytes as
    they are (each flavor then applies its own reading rule: docs/IMPLEMENTATIONS.md)."""
    q = load_questions(Source("local", str(mmlu_dir)), ["college_mathematics"])
    cr = q.filter(pl.concat_str([pl.col("question"), pl.col("choices").list.join("|")])
                  .str.contains("\r", literal=True))
    assert cr.height >= 2 and set(cr["split"]) <= {"dev", "val"}
    assert q.filter(pl.col("split") == "dev").height == 5
    raw = (mmlu_dir / "dev" / "college_mathematics_dev.csv").read_bytes()
    assert raw.count(b"\r\n") == sum(t.count("\r\n") for r in cr.filter(pl.col("split") == "dev")
                                     .iter_rows(named=True)
                                     for t in [r["question"], *r["choices"]])


# ---------------------------------------------------------------- models

def test_unreachable_hub_model_is_one_line(questions, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    part = questions.filter(pl.col("subject") == "anatomy")
    q = tmp_path / "questions.parquet"
    atomic_write_parquet(part, q, {"checksum_sha256": table_checksum(part)})
    pr = tmp_path / "helm.parquet"
    assert cli.main(["prompts", "--questions", str(q), "--flavor", "helm", "--out", str(pr)]) == 0
    capsys.readouterr()
    entry = {"source": "hub", "hub_id": "no-such-org/no-such-model-xyz", "device": "cpu"}
    rc = cli.main(["logits", "--prompts", str(pr), "--flavor", "helm", "--model-name", "m",
                   "--entry", json.dumps(entry), "--subjects", "anatomy",
                   "--out", str(tmp_path / "v.parquet")])
    assert rc == 2
    line = one_error_line(capsys)
    assert line.startswith("mmlu-flavors logits: error: model 'm', field 'hub_id': "
                           "no-such-org/no-such-model-xyz (revision main) cannot be loaded: ")
    assert not (tmp_path / "v.parquet").exists()


# ---------------------------------------------------------------- runtime: a full disk

def test_full_disk_leaves_old_output_and_names_file(questions, tmp_path, monkeypatch,
                                                    capsys) -> None:
    """The writer dies half-way with ENOSPC: the step names the file, the previous version
    stays whole, no temporary file is left."""
    import pyarrow.parquet as pq

    from mmlu_flavors import io as mio

    real = pq.write_table

    def half_then_enospc(table, where, **kw):
        real(table, where, **kw)
        data = Path(where).read_bytes()
        Path(where).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "Error writing bytes to file")

    part = questions.filter(pl.col("subject") == "anatomy")
    q = tmp_path / "questions.parquet"
    atomic_write_parquet(part, q, {"checksum_sha256": table_checksum(part)})
    out = tmp_path / "prompts" / "helm.parquet"
    assert cli.main(["prompts", "--questions", str(q), "--flavor", "helm", "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(mio.pq, "write_table", half_then_enospc)
    assert cli.main(["prompts", "--questions", str(q), "--flavor", "helm", "--out", str(out)]) == 2
    assert one_error_line(capsys) == (f"mmlu-flavors prompts: error: {out}: could not be written "
                                      "(No space left on device); nothing was replaced")
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["helm.parquet"]


def test_full_disk_on_a_real_tiny_filesystem(questions, tmp_path) -> None:
    """The same on a real 256 KiB tmpfs (a private mount namespace; skipped where the kernel
    does not allow unprivileged ones): the prompts step fails with ENOSPC, named."""
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here")
    part = questions.filter(pl.col("subject").is_in(["anatomy", "professional_law"]))
    q = tmp_path / "questions.parquet"
    atomic_write_parquet(part, q, {"checksum_sha256": table_checksum(part)})
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} && echo old > {mnt}/helm.parquet && "
              f"{sys.executable} -m mmlu_flavors.cli prompts --questions {q} --flavor helm "
              f"--out {mnt}/helm.parquet; echo rc=$?; cat {mnt}/helm.parquet; ls -A {mnt}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.stdout.splitlines() == ["rc=2", "old", "helm.parquet"], res.stdout + res.stderr
    assert (f"mmlu-flavors prompts: error: {mnt}/helm.parquet: could not be written (No space "
            "left on device); nothing was replaced") in res.stderr.splitlines()


# ---------------------------------------------------------------- runtime: Snakemake itself

def _wait_for(pred, timeout: float = 600) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # runs Snakemake
def test_second_run_locked_out_and_killed_snakemake_recovers(tiny_model, tmp_path) -> None:
    """While a run works, a second Snakemake in the same directory is refused by Snakemake's
    lock. SIGKILL of the first Snakemake leaves no half-written output; the next runs name the
    job it never saw finish (--rerun-incomplete) and the stale lock (--unlock); then it
    finishes."""
    import psutil

    write_config(tmp_path, tiny_model, ["high_school_european_history"], 12,
                 flavors=["harness_e47e01b"], bootstrap_samples=10)
    snakemake(tmp_path, "--cores", "1", "data/prompts/harness_e47e01b.parquet")
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        def logits_child():
            for c in psutil.Process(first.pid).children(recursive=True):
                try:
                    if "logits" in c.cmdline():
                        return c
                except psutil.Error:  # a finished helper process
                    continue
            return None
        assert _wait_for(lambda: logits_child() is not None or first.poll() is not None)
        child = logits_child()
        if child is None:
            pytest.skip("the run finished before a logits job could be observed")
        # hold the job (and its children) still while the second run tries, so the first run
        # cannot finish meanwhile however slow the second's start is
        try:
            held = [child, *child.children(recursive=True)]
            for p in held:
                p.suspend()
        except psutil.NoSuchProcess:
            pytest.skip("the logits job ended before it could be held")
        second = snakemake(tmp_path, "--cores", "1", check=False)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stderr
        os.kill(first.pid, signal.SIGKILL)  # Snakemake itself, not its job
        first.wait(timeout=60)
        for p in held:
            p.resume()
        child.wait(timeout=600)  # the orphaned job ends on its own (its output is atomic)
    finally:
        if first.poll() is None:
            first.kill()
    view = tmp_path / "data/cache/tiny-llama/harness_e47e01b/first12/part00.parquet"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    # first the job Snakemake never saw finish is named, then the lock its death left behind
    again = snakemake(tmp_path, "--cores", "1", check=False)
    assert again.returncode != 0 and "--rerun-incomplete" in again.stderr
    assert f"Incomplete files:\n{view.relative_to(tmp_path)}" in again.stderr
    locked = snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", check=False)
    assert locked.returncode != 0
    assert "caused by a kill signal or a power loss. It can be removed with the --unlock" \
        in locked.stderr
    snakemake(tmp_path, "--cores", "1", "--unlock")
    snakemake(tmp_path, "--cores", "1", "--rerun-incomplete")  # profiles/local sets this
    assert (tmp_path / "reports/blog_comparison.md").exists() and view.exists()
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "--cores", "1").stdout


def test_text_outputs_atomic_under_concurrent_writers(tmp_path) -> None:
    """Two writers of one file: readers only ever see one whole version (rename is atomic)."""
    import threading

    path = tmp_path / "scores.csv"
    versions = {"a" * 200_000, "b" * 300_000}
    stop = threading.Event()
    seen: set[int] = set()

    def writer(text: str) -> None:
        while not stop.is_set():
            atomic_write_text(path, text)

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 3
        while time.time() < deadline:
            if path.exists():
                seen.add(len(path.read_text()))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen <= {200_000, 300_000} and seen
    assert not list(tmp_path.glob("*.tmp"))


def test_catalogue_names_only_real_tests() -> None:
    """docs/reliability.md: at least 25 faults, each naming tests that exist."""
    import re

    doc = (ROOT / "docs" / "reliability.md").read_text()
    rows = [ln for ln in doc.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert len(rows) >= 25
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert refs, row
        for path, name in refs:
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (path, name)
