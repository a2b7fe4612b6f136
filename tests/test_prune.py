"""`mmlu-flavors cache prune` / `purge`: only stores provably unconfigured go, and only to a
quarantine that a `mv` undoes.

Small synthetic stores written with the real `cache.Store` (identity.json + segments in the
store schema) stand for what logits jobs on other hosts wrote; their fingerprints come from
`models.fingerprint` (with CUDA made visible where a store is "written on a GPU node").
Prune runs through `cli.main` on this host, as a user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors import cli, models, prune
from mmlu_flavors.cache import STORE_SCHEMA, Store, list_store
from workflow_fixture import ROOT


def _weights(tmp: Path, name: str = "w") -> Path:
    """A local model directory as far as the fingerprint goes (it hashes every file)."""
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "name": name}))
    (d / "model.safetensors").write_bytes(name.encode() * 100)
    return d


def _fp(entry: dict, monkeypatch=None, cuda: bool = False, **override) -> dict:
    """The fingerprint a logits job computes for `entry` on a host with (or without) CUDA."""
    import torch

    if monkeypatch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    fp = models.fingerprint(entry)
    if monkeypatch is not None:
        monkeypatch.undo()
    return {**fp, **override}


def _store(root: Path, fp: dict, name: str, n: int = 3,
           where: tuple[tuple[str, str], ...] = (("original", "abstract_algebra"),)) -> Path:
    """One model's store as a logits job leaves it: identity.json, one segment per subject."""
    store = Store(root, models.model_key(fp))
    store.write_identity(fp, {"name": name, "dtype": fp.get("dtype"), "device": fp.get("device")})
    for flavor, subject in where:
        rows = pl.DataFrame({"input_key": [f"{store.key}-{flavor}-{subject}-{i}" for i in range(n)],
                             "prompt_key": [f"p{i}" for i in range(n)], "index": list(range(n))})
        rows = rows.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in STORE_SCHEMA.items()
                                  if c not in rows.columns])
        store.write(flavor, subject, rows, {"dtype": fp.get("dtype"), "model": name})
    return root / store.key


def _cfg(path: Path, registry: dict, **extra) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"model_registry": registry, **extra}))
    return path


def _prune(capsys, *args: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(["cache", *args])
    except SystemExit as e:
        rc = int(e.code)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and p.name != prune.QUARANTINE}


def test_cuda_store_of_an_auto_entry_is_kept_on_a_cpu_host(tmp_path, capsys, monkeypatch
                                                          ) -> None:
    """A `device: auto` entry: stores written on GPU nodes (cuda), here (cpu) or on a Mac
    (mps) are all its own; only the store of a dtype no longer configured can go."""
    import torch

    w = _weights(tmp_path)
    entry = {"source": "local", "path": str(w), "dtype": "float32", "device": "auto"}
    root = tmp_path / "data" / "cache" / "store"  # the default store of --directory
    cuda = _store(root, _fp(entry, monkeypatch, cuda=True), "tiny")
    assert json.loads((cuda / "identity.json").read_text())["fingerprint"]["device"] == "cuda"
    cpu = _store(root, _fp(entry, monkeypatch, cuda=False), "tiny")
    mps = _store(root, _fp(entry, device="mps"), "tiny")
    old = _store(root, _fp(entry, monkeypatch, cuda=True, dtype="float16"), "tiny")
    assert len({cuda, cpu, mps, old}) == 4
    cfg = _cfg(tmp_path / "config.yaml", {"tiny": entry})
    if not torch.cuda.is_available():  # the case of the issue: this host would say cpu
        assert models.device_kind(entry) == "cpu"

    rc, out, _ = _prune(capsys, "prune", "--directory", str(tmp_path), "--configfile", str(cfg),
                        "--yes")
    assert rc == 0, out
    assert _dirs(root) == {cuda.name, cpu.name, mps.name}
    assert "device auto: any device kind" in out
    (batch,) = (root / prune.QUARANTINE).iterdir()
    assert [p.name for p in batch.iterdir() if p.is_dir()] == [old.name]

    # an entry that fixes its device keeps only that kind
    pinned = prune.configured_patterns([_cfg(tmp_path / "cuda.yaml",
                                             {"tiny": {**entry, "device": "cuda:1"}})],
                                       tmp_path / "elsewhere")
    plan = prune.plan_prune(root, pinned.patterns)
    assert {d.key for d in plan.remove} == {cpu.name, mps.name}


