"""Parse-time work (`snakemake -n`) reads only what it needs and hashes each model once.

The cache plan reads store segments' footers and key columns, never their outputs: a segment
whose output pages are damaged is still planned as cached, and is found damaged (moved aside,
recomputed) by the job that reads it whole. A model's files are hashed once per process and
remembered across processes (store `file_hashes.json`), and hashed again whenever they change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from mmlu_flavors import cache, io, models
from mmlu_flavors.cache import Store
from mmlu_flavors.prompts import build_prompts

SUBJECTS = ["abstract_algebra", "anatomy"]
FLAVOR = "original"
KEY = "0123456789abcdef"


@pytest.fixture(scope="module")
def prompts(questions) -> pl.DataFrame:
    return build_prompts(questions, FLAVOR, subjects=SUBJECTS)


def store_rows(rows: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Store rows for prompt rows, outputs of the engine's shapes (random values; long text
    continuations, so that outputs outweigh the footer as in a real segment of 256 rows)."""
    rng = np.random.default_rng(seed)
    n = rows.height
    pkeys = cache.prompt_keys(rows, None)
    lens = rng.integers(100, 300, (n, 4))
    text = [[rng.normal(-2, 1, k).tolist() for k in r] for r in lens]
    letter = rng.normal(-1.5, 1.0, (n, 4))
    return pl.DataFrame({
        "input_key": [hashlib.sha256(k.encode()).hexdigest() for k in pkeys.to_list()],
        "prompt_key": pkeys, "index": rows["index"],
        "letter_ids": [[1, 2, 3, 4]] * n, "letter_logprobs": letter.tolist(),
        "greedy_id": rng.integers(0, 1000, n), "greedy_text": [" A"] * n,
        "greedy_logprob": letter[:, 0],
        "topk_ids": rng.integers(0, 1000, (n, 10)).tolist(),
        "topk_logprobs": rng.normal(-3, 1, (n, 10)).tolist(),
        "letter_cont_logprobs": letter[:, :, None].tolist(),
        "letter_cont_greedy": [[[False]] * 4] * n, "letter_cont_sum": letter.tolist(),
        "text_cont_logprobs": text, "text_cont_greedy": [[[False] * k for k in r] for r in lens],
        "text_cont_sum": [[sum(x) for x in r] for r in text],
        "gen_ids": [[]] * n, "gen_text": [None] * n,
    }, schema=cache.STORE_SCHEMA)


@pytest.fixture()
def store(prompts, tmp_path) -> Store:
    """A store holding every question of SUBJECTS, one segment per subject."""
    s = Store(tmp_path / "store", KEY)
    for subject in SUBJECTS:
        s.write(FLAVOR, subject, store_rows(prompts.filter(pl.col("subject") == subject)),
                {"model": "m"})
    return s


def flip_column_byte(path: Path, column: str) -> None:
    """Change one byte in the middle of `column`'s data pages; footer and other columns intact."""
    md = pq.ParquetFile(path).metadata
    names = pq.read_schema(path).names
    chunk = md.row_group(0).column(names.index(column))
    start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o)
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_plan_reads_keys_and_the_job_finds_damaged_outputs(prompts, store) -> None:
    n = prompts.height
    seg = store.segments(FLAVOR, SUBJECTS[0])[0]
    flip_column_byte(seg, "text_cont_logprobs")  # an output column: the plan never reads it
    io.check_parquet(seg)  # the footer is intact: the healing checks pass it
    planner = Store(store.root, KEY, readonly=True)
    assert cache.plan_counts(prompts, planner, FLAVOR, SUBJECTS, None, None) == (n, n)
    # keyed once, planned many times: the same counts
    keyed = cache.keyed_prompts(prompts, None)
    assert cache.plan_counts(keyed, planner, FLAVOR, SUBJECTS, None, None) == (n, n)
    assert cache.plan_counts(keyed, planner, FLAVOR, SUBJECTS, 3, None) == (6, 6)
    assert seg.exists() and not planner.quarantined
    # the job reads the segment whole: the changed byte fails its page CRC, the segment is
    # moved aside and its questions are missing (so they are recomputed)
    job = Store(store.root, KEY)
    held = job.load(FLAVOR, SUBJECTS[0])
    assert held.height == 0 and not seg.exists() and job.quarantined == [
        seg.with_name(seg.name + ".bad")]
    n0 = prompts.filter(pl.col("subject") == SUBJECTS[0]).height
    assert cache.plan_counts(prompts, planner, FLAVOR, SUBJECTS, None, None) == (n, n - n0)


