"""Run Snakemake through a REAL single-node SLURM (snakemake-executor-plugin-slurm).

The cluster is started by ci/slurm/start.sh (installs slurm-wlm + munge via
apt-get if missing; needs root).  Where that is impossible the tests SKIP with
the reason; set MMLU_REQUIRE_SLURM=1 (CI) to turn those skips into failures.

The snakemake-executor-plugin-slurm is not a dependency of the package: when it is missing
the session fixture pip-installs the pinned version into this venv (MMLU_SLURM_NO_PIP=1
turns that off, and the tests then skip).

Tests: a toy 3-job workflow; scancel on the toy workflow; the REAL mmlu-flavors workflow on
a tiny local model (2 subjects x 2 questions, 2 flavors, 4 logits jobs via sbatch) whose
predictions and cache views equal a local run's; scancel of a real logits job mid-shard
(no view, no *.tmp, the rerun submits only that job and reuses its flushed questions);
learned resources (after one finished job the next one's `sbatch -t/--mem` come from its
metrics file); `scancel --signal=TERM` then `--signal=KILL` inside a checkpoint (flushed
questions survive and are reused, at most one checkpoint interval is lost per kill); a job
sized from the measured speed to exceed its 1-minute limit, killed there (TIMEOUT, it logs
the SIGTERM and what it flushed), retried with 2x, 4x the limit, reusing what was flushed;
a job requeued by SLURM (`--slurm-requeue`, `scontrol requeue`) reuses its checkpoints.

Run only these tests:   pytest -m slurm tests/test_slurm.py -v
Cost (2-core VM, SLURM installed, see ci/slurm/README.md for the measured times): the
time-limit test dominates (a 1-minute limit must be hit, then the retry finishes the work).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
START = REPO / "ci" / "slurm" / "start.sh"
STOP = REPO / "ci" / "slurm" / "stop.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
PLUGIN_PIN = "snakemake-executor-plugin-slurm==2.8.0"

# `python -m snakemake` with the plugin's status-check back-off capped at 2 s
# (tests/slurm_snakemake.py): the plugin adds 10 s to its interval after every check in which
# no job finished (up to 180 s), so without the cap a job that runs for minutes is seen up to
# a minute after it ended, and these tests wait for many such jobs.
SNAKEMAKE = [sys.executable, str(Path(__file__).with_name("slurm_snakemake.py"))]

# Flags that make the plugin usable/fast on the CI cluster (no slurmdbd):
#  * status via `squeue` (sacct needs accounting storage, which we do not run);
#    start.sh sets MinJobAge=3600 so finished jobs stay visible to squeue.
#  * first status check after 1 s (then every 2 s at most: SNAKEMAKE above).
CI_SLURM_ARGS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1",
    "--latency-wait", "5",
]


def _require_or_skip(reason: str):
    if os.environ.get("MMLU_REQUIRE_SLURM") == "1":
        pytest.fail(f"MMLU_REQUIRE_SLURM=1 but: {reason}")
    pytest.skip(reason)


def _clean_env() -> dict:
    """Environment for snakemake: venv first on PATH, no SLURM_* leaking in
    (if pytest itself runs inside a SLURM job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MMLU_SLURM_PARTITION", "")  # profile: '' = cluster default
    return env


def _install_plugin() -> None:
    """pip-install the pinned executor plugin into this venv (it is not a dependency of the
    package; installing it changes no other package). MMLU_SLURM_NO_PIP=1 disables this."""
    if os.environ.get("MMLU_SLURM_NO_PIP") == "1":
        return
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", PLUGIN_PIN], capture_output=True, text=True, timeout=300)
    importlib.invalidate_caches()
    if r.returncode != 0:
        print(f"pip install {PLUGIN_PIN} failed:\n{r.stderr[-2000:]}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the single-node SLURM; stop it afterwards if we started it."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _install_plugin()
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _require_or_skip(f"executor plugin not installed (pip install {PLUGIN_PIN})")
    if sys.platform != "linux":
        _require_or_skip("single-node SLURM CI cluster is only supported on Linux")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        _require_or_skip("SLURM not installed and no apt-get to install it")
    was_up = (
        shutil.which("scontrol") is not None
        and subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.find("is UP") >= 0
    )
    t0 = time.monotonic()
    try:
        r = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        _require_or_skip("ci/slurm/start.sh timed out after 900 s")
    if r.returncode != 0:
        _require_or_skip(
            f"SLURM could not be started (ci/slurm/start.sh rc={r.returncode}):\n"
            + "\n".join(r.stderr.strip().splitlines()[-15:])
        )
    if shutil.which("sinfo") is None:
        _require_or_skip("start.sh succeeded but `sinfo` is not on PATH")
    print(f"SLURM ready after {time.monotonic() - t0:.1f} s")
    yield
    if not was_up and os.environ.get("MMLU_KEEP_SLURM") != "1":
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------
# >>> run_workflow_via_slurm: entry point for the lead to extend. <<<
# Runs `snakemake` in `workdir` (must contain a Snakefile, or pass
# ["--snakefile", path] in extra_args) through the slurm executor with the
# project profile profiles/slurm plus the CI speed-ups above.  To run the real
# mmlu-flavors workflow on a tiny model, call e.g.
#   run_workflow_via_slurm(tmp, ["--snakefile", str(REPO/"workflow"/"Snakefile"),
#                                "--config", "models=[tiny]", ...])
# and compare its outputs with a local run (`--profile profiles/local`).
# ---------------------------------------------------------------------------
def run_workflow_via_slurm(
    workdir: Path,
    extra_args: list[str] | tuple[str, ...] = (),
    *,
    timeout: float = 600,
    check: bool = True,
    background: bool = False,
):
    """Run snakemake via SLURM. Returns CompletedProcess (or Popen if background)."""
    cmd = [
        *SNAKEMAKE,
        "--profile", str(SLURM_PROFILE),
        *CI_SLURM_ARGS,
        "--jobs", "4",
        *extra_args,
    ]
    kw = dict(cwd=str(workdir), env=_clean_env(), text=True,
              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if background:
        return subprocess.Popen(cmd, **kw)
    r = subprocess.run(cmd, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake via SLURM failed (rc={r.returncode}):\n{r.stdout[-6000:]}")
    return r


TINY_SNAKEFILE = textwrap.dedent(
    r'''
    NAMES = ["a", "b", "c"]

    rule all:
        input: expand("out/{x}.txt", x=NAMES)

    rule make:
        output: "out/{x}.txt"
        params:
            # only "c" can be made slow (via --config slow=N); a/b never change
            sleep=lambda w: int(config.get("slow", 0)) if w.x == "c" else 0,
        resources: mem_mb=200, runtime=5, cpus_per_task=1
        shell:
            # record the SLURM job id, then write atomically (tmp + rename)
            """
            mkdir -p started
            echo "$SLURM_JOB_ID" > started/{wildcards.x}.jobid
            tmp={output}.tmp.$SLURM_JOB_ID
            echo "{wildcards.x} job=$SLURM_JOB_ID host=$(hostname)" > $tmp
            sleep {params.sleep}
            mv $tmp {output}
            """
    '''
)


def _write_tiny_workflow(d: Path) -> Path:
    (d / "Snakefile").write_text(TINY_SNAKEFILE)
    return d


def _summary(workdir: Path) -> dict[str, str]:
    """{output file: status} from `snakemake --summary` (no jobs are run)."""
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", "--cores", "1"],
        cwd=workdir, env=_clean_env(), text=True, capture_output=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    header = rows[0]
    i_file, i_status = header.index("output_file"), header.index("status")
    return {row[i_file]: row[i_status] for row in rows[1:]}


def test_tiny_workflow_runs_via_slurm(slurm_cluster, tmp_path):
    wd = _write_tiny_workflow(tmp_path)
    t0 = time.monotonic()
    r = run_workflow_via_slurm(wd, ["--slurm-keep-successful-logs"])
    elapsed = time.monotonic() - t0
    print(f"3-job workflow via SLURM took {elapsed:.1f} s")
    for x in "abc":
        out = (wd / "out" / f"{x}.txt").read_text()
        assert out.startswith(f"{x} job=")
        job_id = (wd / "started" / f"{x}.jobid").read_text().strip()
        assert job_id.isdigit(), "rule did not run inside a SLURM job"
        assert f"job={job_id}" in out
    # the executor really submitted via sbatch (one log per SLURM job)
    assert len(list((wd / ".snakemake" / "slurm_logs").rglob("*.log"))) == 3
    assert "submitted with SLURM jobid" in r.stdout
    assert not list((wd / "out").glob("*.tmp.*"))
    assert set(_summary(wd).values()) == {"ok"}


def test_cancelled_job_leaves_no_output_and_only_it_reruns(slurm_cluster, tmp_path):
    wd = _write_tiny_workflow(tmp_path)
    # 1st run: "c" sleeps long; cancel it with scancel once it has started.
    p = run_workflow_via_slurm(wd, ["--config", "slow=300", "--retries", "0", "--keep-going"],
                               background=True)
    try:
        jobid_file = wd / "started" / "c.jobid"
        deadline = time.monotonic() + 120
        while not jobid_file.exists() or not jobid_file.read_text().strip():
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline, "job c never started"
            time.sleep(0.5)
        c_jobid = jobid_file.read_text().strip()
        # wait until a and b are done, so the cancel only hits c
        while not ((wd / "out" / "a.txt").exists() and (wd / "out" / "b.txt").exists()):
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline, "jobs a/b did not finish"
            time.sleep(0.5)
        subprocess.run(["scancel", c_jobid], check=True)
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0, out
    assert re.search(rf"SLURM-job '{c_jobid}' failed, SLURM status is: 'CANCELLED", out), out[-4000:]
    assert not (wd / "out" / "c.txt").exists(), "cancelled job left an output file"
    assert _summary(wd)["out/c.txt"] == "missing"
    mtimes = {x: (wd / "out" / f"{x}.txt").stat().st_mtime_ns for x in "ab"}
    summary = _summary(wd)
    assert summary["out/a.txt"] == summary["out/b.txt"] == "ok"

    # 2nd run: only c is recomputed.
    r = run_workflow_via_slurm(wd, ["--config", "slow=0"])
    assert (wd / "out" / "c.txt").read_text().startswith("c job=")
    assert (wd / "started" / "c.jobid").read_text().strip() != c_jobid
    assert {x: (wd / "out" / f"{x}.txt").stat().st_mtime_ns for x in "ab"} == mtimes
    assert r.stdout.count("submitted with SLURM jobid") == 1, r.stdout
    assert set(_summary(wd).values()) == {"ok"}


# ---------------------------------------------------------------------------
# The real mmlu-flavors workflow through `--executor slurm` on a tiny local model.
# ---------------------------------------------------------------------------
import polars as pl  # noqa: E402
from polars.testing import assert_frame_equal  # noqa: E402

from workflow_fixture import make_tiny_model, snakemake  # noqa: E402
from workflow_fixture import write_config as _write_config  # noqa: E402


def write_config(*args, **extra) -> Path:
    """workflow_fixture.write_config without attribution pairs (the default pairs need
    original, helm and harness_e47e01b; these runs have one or two flavors, and no prompt
    variants keep them small). The attribution report needs pairs, so these runs build
    `reports/predictions.parquet` (PREDICTIONS), not `all`."""
    return _write_config(*args, **{"attribution_pairs": [], **extra})


PREDICTIONS = "reports/predictions.parquet"

REAL_SUBJECTS = ["abstract_algebra", "us_foreign_policy"]
REAL_FLAVORS = ["original", "harness_e47e01b"]


def real_slurm(workdir: Path, *args: str, background: bool = False, timeout: float = 900):
    """The real Snakefile in `workdir` (config.yaml there) via SLURM, like workflow_fixture."""
    env = {**_clean_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
           "--profile", str(SLURM_PROFILE), *CI_SLURM_ARGS, "--jobs", "4", *args]
    kw = dict(cwd=str(workdir), env=env, text=True, stdout=subprocess.PIPE,
              stderr=subprocess.STDOUT)
    if background:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def tiny_model_dir(questions, tmp_path_factory) -> Path:
    return make_tiny_model(questions, tmp_path_factory.mktemp("models") / "tiny")


def _shards(workdir: Path) -> dict[str, pl.DataFrame]:
    return {str(p.relative_to(workdir)): pl.read_parquet(p)
            for p in sorted((workdir / "data" / "cache").glob("*/*/*/part*.parquet"))}


def test_real_workflow_via_slurm_equals_local(slurm_cluster, tiny_model_dir, tmp_path):
    """2 subjects x 2 questions, 2 flavors, one subject per shard: 4 logits jobs via sbatch;
    predictions and every cache shard equal those of a local run of the same config."""
    from mmlu_flavors.io import read_meta

    runs = {}
    for kind in ("local", "slurm"):
        wd = tmp_path / kind
        wd.mkdir()
        write_config(wd, tiny_model_dir, REAL_SUBJECTS, 2, flavors=REAL_FLAVORS,
                     subjects_per_shard=1)
        t0 = time.monotonic()
        if kind == "local":
            snakemake(wd, "--profile", str(REPO / "profiles" / "local"), "--cores", "2",
                      PREDICTIONS)
        else:
            r = real_slurm(wd, PREDICTIONS)
            assert r.returncode == 0, r.stdout[-6000:]
            assert len(_submitted(r.stdout)) == 4, r.stdout[-6000:]
            # (the node has no GPU: a job asking for --gpus would be rejected by sbatch, so
            # success also shows that the `device: cpu` entry requests none)
        print(f"real workflow, {kind}: {time.monotonic() - t0:.1f} s")
        runs[kind] = wd
    local, slurm = runs["local"], runs["slurm"]
    assert_frame_equal(pl.read_parquet(local / "reports/predictions.parquet"),
                                  pl.read_parquet(slurm / "reports/predictions.parquet"))
    a, b = _shards(local), _shards(slurm)
    assert len(a) == len(REAL_FLAVORS) * len(REAL_SUBJECTS) and list(a) == list(b)
    for path in a:
        assert_frame_equal(a[path], b[path])
        ma, mb = read_meta(local / path), read_meta(slurm / path)
        assert ma.get("device") == mb.get("device") and ma.get("dtype") == mb.get("dtype")


def _squeue_jobs(name_substring: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"],
                         capture_output=True, text=True).stdout
    rows = [line.split("|", 2) for line in out.splitlines() if line.count("|") >= 2]
    return [tuple(r) for r in rows if name_substring in r[2]]


def test_scancel_real_logits_job_leaves_no_partial_shard(slurm_cluster, tiny_model_dir, tmp_path):
    """scancel a logits job in the middle of its second subject: its view does not exist and
    no *.tmp is left under data/cache, the other job's view is kept; the rerun submits only
    the cancelled job, which reuses the questions of its finished first subject."""
    from mmlu_flavors.cache import list_store

    subjects = ["abstract_algebra", "high_school_european_history", "us_foreign_policy"]
    n = 24
    write_config(tmp_path, tiny_model_dir, subjects, n, flavors=["harness_e47e01b"],
                 subjects_per_shard=23)  # part00: algebra (0) + european history (22);
    cache = tmp_path / f"data/cache/tiny-llama/harness_e47e01b/first{n}"  # part02: policy
    store = tmp_path / "data/cache/store"
    target = f"rule_logits_wildcards_tiny-llama_harness_e47e01b_first{n}_part00"
    p = real_slurm(tmp_path, "--retries", "0", PREDICTIONS, background=True)
    jobid = None
    try:
        deadline = time.monotonic() + 300
        while not list(store.glob("*/harness_e47e01b/abstract_algebra/*.parquet")):
            assert p.poll() is None, p.stdout.read()[-4000:]   # first subject flushed
            assert time.monotonic() < deadline, "the logits job never got through a subject"
            time.sleep(0.05)
        running = [j for j in _squeue_jobs(target) if j[1] == "RUNNING"]
        if running:
            jobid = running[0][0]
            subprocess.run(["scancel", jobid], check=True)
        out, _ = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            p.kill()
    if jobid is None or (cache / "part00.parquet").exists():
        pytest.skip("the logits job finished before scancel reached it")
    assert p.returncode != 0, out[-4000:]
    assert re.search(rf"SLURM-job '{jobid}' failed, SLURM status is: 'CANCELLED", out), out[-4000:]
    assert (cache / "part02.parquet").exists()          # the other job finished
    assert not (cache / "part00.parquet").exists()      # no partial view
    assert not [q for q in (tmp_path / "data/cache").rglob("*") if ".tmp" in q.name]
    held = list_store(store).filter(pl.col("flavor") == "harness_e47e01b")
    kept = dict(zip(held["subject"], held["questions"]))
    assert kept["abstract_algebra"] == n                 # the finished subject is kept
    mtime = (cache / "part02.parquet").stat().st_mtime_ns

    r = real_slurm(tmp_path, PREDICTIONS)
    assert r.returncode == 0, r.stdout[-6000:]
    assert len(_submitted(r.stdout)) == 1, r.stdout[-6000:]
    assert (cache / "part02.parquet").stat().st_mtime_ns == mtime
    m = json.loads((cache / "part00.metrics.json").read_text())
    reused = kept["abstract_algebra"] + kept.get("high_school_european_history", 0)
    assert (m["computed"], m["reused"]) == (2 * n - reused, reused), m
    assert pl.read_parquet(cache / "part00.parquet").height == 2 * n
    assert pl.read_parquet(tmp_path / "reports/predictions.parquet")["subject"].n_unique() == 3


# ---------------------------------------------------------------------------
# Learned resources, time limits, SIGTERM and SIGKILL on the real workflow (docs/cluster.md).
# ---------------------------------------------------------------------------
import yaml  # noqa: E402

from mmlu_flavors import resources as R  # noqa: E402


def _submitted(out: str, rule: str = "logits") -> list[str]:
    """SLURM job ids of `rule`'s jobs in the order Snakemake submitted them (the executor logs
    each submission with its log file, .snakemake/slurm_logs/rule_<rule>/...; the tokens
    stage's CPU jobs are submitted too)."""
    return re.findall(rf"submitted with SLURM jobid (\d+) \(log: [^)]*/rule_{rule}/", out)


def _job(jobid: str) -> dict[str, str]:
    """`scontrol show job` of a job (finished ones stay for MinJobAge = 1 h on the CI cluster)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True,
                         text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _limit(minutes: int) -> str:
    """A runtime as SLURM prints TimeLimit."""
    d, m = divmod(minutes, 1440)
    return (f"{d}-" if d else "") + f"{m // 60:02d}:{m % 60:02d}:00"


def _mem_mb(value: str) -> int:
    n, unit = re.fullmatch(r"([\d.]+)([MGT])", value).groups()
    return int(float(n) * {"M": 1, "G": 1024, "T": 1024**2}[unit])


def _edit_entry(workdir: Path, **fields) -> dict:
    cfg_path = workdir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model_registry"]["tiny-llama"].update(fields)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg["model_registry"]["tiny-llama"]


def test_learned_resources_size_the_next_job(slurm_cluster, tiny_model_dir, tmp_path):
    """After one finished logits job, the next job of that model asks SLURM for the runtime
    and memory derived from the job's metrics file, not the assumed ones (scontrol shows the
    submitted -t and --mem)."""
    n = 2
    cfg = write_config(tmp_path, tiny_model_dir, ["abstract_algebra", "us_foreign_policy"], n,
                       flavors=["original"], subjects_per_shard=1)
    entry = yaml.safe_load(cfg.read_text())["model_registry"]["tiny-llama"]
    views = tmp_path / f"data/cache/tiny-llama/original/first{n}"
    r = real_slurm(tmp_path, str(views.relative_to(tmp_path) / "part00.parquet"))
    assert r.returncode == 0, r.stdout[-6000:]
    first = _submitted(r.stdout)
    assert len(first) == 1, r.stdout[-6000:]
    metrics_path = views / "part00.metrics.json"
    m = json.loads(metrics_path.read_text())
    assert m["slurm_job_id"] == first[0] and m["computed"] == n and m["tokens_per_s"] > 0
    # The tiny model is so fast that both its measured and its assumed runtime are the
    # 15-minute floor. Scale the record as if it had been measured on hardware slow enough
    # for the next shard to need ~30 minutes, so the two differ.
    meas = R.measured([m], entry, "original")
    tokens, _ = R.learned_seconds(meas, "original", ["us_foreign_policy"], n)
    slow = 1800 * m["tokens_per_s"] / tokens
    # ... and its peak memory 1 GB above what it measured, so the learned request cannot meet
    # the assumed one by rounding (a logits job that reads its token ids can peak near the
    # assumed figure on a tiny model)
    m.update(forward_seconds=m["forward_seconds"] * slow, tokens_per_s=m["tokens_per_s"] / slow,
             wall_seconds=m["wall_seconds"] + m["forward_seconds"] * (slow - 1),
             peak_host_mem_mb=float(m["peak_host_mem_mb"]) + 1000)
    metrics_path.write_text(json.dumps(m))
    learned = R.model_resources(entry, "original", ["us_foreign_policy"], n, metrics=[m])
    assumed = R.model_resources(entry, "original", ["us_foreign_policy"], n)
    assert learned["runtime"] >= 30 and assumed["runtime"] == R.RUNTIME_MIN_MIN
    assert learned["mem_mb"] != assumed["mem_mb"]

    r = real_slurm(tmp_path, PREDICTIONS)  # only the other shard (part54) is missing
    assert r.returncode == 0, r.stdout[-6000:]
    second = _submitted(r.stdout)
    assert len(second) == 1, r.stdout[-6000:]
    job = _job(second[0])
    assert job["Comment"].endswith("_part54"), job   # us_foreign_policy is subject 54
    assert job["TimeLimit"] == _limit(learned["runtime"]), job
    assert _mem_mb(job["MinMemoryNode"]) == learned["mem_mb"], job


class LogTries:
    """Every version of a rule's log file: each try of a job rewrites it (`2> log`)."""

    def __init__(self, path: Path):
        self.path, self.tries = path, [""]

    def poll(self) -> str:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return self.tries[-1]
        cur = self.tries[-1]
        if text and cur and not text.startswith(cur[:120]):
            self.tries.append(text)
        elif len(text) >= len(cur):
            self.tries[-1] = text
        return text


def _progress(log: str) -> tuple[int, int]:
    """(questions a try flushed in checkpoints, questions of the checkpoint it was inside when
    it died: run through the model but lost; 0 when it had not started on a question of it),
    from its log (checkpoint lines, the chunk's 'computing N questions' line, tqdm)."""
    text = log.replace("\r", "\n")
    flushed = sum(int(k) for k in re.findall(r"checkpoint of (\d+) questions written", text))
    tail = re.split(r"questions written[^\n]*\n", text)[-1]
    chunk = re.findall(r"computing (\d+) questions", tail)
    started = any(int(d) >= 1 for d, _ in re.findall(r"forward:[^\n]*?(\d+)/(\d+) \[", tail))
    return flushed, int(chunk[-1]) if chunk and started else 0


def _inside_checkpoint(log: str, k: int, every: int) -> bool:
    """Has the try flushed k - 1 checkpoints and run a question of the k-th?"""
    flushed, ran_after = _progress(log)
    return flushed >= (k - 1) * every and ran_after >= 1


def _store_questions(workdir: Path) -> int:
    from mmlu_flavors.cache import list_store

    return int(list_store(workdir / "data/cache/store")["questions"].sum())


def _running_job(name: str, p: subprocess.Popen, deadline: float) -> str:
    while True:
        running = [j for j in _squeue_jobs(name) if j[1] == "RUNNING"]
        if running:
            return running[0][0]
        assert p.poll() is None, p.stdout.read()[-4000:]
        assert time.monotonic() < deadline, f"no running job {name}"
        time.sleep(0.2)


def test_sigterm_and_sigkill_mid_subject_lose_at_most_one_checkpoint(
        slurm_cluster, tiny_model_dir, tmp_path):
    """One subject of 48 questions, checkpoints of 4. Try 1 gets `scancel --signal=TERM`
    after two checkpoints, while it computes the third: it logs the SIGTERM, everything it flushed stays in the store;
    try 2 reuses those (it plans only the rest) and gets `scancel --signal=KILL`: at most one
    checkpoint interval of its work is lost; try 3 finishes, computing exactly what no try
    had flushed. Killed tries are counted from their logs and the store."""
    n, every = 48, 4
    write_config(tmp_path, tiny_model_dir, ["high_school_european_history"], n,
                 flavors=["harness_e47e01b"], checkpoint_questions=every, checkpoint_seconds=0)
    name = f"rule_logits_wildcards_tiny-llama_harness_e47e01b_first{n}_part00"
    log = tmp_path / f"logs/logits/tiny-llama/harness_e47e01b/first{n}/part00.log"

    def read_log() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    flushed_total, lost = 0, []
    for sig in ("TERM", "KILL"):
        log.unlink(missing_ok=True)  # each try writes its own
        p = real_slurm(tmp_path, "--retries", "0", PREDICTIONS, background=True)
        try:
            deadline = time.monotonic() + 300
            jobid = _running_job(name, p, deadline)
            # let this try flush two checkpoints and start on the next one, then signal it
            while not _inside_checkpoint(read_log(), 3, every):
                assert p.poll() is None, p.stdout.read()[-4000:]
                assert time.monotonic() < deadline, read_log()[-3000:]
                time.sleep(0.05)
            subprocess.run(["scancel", f"--signal={sig}", jobid], check=True)
            out, _ = p.communicate(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
        text = read_log()
        assert p.returncode != 0, out[-4000:]
        assert re.search(rf"SLURM-job '{jobid}' failed, SLURM status is: '(FAILED|CANCELLED)",
                         out), out[-4000:]
        flushed, ran_after = _progress(text)
        assert flushed < n - flushed_total, "the try finished its subject before the signal"
        # it planned only what earlier tries had not flushed (checkpoint lines say k/todo)
        assert re.search(rf"questions written \({every}/{n - flushed_total}\)", text), text[-3000:]
        if sig == "TERM":
            assert "terminated by SIGTERM" in text, text[-3000:]
        flushed_total += flushed
        assert _store_questions(tmp_path) == flushed_total   # every flushed question survived
        assert 1 <= ran_after <= every   # killed inside a checkpoint: its work is lost
        lost.append(ran_after)
        assert not (tmp_path / f"data/cache/tiny-llama/harness_e47e01b/first{n}"
                    / "part00.parquet").exists()

    log.unlink()
    r = real_slurm(tmp_path, "--retries", "0", PREDICTIONS)
    assert r.returncode == 0, r.stdout[-6000:]
    m = json.loads((tmp_path / f"data/cache/tiny-llama/harness_e47e01b/first{n}"
                    / "part00.metrics.json").read_text())
    assert (m["computed"], m["reused"]) == (n - flushed_total, flushed_total)
    assert f"computed {n - flushed_total}, reused {flushed_total} questions" in read_log()
    # questions run more than once = the unflushed work of the two killed tries
    print(f"SIGTERM/SIGKILL: flushed {flushed_total} of {n}; run again: {lost} "
          f"(checkpoint interval {every})")
    assert pl.read_parquet(tmp_path / "reports/predictions.parquet").height > 0


FIRST_LIMIT_MIN = 1   # the entry's runtime_min: SLURM's smallest limit (-t 1)
WORK_FACTOR = 2.5     # the job needs this many first limits of compute at the measured speed
TIME_LIMIT_POOL = "professional_law"   # 1534 test questions: room for a fast machine


@pytest.fixture(scope="module")
def slower_model_dir(questions, tmp_path_factory) -> Path:
    """A random Llama with ~4x the tiny one's compute per token (seconds to build), so that a
    few minutes of work stay within one subject's questions even on a fast idle machine; the
    SIGTERM handler still runs within milliseconds (Python runs it between torch ops)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_tokenizers import bytelevel_no_bos

    tok = bytelevel_no_bos(questions)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("models") / "slower"
    LlamaForCausalLM(cfg).float().eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _seconds_per_question(log: Path, questions: int) -> float:
    """From a finished job's log: seconds from its first `computing` line to its last
    checkpoint line, per question (the job's start-up and fixed costs left out: they would
    inflate a small reference's figure several times under load)."""
    stamps = [(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
               + int(line[20:23]) / 1000, line)
              for line in log.read_text().replace("\r", "\n").splitlines()
              if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line)]
    first = next(t for t, line in stamps if ": computing " in line)
    last = [t for t, line in stamps if "questions written" in line][-1]
    return max(last - first, 1e-3) / questions


_SIGTERM_LINE = re.compile(r"terminated by SIGTERM after (\d+) of (\d+) questions were "
                           r"computed and flushed")


def test_time_limit_kill_is_retried_with_a_larger_limit(slurm_cluster, slower_model_dir,
                                                        questions, tmp_path):
    """A logits job sized from this machine's measured speed to need WORK_FACTOR x its
    1-minute limit: SLURM kills the first try at its limit (TIMEOUT; SIGTERM, KillWait, then
    SIGKILL); every killed try logs `terminated by SIGTERM after K of ...` with K exactly its
    flushed checkpoints; Snakemake resubmits with 2x, 4x ... the limit; the last try computes
    only what no killed try flushed (reused = the sum of the K, > 0); the store holds each
    question once, and the questions of an uninterrupted local run are equal to it.

    Sizing: first a local run of `ref` questions (the same job code, checkpoints of `every`)
    gives seconds per question; n is chosen so that n x that >= WORK_FACTOR minutes. The kill
    comes 60-90 s after the start (slurmctld checks limits every 30 s), so escaping it needs
    the machine to get ~3x faster between the measurement and the job; a slower machine only
    means more tries (up to 4: 1 + 2 + 4 + 8 minutes)."""
    every, ref = 2, 8   # short checkpoints (a try flushes some even after a slow start); the
    # reference and every try cut the same chunks, so their numbers are equal
    cfg_common = dict(flavors=["harness_e47e01b"], checkpoint_questions=every,
                      checkpoint_seconds=0)
    write_config(tmp_path, slower_model_dir, [TIME_LIMIT_POOL], ref, **cfg_common,
                 cache_store="data/ref_store")
    ref_view = f"data/cache/tiny-llama/harness_e47e01b/first{ref}/part00.parquet"
    t0 = time.monotonic()
    snakemake(tmp_path, "--profile", str(REPO / "profiles" / "local"), "--cores", "1", ref_view)
    per_q = _seconds_per_question(
        tmp_path / f"logs/logits/tiny-llama/harness_e47e01b/first{ref}/part00.log", ref)
    size = questions.filter((pl.col("subject") == TIME_LIMIT_POOL)
                            & (pl.col("split") == "test")).height
    n = math.ceil(WORK_FACTOR * 60 * FIRST_LIMIT_MIN / per_q)
    print(f"reference: {ref} questions in {time.monotonic() - t0:.0f} s, {per_q:.3f} s per "
          f"question in the job -> n = {n} ({os.getloadavg()[0]:.1f} load)")
    assert n <= size, (f"this machine computes {1 / per_q:.0f} questions/s: even all {size} "
                       f"questions of {TIME_LIMIT_POOL} fit in {WORK_FACTOR} minutes; use a "
                       "bigger model (slower_model_dir)")

    write_config(tmp_path, slower_model_dir, [TIME_LIMIT_POOL], n, **cfg_common)
    _edit_entry(tmp_path, runtime_min=FIRST_LIMIT_MIN)
    target = f"data/cache/tiny-llama/harness_e47e01b/first{n}/part00.parquet"
    log = LogTries(tmp_path / f"logs/logits/tiny-llama/harness_e47e01b/first{n}/part00.log")
    t0 = time.monotonic()
    p = real_slurm(tmp_path, "--retries", "3", target, background=True)
    try:
        while p.poll() is None:
            log.poll()
            assert time.monotonic() - t0 < 1500, "no result after 25 minutes"
            time.sleep(0.2)
        out = p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
    log.poll()
    print(f"SLURM run: {time.monotonic() - t0:.0f} s")
    assert p.returncode == 0, out[-6000:]
    ids = _submitted(out)
    jobs = [_job(i) for i in ids]
    # the first try was killed at its limit, each retry asked for twice the previous limit
    assert len(ids) >= 2, f"the job finished inside its first limit: {jobs}"
    assert [j["JobState"] for j in jobs] == ["TIMEOUT"] * (len(ids) - 1) + ["COMPLETED"], jobs
    assert [j["TimeLimit"] for j in jobs] == [_limit(FIRST_LIMIT_MIN * 2 ** k)
                                              for k in range(len(ids))], jobs
    assert "SLURM status is: 'TIMEOUT'" in out, out[-6000:]
    assert len(log.tries) == len(ids), [t[-500:] for t in log.tries]

    flushed, lost, terms = 0, [], []
    for i, text in enumerate(log.tries[:-1]):  # the killed tries
        term = _SIGTERM_LINE.findall(text)
        done, ran_after = _progress(text)
        finished = re.search(r"computed (\d+), reused \d+ questions \(", text)
        if not term and finished and i > 0:
            # a retry that ended its work seconds before its limit and was killed in
            # Snakemake's teardown (seen under a load of 26 on 2 cores): all of it is flushed
            k = int(finished[1])
        else:
            assert len(term) == 1, f"try {i + 1} did not log its SIGTERM:\n{text[-3000:]}"
            k = int(term[0][0])
            terms.append(k)
        assert k == done, (k, done, text[-3000:])  # K = exactly its flushed checkpoints
        if k:  # it planned only what the earlier tries had not flushed
            assert re.search(rf"questions written \({every}/{n - flushed}\)", text), text[-3000:]
        assert ran_after <= every
        flushed += k
        lost.append(ran_after)
    print(f"time limit: {len(ids)} tries; the killed ones flushed {flushed} of {n} questions "
          f"(K at SIGTERM: {terms}) and ran {lost} again (checkpoints of {every})")
    assert sum(terms) > 0, "no killed try flushed a checkpoint before its SIGTERM"
    m = json.loads((tmp_path / target.replace(".parquet", ".metrics.json")).read_text())
    assert m["slurm_job_id"] == ids[-1]
    assert (m["computed"], m["reused"]) == (n - flushed, flushed), m
    assert f"computed {n - flushed}, reused {flushed} questions" in log.tries[-1]
    # each question is in the store once: no try recomputed a flushed one
    keys = pl.scan_parquet(sorted((tmp_path / "data/cache/store").rglob("*.parquet"))
                           ).select("input_key").collect()["input_key"]
    assert keys.len() == keys.n_unique() == n
    view = pl.read_parquet(tmp_path / target)
    assert view.height == n
    assert_frame_equal(view.head(ref), pl.read_parquet(tmp_path / ref_view))


def test_requeued_job_reuses_its_checkpoints(slurm_cluster, tiny_model_dir, tmp_path):
    """Preemption with `--slurm-requeue` (sbatch --requeue), simulated by `scontrol requeue`
    inside a checkpoint: SLURM kills the job and runs it again under the same job id (its
    ~2-minute requeue delay cut short with `scontrol update StartTime=now`); Snakemake keeps
    waiting for it, submits nothing else and uses no retry; the requeued run reuses every
    question flushed before the requeue."""
    n, every = 48, 4
    write_config(tmp_path, tiny_model_dir, ["high_school_european_history"], n,
                 flavors=["harness_e47e01b"], checkpoint_questions=every, checkpoint_seconds=0)
    name = f"rule_logits_wildcards_tiny-llama_harness_e47e01b_first{n}_part00"
    views = tmp_path / f"data/cache/tiny-llama/harness_e47e01b/first{n}"
    log = tmp_path / f"logs/logits/tiny-llama/harness_e47e01b/first{n}/part00.log"
    p = real_slurm(tmp_path, "--slurm-requeue", "--retries", "0",
                   str(views.relative_to(tmp_path) / "part00.parquet"), background=True)
    try:
        deadline = time.monotonic() + 300
        jobid = _running_job(name, p, deadline)
        while not _inside_checkpoint(log.read_text() if log.exists() else "", 3, every):
            assert p.poll() is None, p.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        subprocess.run(["scontrol", "requeue", jobid], check=True)
        while True:   # killed (REQUEUED, COMPLETING) and back in the queue (PENDING)
            job = _job(jobid)
            if job["JobState"] == "PENDING" or (job["Restarts"] != "0" and job["JobState"]
                                                in ("RUNNING", "COMPLETED")):
                break
            assert time.monotonic() < deadline + 120, job
            time.sleep(0.2)
        if job["JobState"] == "PENDING":
            # SLURM holds a requeued job ~2 minutes (reason BeginTime); let it start now, as
            # an operator would (the job id, its state and Restarts stay SLURM's)
            subprocess.run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"],
                           check=True)
        flushed = _store_questions(tmp_path)
        out, _ = p.communicate(timeout=900)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out[-6000:]
    assert _submitted(out) == [jobid], out[-6000:]
    job = _job(jobid)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), job
    assert 2 * every <= flushed < n
    m = json.loads((views / "part00.metrics.json").read_text())
    assert m["slurm_job_id"] == jobid
    assert (m["computed"], m["reused"]) == (n - flushed, flushed), m
    assert pl.read_parquet(views / "part00.parquet").height == n