def test_blog_store_survives_a_prune_given_both_config_files(tmp_path, capsys) -> None:
    """The repository's config.yaml and blog.yaml: a blog model's store (a Hub branch
    resolved to some commit on a GPU node) goes only when blog.yaml is not given; other
    config files of the directory are named; a GGUF model not converted here keeps its
    stores by name."""
    for f in ("config.yaml", "blog.yaml"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "studies").mkdir()
    _cfg(tmp_path / "studies" / "today.yaml", {"x": {"source": "hub", "hub_id": "a/b"}})
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "env.yaml").write_text("name: env\ndependencies: [python]\n")
    root = tmp_path / "data" / "cache" / "store"
    llama = _store(root, {"dtype": "float16", "device": "cuda", "trust_remote_code": False,
                          "hub_id": "huggyllama/llama-7b", "commit": "a" * 40}, "llama-7b")
    smol = _store(root, {"dtype": "float32", "device": "cuda", "trust_remote_code": False,
                         "gguf_sha256": "b" * 64}, "smollm2-135m-instruct")
    gone = _store(root, {"dtype": "float32", "device": "cpu", "trust_remote_code": False,
                         "files_sha256": "c" * 64}, "a-model-no-longer-configured")
    d = str(tmp_path)
    cfg, blog = str(tmp_path / "config.yaml"), str(tmp_path / "blog.yaml")

    rc, out, err = _prune(capsys, "prune", "--directory", d, "--configfile", cfg, "--dry-run")
    assert rc == 0
    removing = [line for line in out.splitlines() if line.lstrip().startswith("remove ")]
    assert {line.split()[1] for line in removing} == {llama.name, gone.name}
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("blog.yaml has a model_registry but was not given" in line for line in warned)
    assert any("studies/today.yaml has a model_registry" in line for line in warned)
    assert not any("env.yaml" in line for line in warned)
    assert any("smollm2-135m-instruct: not converted on this host" in line for line in warned)

    for args in (["--configfile", cfg, blog], ["--configfile", cfg, "--configfile", blog]):
        rc, out, err = _prune(capsys, "prune", "--directory", d, *args, "--dry-run")
        assert rc == 0
        assert [line.split()[1] for line in out.splitlines()
                if line.lstrip().startswith("remove ")] == [gone.name]
        assert "blog.yaml has a model_registry" not in err
        assert "any commit of huggyllama/llama-7b" in out
    rc, out, _ = _prune(capsys, "prune", "--directory", d, "--configfile", cfg, blog, "--yes")
    assert rc == 0 and _dirs(root) == {llama.name, smol.name}


def test_merged_entries_keep_both_runs(tmp_path, monkeypatch) -> None:
    """A study that overrides an entry's dtype (Snakemake merges it over config.yaml): the
    stores of config.yaml's run and of the study's merged run both stay."""
    w = _weights(tmp_path)
    entry = {"source": "local", "path": str(w), "dtype": "float32", "device": "cpu"}
    _cfg(tmp_path / "config.yaml", {"tiny": entry})
    study = _cfg(tmp_path / "study.yaml", {"tiny": {"dtype": "bfloat16"}})
    root = tmp_path / "store"
    f32 = _store(root, _fp(entry), "tiny")
    bf16 = _store(root, _fp({**entry, "dtype": "bfloat16"}), "tiny")
    f16 = _store(root, _fp({**entry, "dtype": "float16"}), "tiny")
    conf = prune.configured_patterns([study], tmp_path)
    plan = prune.plan_prune(root, conf.patterns)
    assert [d.key for d in plan.remove] == [f16.name]
    assert {d.key for d, _ in plan.keep} == {f32.name, bf16.name}
    # a relative local path is read from the working directory, wherever prune runs
    _cfg(tmp_path / "config.yaml", {"tiny": {**entry, "path": w.name}})
    other = tmp_path / "elsewhere"  # the cwd holds another directory of the same name
    shutil.copytree(w, other / w.name)
    (other / w.name / "model.safetensors").write_bytes(b"other weights")
    monkeypatch.chdir(other)
    assert not models.fingerprint_pattern({**entry, "path": w.name}).matches(_fp(entry))
    conf = prune.configured_patterns([], tmp_path)
    assert conf.patterns[0].matches(_fp(entry))