def test_plan_never_counts_keys_it_cannot_read(prompts, store) -> None:
    """A damaged key page fails its CRC: the segment's questions are planned as to compute
    (and the readonly planner moves nothing)."""
    seg = store.segments(FLAVOR, SUBJECTS[1])[0]
    flip_column_byte(seg, "prompt_key")
    planner = Store(store.root, KEY, readonly=True)
    n1 = prompts.filter(pl.col("subject") == SUBJECTS[1]).height
    assert cache.plan_counts(prompts, planner, FLAVOR, SUBJECTS, None, None) == (
        prompts.height, prompts.height - n1)
    assert seg.exists()


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_plan_reads_a_small_part_of_the_store(prompts, store) -> None:
    """Bytes read by planning (read syscalls of this process) are a fraction of the store's:
    footers and the key column, not the outputs."""
    def rchar() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar")

    total = sum(p.stat().st_size for s in SUBJECTS for p in store.segments(FLAVOR, s))
    planner = Store(store.root, KEY, readonly=True)
    before = rchar()
    cache.plan_counts(cache.keyed_prompts(prompts, None), planner, FLAVOR, SUBJECTS, None, None)
    planned = rchar() - before
    before = rchar()
    Store(store.root, KEY).load(FLAVOR, SUBJECTS[0])
    Store(store.root, KEY).load(FLAVOR, SUBJECTS[1])
    whole = rchar() - before
    assert whole >= total  # a job's read: every byte
    assert planned < 0.3 * total, (planned, total)


# ---------------------------------------------------------------- hashing a model once

@pytest.fixture()
def local_model(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(os.urandom(1 << 20))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    return d


@pytest.fixture()
def hashed(monkeypatch) -> list[str]:
    """Names of the files whose bytes were hashed (every call of io.sha256_file)."""
    calls: list[str] = []
    real = models.sha256_file

    def count(path, *a, **k):
        calls.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(models, "sha256_file", count)
    monkeypatch.setattr(models, "_FILE_HASHES", {})
    return calls


def test_a_model_is_hashed_once_per_process_and_never_stale(local_model, hashed,
                                                             tmp_path) -> None:
    entry = {"source": "local", "path": str(local_model), "dtype": "float32", "device": "cpu"}
    root = tmp_path / "store"
    root.mkdir()
    fp = cache.plan_fingerprint(entry, None, "m", root)
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json"]
    # the same process: the parse-time plan, the job's fingerprint, load_model's identity
    assert models.fingerprint(entry) == fp == cache.plan_fingerprint(entry, None, "m", root)
    models._weights_sha256(local_model)
    assert len(hashed) == 3
    # another process (an empty process memo): the store's file_hashes.json answers
    models._FILE_HASHES.clear()
    assert cache.plan_fingerprint(entry, None, "m", root) == fp and len(hashed) == 3
    # a changed file is hashed again, whatever its size and mtime say
    w = local_model / "model.safetensors"
    st = w.stat()
    w.write_bytes(os.urandom(st.st_size))  # same size, new bytes
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime (rsync -t, touch -d)
    hashed.clear()
    fp2 = cache.plan_fingerprint(entry, None, "m", root)
    assert hashed == ["model.safetensors"] and fp2 != fp
    # replaced by a copy with the same size and mtime (another inode)
    other = tmp_path / "copy.bin"
    shutil.copy2(w, other)
    other.write_bytes(os.urandom(st.st_size))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, w)
    hashed.clear()
    assert cache.plan_fingerprint(entry, None, "m", root) not in (fp, fp2)
    assert hashed == ["model.safetensors"]


def test_plan_fingerprint_creates_no_store(local_model, hashed, tmp_path) -> None:
    entry = {"source": "local", "path": str(local_model), "dtype": "float32", "device": "cpu"}
    missing = tmp_path / "no-store-yet"
    fp = cache.plan_fingerprint(entry, None, "m", missing)
    assert fp == models.fingerprint(entry) and not missing.exists()  # a dry run creates none


def test_prompt_keys_are_computed_once_per_prompt_table(questions, tmp_path,
                                                        monkeypatch) -> None:
    from mmlu_flavors.io import atomic_write_parquet

    table = tmp_path / "original.parquet"
    atomic_write_parquet(build_prompts(questions, FLAVOR, subjects=SUBJECTS), table,
                         {"flavor": FLAVOR})
    computed = []
    real = cache.prompt_keys
    monkeypatch.setattr(cache, "prompt_keys", lambda rows, ml: computed.append(ml) or real(rows, ml))
    memo = tmp_path / "memo"
    first = cache.plan_keys(table, FLAVOR, None, memo)
    assert cache.plan_keys(table, FLAVOR, None, memo).equals(first) and computed == [None]
    assert not cache.plan_keys(table, FLAVOR, 512, memo).equals(first)  # another max length
    # a rewritten table (other shots): new keys, never the remembered ones
    atomic_write_parquet(build_prompts(questions, FLAVOR, num_fewshot=1, subjects=SUBJECTS),
                         table, {"flavor": FLAVOR})
    again = cache.plan_keys(table, FLAVOR, None, memo)
    assert computed == [None, 512, None]
    assert not again["prompt_key"].is_in(first["prompt_key"].to_list()).any()
