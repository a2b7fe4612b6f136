"""The logits cache store: reuse by identity and exact input, never a wrong value.

A tiny random Llama saved as a local model directory (a real `local` model entry) computes
real MMLU prompts; every engine call is counted, so "computes only the new questions" is
asserted on the number of model inputs actually run.
"""

from __future__ import annotations

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

from mmlu_flavors import cache, engine, models
from mmlu_flavors import prune
from mmlu_flavors.cache import Store, compute_view, list_store, read_shards
from mmlu_flavors.prompts import build_prompts
from workflow_fixture import ROOT, make_tiny_model

SUBJECTS = ["abstract_algebra", "us_foreign_policy", "marketing"]
FLAVORS = ["original", "harness_e47e01b"]


@pytest.fixture(scope="module")
def model_dir(questions, tmp_path_factory) -> Path:
    return make_tiny_model(questions, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def prompts(questions) -> pl.DataFrame:
    return pl.concat([build_prompts(questions, f, subjects=SUBJECTS) for f in FLAVORS])


@pytest.fixture()
def counted(monkeypatch) -> list[int]:
    """Number of model inputs run by each engine call (and nothing else)."""
    calls: list[int] = []
    real = engine.run_fast

    def run(model, requests, *a, **k):
        calls.append(len(requests))
        return real(model, requests, *a, **k)

    monkeypatch.setattr(engine, "run_fast", run)
    return calls


def _entry(model_dir: Path, **extra) -> dict:
    return {"source": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu",
            **extra}


def _view(tmp: Path, prompts, model_dir, flavor="original", subjects=SUBJECTS[:2], n=2,
          entry=None, name="sel", **kw) -> tuple[pl.DataFrame, cache.JobStats]:
    stats = cache.JobStats()
    out = tmp / "views" / flavor / f"{name}.parquet"
    view = compute_view(prompts, "tiny", entry or _entry(model_dir), None, flavor, subjects, n,
                        out, tmp / "store", progress=False, stats=stats, **kw)
    return view, stats


def test_grow_shrink_switch_compute_only_new_questions(prompts, model_dir, tmp_path,
                                                       counted) -> None:
    first, st = _view(tmp_path, prompts, model_dir, n=2)
    assert (st.computed, st.reused) == (4, 0) and sum(counted) == 4
    tok = models.load_tokenizer(_entry(model_dir))[0]
    assert first["greedy_text"].to_list() == [tok.decode([i]) for i in first["greedy_id"]]
    grown, st = _view(tmp_path, prompts, model_dir, n=5, name="grown")
    assert (st.computed, st.reused) == (6, 4) and sum(counted) == 4 + 6
    # the first two questions of each subject are the same values, read back from the store
    old = grown.filter(pl.col("index") < 2).sort("subject", "index")
    assert old.equals(first.sort("subject", "index"))
    for n in (3, 2, 5):  # shrinking, switching back and forth: nothing computed, no model
        _, st = _view(tmp_path, prompts, model_dir, n=n, name=f"again{n}",
                      loader=lambda *a: pytest.fail("the model was loaded"))
        assert st.computed == 0 and st.reused == 2 * n
    assert sum(counted) == 10


def test_new_subject_or_flavor_computes_only_it(prompts, model_dir, tmp_path, counted) -> None:
    _view(tmp_path, prompts, model_dir, subjects=SUBJECTS[:2], n=2)
    _, st = _view(tmp_path, prompts, model_dir, subjects=SUBJECTS, n=2, name="more")
    assert (st.computed, st.reused) == (2, 4)
    _, st = _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=2)
    assert (st.computed, st.reused) == (4, 0)
    assert sum(counted) == 4 + 2 + 4


def test_identity_changes_recompute_exactly_the_affected(prompts, model_dir, tmp_path,
                                                         counted) -> None:
    base, _ = _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=3)
    # a resource hint is not identity
    _, st = _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=3, name="hint",
                  entry=_entry(model_dir, batch_size=1, params_b=7.0, gpus=2))
    assert st.computed == 0
    # dtype: another model fingerprint, everything again
    _, st = _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=3, name="bf16",
                  entry=_entry(model_dir, dtype="bfloat16"))
    assert st.computed == 6
    # max length: only the questions it cuts (those longer than the limit) are recomputed
    limit = int(base["context_tokens"].sort()[3])
    longest = pl.concat_list("letter_cont_ids", "text_cont_ids").list.eval(
        pl.element().list.len()).list.max()
    cut = int(base.select((pl.col("context_tokens") + longest > limit + 1).sum()).item())
    assert 0 < cut < base.height
    _, st = _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=3, name="short",
                  entry=_entry(model_dir, max_length=limit))
    assert (st.computed, st.reused) == (cut, base.height - cut)
    # other weights (a changed file in the model directory): a new fingerprint
    other = tmp_path / "other-weights"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-5}))
    _, st = _view(tmp_path, prompts, other, flavor="harness_e47e01b", n=3, name="other",
                  entry=_entry(other))
    assert st.computed == 6