def test_prune_without_yes_moves_nothing_and_prints_the_plan(tmp_path, capsys) -> None:
    w = _weights(tmp_path)
    entry = {"source": "local", "path": str(w), "dtype": "float32", "device": "cpu"}
    cfg = _cfg(tmp_path / "config.yaml", {"tiny": entry})
    root = tmp_path / "store"
    keep = _store(root, _fp(entry), "tiny")
    old_fp = _fp({**entry, "dtype": "float16"})
    old = _store(root, old_fp, "tiny-old", n=5, where=(("original", "abstract_algebra"),
                                                       ("helm", "marketing")))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    rc, out, _ = _prune(capsys, "prune", "--store", str(root), "--directory", str(tmp_path),
                        "--configfile", str(cfg))
    assert rc == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    (line,) = [ln for ln in out.splitlines() if ln.lstrip().startswith("remove ")]
    size = sum(p.stat().st_size for p in old.rglob("*") if p.is_file())
    assert old.name in line and "tiny-old" in line and "10 questions" in line
    assert "2 flavor(s)" in line and json.dumps(old_fp, sort_keys=True) in line
    assert prune.human_bytes(size) in line
    assert f"keep    {keep.name}" in out
    assert "nothing was moved: rerun with --yes" in out
    rc, out, _ = _prune(capsys, "prune", "--store", str(root), "--directory", str(tmp_path),
                        "--configfile", str(cfg), "--dry-run")
    assert rc == 0 and "dry run: nothing was moved" in out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_quarantine_is_restored_by_a_move_and_emptied_by_purge(tmp_path, capsys) -> None:
    w = _weights(tmp_path)
    entry = {"source": "local", "path": str(w), "dtype": "float32", "device": "cpu"}
    cfg = _cfg(tmp_path / "config.yaml", {"tiny": entry})
    root = tmp_path / "store"
    keep = _store(root, _fp(entry), "tiny")
    old_fp = _fp({**entry, "dtype": "float16"})
    old = _store(root, old_fp, "tiny-old", n=4)
    args = ["--store", str(root), "--directory", str(tmp_path), "--configfile", str(cfg)]
    rc, out, _ = _prune(capsys, "prune", *args, "--yes")
    assert rc == 0 and _dirs(root) == {keep.name}
    (batch,) = (root / prune.QUARANTINE).iterdir()
    manifest = json.loads((batch / prune.MANIFEST).read_text())
    assert [s["model_key"] for s in manifest["stores"]] == [old.name]
    assert manifest["stores"][0]["fingerprint"] == old_fp
    assert list_store(root)["model_key"].unique().to_list() == [keep.name]

    # restore: move it back (docs/ARCHITECTURE.md); its rows are served again
    os.rename(batch / old.name, root / old.name)
    held = Store(root, old.name).load("original", "abstract_algebra")
    assert held.height == 4
    assert set(list_store(root)["model_key"]) == {keep.name, old.name}

    rc, _, _ = _prune(capsys, "prune", *args, "--yes")
    assert rc == 0 and _dirs(root) == {keep.name}
    batches = list((root / prune.QUARANTINE).iterdir())
    assert len(batches) == 2  # the first one holds only its pruned.json now
    (again,) = [b for b in batches if (b / old.name).is_dir()]
    rc, out, _ = _prune(capsys, "purge", "--store", str(root))
    assert rc == 1 and "nothing was deleted" in out and old.name in out
    assert len(list((root / prune.QUARANTINE).iterdir())) == 2
    rc, out, _ = _prune(capsys, "purge", "--store", str(root), "--dry-run")
    assert rc == 0 and (again / old.name).is_dir() and "dry run" in out
    rc, out, _ = _prune(capsys, "purge", "--store", str(root), "--yes")
    assert rc == 0 and "deleted" in out
    assert list((root / prune.QUARANTINE).iterdir()) == []
    assert _dirs(root) == {keep.name}
    assert Store(root, keep.name).load("original", "abstract_algebra").height == 3
    rc, out, _ = _prune(capsys, "purge", "--store", str(root), "--yes")
    assert rc == 0 and "nothing quarantined" in out


def test_store_whose_identity_cannot_be_read_is_kept(tmp_path, capsys) -> None:
    w = _weights(tmp_path)
    entry = {"source": "local", "path": str(w), "dtype": "float32", "device": "cpu"}
    cfg = _cfg(tmp_path / "config.yaml", {"tiny": entry})
    root = tmp_path / "store"
    other = {"dtype": "float16", "device": "cuda", "trust_remote_code": False,
             "files_sha256": "d" * 64}
    missing = _store(root, other, "x")
    (missing / "identity.json").unlink()
    garbage = _store(root, {**other, "dtype": "bfloat16"}, "y")
    (garbage / "identity.json").write_text('{"fingerprint": {"dtype": "bf')
    foreign = _store(root, {**other, "dtype": "float32"}, "z")
    ident = json.loads((foreign / "identity.json").read_text())
    ident["fingerprint"]["dtype"] = "float16"  # no longer hashes to the directory's name
    (foreign / "identity.json").write_text(json.dumps(ident))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("mine")
    (root / "file_hashes.json").write_text("{}")
    # readable and unconfigured: the only one to go
    gone = _store(root, {**other, "files_sha256": "e" * 64}, "old")
    bad = gone / "original" / "abstract_algebra" / "x.parquet.bad"
    seg_bad = missing / "original" / "abstract_algebra" / "y.parquet.bad"
    seg_bad.write_bytes(b"damaged")
    bad.write_bytes(b"damaged too")

    rc, out, err = _prune(capsys, "prune", "--store", str(root), "--directory", str(tmp_path),
                          "--configfile", str(cfg), "--yes")
    assert rc == 0, out
    assert _dirs(root) == {missing.name, garbage.name, foreign.name, "notes"}
    assert (root / "file_hashes.json").is_file() and seg_bad.is_file()
    warned = "\n".join(line for line in err.splitlines() if line.startswith("warning:"))
    assert f"{missing.name}: kept: no identity.json" in warned
    assert f"{garbage.name}: kept: identity.json unreadable" in warned
    assert f"{foreign.name}: kept: identity.json names another model key" in warned
    assert "notes: kept: not a model store" in warned
    assert "1 segment(s) set aside as *.bad in kept stores" in out
    (batch,) = (root / prune.QUARANTINE).iterdir()
    assert (batch / gone.name / bad.relative_to(gone)).is_file()  # moved with its store


def test_fingerprint_patterns_never_depend_on_this_host(tmp_path) -> None:
    pin = "f" * 40
    hub = {"source": "hub", "hub_id": "org/m", "dtype": "float16", "device": "cuda"}
    p = models.fingerprint_pattern({**hub, "revision": pin}, name="m")
    fp = {"dtype": "float16", "device": "cuda", "trust_remote_code": False,
          "hub_id": "org/m", "commit": pin}
    assert p.matches(fp) and not p.matches({**fp, "commit": "e" * 40}) and p.wider == ()
    assert not p.matches({**fp, "device": "cpu"})
    branch = models.fingerprint_pattern(hub, name="m")
    assert branch.matches({**fp, "commit": "e" * 40}) and not branch.matches(
        {**fp, "hub_id": "org/other"})
    assert not branch.matches({**fp, "extra": 1})  # another kind of identity
    # weights not known here: by the recorded name
    lost = models.fingerprint_pattern({"source": "local", "path": str(tmp_path / "none")},
                                      name="gone")
    assert lost.fields is None and lost.matches(fp, {"name": "gone"})
    assert not lost.matches(fp, {"name": "other"})
    gguf = models.fingerprint_pattern({"source": "gguf", "gguf_file": "m.gguf",
                                       "gguf_package": "p"}, tmp_path / "absent", name="g")
    assert gguf.fields is None and "not converted" in gguf.wider[0]
    conv = tmp_path / "converted"  # a conversion as convert_gguf leaves it (no manifest)
    conv.mkdir()
    (conv / "config.json").write_text("{}")
    (conv / models.IDENTITY_FILE).write_text(json.dumps({"gguf_file": "m.gguf",
                                                         "gguf_sha256": "9" * 64}))
    entry = {"source": "gguf", "gguf_file": "m.gguf", "gguf_package": "p", "device": "cpu"}
    exact = models.fingerprint_pattern(entry, conv, name="g")
    assert exact.fields == {"dtype": "float32", "device": "cpu", "trust_remote_code": False,
                            "gguf_sha256": "9" * 64}
    foreign = models.fingerprint_pattern({**entry, "gguf_file": "n.gguf"}, conv, name="g")
    assert foreign.fields is None and "foreign" in foreign.wider[0]
    bad = models.fingerprint_pattern({"source": "local", "path": "x", "dtype": "int3"}, name="b")
    assert bad.fields is None and "int3" in bad.wider[0]


def test_no_registry_refuses_with_one_line(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("flavors: [original]\n")
    (tmp_path / "store").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    proc = subprocess.run([sys.executable, "-m", "mmlu_flavors.cli", "cache", "prune",
                           "--store", str(tmp_path / "store"), "--yes"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "mmlu-flavors cache: error: no model_registry in config.yaml: refusing to prune "
        "(no store could be proven unconfigured)")
    assert (tmp_path / "store").is_dir()