def test_damaged_and_foreign_segments_are_moved_aside_and_recomputed(
        prompts, model_dir, tmp_path, counted) -> None:
    good, _ = _view(tmp_path, prompts, model_dir, n=3, checkpoint_questions=1)
    key = models.model_key(models.fingerprint(_entry(model_dir)))
    store = Store(tmp_path / "store", key)
    segs = store.segments("original", SUBJECTS[0])
    assert len(segs) == 3  # one checkpoint per question
    segs[0].write_bytes(segs[0].read_bytes()[:100])  # truncated by a crash or a full disk
    # a segment of another model copied in by mistake
    foreign = store.dir("original", SUBJECTS[1]) / "zz-foreign.parquet"
    cache.atomic_write_parquet(pl.read_parquet(store.segments("original", SUBJECTS[1])[0]),
                               foreign, {"model_key": "0" * 16, "flavor": "original",
                                         "format": cache.STORE_FORMAT})
    counted.clear()
    again, st = _view(tmp_path, prompts, model_dir, n=3, name="again")
    assert st.computed == 1 and sum(counted) == 1
    assert again.drop("greedy_logprob", "letter_logprobs", "topk_logprobs", "letter_cont_logprobs",
                      "letter_cont_sum", "text_cont_logprobs", "text_cont_sum").equals(
        good.drop("greedy_logprob", "letter_logprobs", "topk_logprobs", "letter_cont_logprobs",
                  "letter_cont_sum", "text_cont_logprobs", "text_cont_sum"))
    assert (again["letter_cont_sum"].list.first() - good["letter_cont_sum"].list.first()
            ).abs().max() < 1e-4
    assert sorted(p.name for p in (tmp_path / "store").rglob("*.bad")) == sorted(
        [segs[0].name + ".bad", "zz-foreign.parquet.bad"])
    assert not foreign.exists() and not segs[0].exists()


def test_views_of_one_model_never_mix_identities(prompts, model_dir, tmp_path) -> None:
    _view(tmp_path, prompts, model_dir, n=1, name="a")
    _view(tmp_path, prompts, model_dir, flavor="harness_e47e01b", n=1, name="b",
          entry=_entry(model_dir, dtype="bfloat16"))
    with pytest.raises(cache.CacheIdentityError, match="refusing to mix shards of model 'tiny'"):
        read_shards([tmp_path / "views/original/a.parquet",
                     tmp_path / "views/harness_e47e01b/b.parquet"])


def _write_prompts(tmp: Path, prompts: pl.DataFrame) -> None:
    """Per-flavor prompt tables as the prompts step writes them (with their metadata)."""
    for flavor in FLAVORS:
        cache.atomic_write_parquet(prompts.filter(pl.col("flavor") == flavor),
                                   tmp / f"p-{flavor}.parquet", {"flavor": flavor})


def _cli(tmp: Path, model_dir: Path, flavor: str, n: int, out: str, *extra: str
         ) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mmlu_flavors.cli", "logits", "--prompts",
         str(tmp / f"p-{flavor}.parquet"),
         "--flavor", flavor, "--model-name", "tiny", "--entry", json.dumps(_entry(model_dir)),
         "--subjects", ",".join(SUBJECTS), "--questions-per-subject", str(n),
         "--store", str(tmp / "store"), "--out", str(tmp / out), "--no-progress", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "workflow"), "OMP_NUM_THREADS": "1"})


def test_concurrent_jobs_share_the_store(prompts, model_dir, tmp_path) -> None:
    """Two flavors and two overlapping selections of one flavor at the same time."""
    _write_prompts(tmp_path, prompts)
    procs = [_cli(tmp_path, model_dir, "original", 2, "a.parquet"),
             _cli(tmp_path, model_dir, "original", 3, "b.parquet"),
             _cli(tmp_path, model_dir, "harness_e47e01b", 2, "c.parquet")]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    common = b.filter(pl.col("index") < 2).sort("subject", "index")
    assert (common["letter_cont_sum"].list.first()
            - a.sort("subject", "index")["letter_cont_sum"].list.first()).abs().max() < 1e-4
    # a later run finds every question, whichever writer stored it first
    proc = _cli(tmp_path, model_dir, "original", 3, "d.parquet")
    assert proc.wait(timeout=600) == 0
    assert "computed 0, reused 9 questions" in proc.stderr.read()
    table = list_store(tmp_path / "store")
    assert sorted(table["flavor"].unique().to_list()) == sorted(FLAVORS)
    assert table.filter(pl.col("flavor") == "original")["questions"].to_list() == [3, 3, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_job_keeps_its_checkpoints(prompts, model_dir, tmp_path, sig) -> None:
    """SIGTERM (SLURM time limit, preemption) or SIGKILL mid-subject: the checkpoints written
    before survive and are reused; at most one checkpoint is recomputed."""
    _write_prompts(tmp_path, prompts)
    proc = _cli(tmp_path, model_dir, "harness_e47e01b", 8, "v.parquet",
                "--checkpoint-questions", "2")
    store = tmp_path / "store"
    deadline = time.time() + 300
    while len(list(store.rglob("*.parquet"))) < 3 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert code == 143 and "terminated by SIGTERM" in err, err[-2000:]
    else:
        assert code == -signal.SIGKILL
    assert not (tmp_path / "v.parquet").exists()
    kept = pl.scan_parquet(sorted(store.rglob("*.parquet"))).select("input_key").collect().height
    assert kept >= 6
    proc = _cli(tmp_path, model_dir, "harness_e47e01b", 8, "v.parquet",
                "--checkpoint-questions", "2")
    assert proc.wait(timeout=600) == 0
    err = proc.stderr.read()
    computed = int(err.split("computed ")[-1].split(",")[0])
    assert computed == 24 - kept, err[-1000:]
    assert pl.read_parquet(tmp_path / "v.parquet").height == 24
    metrics = json.loads((tmp_path / "v.metrics.json").read_text())
    assert (metrics["computed"], metrics["reused"]) == (24 - kept, kept)


def test_prune_keeps_configured_models(prompts, model_dir, tmp_path) -> None:
    _view(tmp_path, prompts, model_dir, n=1, name="a")
    _view(tmp_path, prompts, model_dir, n=1, name="b", entry=_entry(model_dir, dtype="float16"))
    keep = models.model_key(models.fingerprint(_entry(model_dir)))
    assert {p.name for p in (tmp_path / "store").iterdir() if p.is_dir()} >= {keep}
    pattern = models.fingerprint_pattern(_entry(model_dir), name="a")
    plan = prune.plan_prune(tmp_path / "store", [pattern])
    assert [d.key for d, _ in plan.keep] == [keep] and len(plan.remove) == 1
    assert plan.remove[0].questions == 2 and plan.remove[0].path.exists()
    batch = prune.quarantine(plan, {})
    assert not plan.remove[0].path.exists() and (batch / plan.remove[0].key).is_dir()
    assert list_store(tmp_path / "store")["model_key"].unique().to_list() == [keep]


def test_plan_counts_without_a_model(prompts, model_dir, tmp_path) -> None:
    _view(tmp_path, prompts, model_dir, n=2)
    key = models.model_key(models.fingerprint(_entry(model_dir)))
    store = Store(tmp_path / "store", key, readonly=True)
    assert cache.plan_counts(prompts, store, "original", SUBJECTS, 3, None) == (9, 4)
    assert cache.plan_counts(prompts, store, "original", SUBJECTS[:2], 2, None) == (4, 4)


def test_cache_cli_lists_and_prunes_by_config(prompts, model_dir, tmp_path) -> None:
    import yaml

    _view(tmp_path, prompts, model_dir, n=1, name="a")
    _view(tmp_path, prompts, model_dir, n=1, name="b", entry=_entry(model_dir, dtype="float16"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"model_registry": {"tiny": _entry(model_dir)}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    cli = [sys.executable, "-m", "mmlu_flavors.cli", "cache"]
    listed = subprocess.run(cli + ["list", "--store", str(tmp_path / "store")], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert listed.count("abstract_algebra") == 2 and "tiny" in listed
    keep = models.model_key(models.fingerprint(_entry(model_dir)))
    out = subprocess.run(cli + ["prune", "--store", str(tmp_path / "store"), "--configfile",
                                str(cfg), "--yes"], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert "moved 1 store(s)" in out and f"keep    {keep}" in out
    assert [p.name for p in (tmp_path / "store").iterdir()
            if p.is_dir() and p.name != prune.QUARANTINE] == [keep]


def test_checkpoints_by_count_then_by_time(prompts, model_dir, tmp_path) -> None:
    """The first checkpoint holds `checkpoint_questions`; later ones are sized to about
    `checkpoint_seconds` of measured work (here: less than one question's, so one each)."""
    _view(tmp_path, prompts, model_dir, subjects=SUBJECTS[:1], n=6, checkpoint_questions=3,
          checkpoint_seconds=1e-6)
    store = Store(tmp_path / "store", models.model_key(models.fingerprint(_entry(model_dir))))
    sizes = sorted((pl.read_parquet(p).height for p in store.segments("original", SUBJECTS[0])),
                   reverse=True)
    assert sizes == [3, 1, 1, 1]
