"""How long `snakemake -n` takes over a big logits cache: wall time and peak memory.

Builds a work directory as a finished data stage and a full cache store leave it, then times
dry runs of the real Snakefile over it:

* the models: `blog.yaml`'s 8 Hub entries (all 57 subjects, every question, 8 shards per
  model and flavor), resolved offline from a local Hub cache that holds only their `refs/main`
  (a fingerprint needs the commit, never the weights: no weight file is read or hashed);
* `data/questions.parquet` and `data/prompts/{flavor}.parquet` written by the package's own
  CLI steps (`questions`, `prompts`) from `resources/mmlu` (14,042 test questions);
* the store: for each model x flavor x subject, segments written by `cache.Store.write` (the
  cache's own writer) in checkpoints of 256 questions, with the real prompt keys and input
  keys of a SHA-256's length, and engine outputs of the real shapes (top-10 ids and log-probs,
  per-token continuation log-probs of the real token counts' order, 4 letters);
* scenarios: `missing` (no view written yet: every logits job is planned from the store, the
  worst case: a fresh work directory sharing a store, a new selection, `rm -r data/cache/<m>`)
  and `present` (every view of the four flavors exists: the healing checks open each footer).

Each dry run is timed with `os.wait4` (wall seconds, peak RSS of the snakemake process); the
median of `--runs` runs is reported with the machine's description and load average.

    .venv/bin/python bench/bench_dryrun.py --workdir /tmp/dryrun-bench --runs 5 \\
        --out bench/results/dryrun.json
    .venv/bin/python bench/bench_dryrun.py --quick     # 2 models, 2 flavors, 2 subjects: seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from mmlu_flavors import cache, models  # noqa: E402
from mmlu_flavors.checks import read_prompts  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import machine as bench_machine  # noqa: E402
from mmlu_flavors.data import SUBJECTS  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FLAVORS = ["original", "helm", "harness_e47e01b", "harness_current"]
CHECKPOINT = 256  # questions per segment (config.yaml checkpoint_questions)
STAMP = "bench_dryrun.json"  # what a work directory was built with


def bench_config(n_models: int, flavors: list[str], subjects: list[str] | str,
                 per_shard: int) -> dict:
    """blog.yaml's model entries (the first `n_models`), the bench's flavors and subjects,
    no attribution variants (only the store's flavors are planned)."""
    blog = yaml.safe_load((ROOT / "blog.yaml").read_text())
    names = blog["models"][:n_models]
    return {"models": names, "model_registry": {n: blog["model_registry"][n] for n in names},
            "flavors": flavors, "subjects": subjects, "questions_per_subject": None,
            "subjects_per_shard": per_shard, "attribution_pairs": [],
            "mmlu_source": "local", "mmlu_dir": str(ROOT / "resources" / "mmlu")}


def _env(work: Path) -> dict:
    return {**os.environ, "HF_HUB_CACHE": str(work / "hub"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT / "workflow")}


def _cli(*args: str) -> None:
    """A step of the package's CLI (what the workflow's rules run), in this process."""
    from mmlu_flavors import cli

    if cli.main(list(args)) != 0:
        raise SystemExit(f"mmlu_flavors {' '.join(args)} failed")


def _questions(work: Path, cfg: dict) -> None:
    """data/questions.parquet by the `questions` step; for a subset of subjects (--quick)
    only their rows, re-stamped with their checksum (the prompts step then renders only them)."""
    from mmlu_flavors.data import table_checksum
    from mmlu_flavors.io import atomic_write_parquet, read_meta

    out = work / "data/questions.parquet"
    _cli("questions", "--source", "local", "--mmlu", cfg["mmlu_dir"], "--out", str(out))
    if cfg["subjects"] != "all":
        df = pl.read_parquet(out).filter(pl.col("subject").is_in(cfg["subjects"]))
        atomic_write_parquet(df, out, {**read_meta(out), "checksum_sha256": table_checksum(df)})


def _fake_commit(hub_id: str) -> str:
    return hashlib.sha1(hub_id.encode()).hexdigest()


def _store_rows(prompts: pl.DataFrame, pkeys: pl.Series, model: str, rng: np.random.Generator
                ) -> pl.DataFrame:
    """Store rows (`cache.STORE_SCHEMA`) for every prompt row, outputs of the engine's shapes."""
    n = prompts.height
    ikeys = [hashlib.sha256(f"{model}/{k}".encode()).hexdigest() for k in pkeys.to_list()]
    n_text = rng.integers(3, 25, (n, 4))  # tokens of each choice's text continuation
    text_lp = [[(-rng.gamma(1.0, 1.5, k)).tolist() for k in row] for row in n_text]
    letter = rng.normal(-1.5, 1.0, (n, 4))
    topk_lp = np.sort(-rng.gamma(1.0, 2.0, (n, 10)), axis=1)[:, ::-1]
    return pl.DataFrame({
        "input_key": ikeys, "prompt_key": pkeys, "index": prompts["index"],
        "letter_ids": [[330, 365, 356, 422]] * n, "letter_logprobs": letter.tolist(),
        "greedy_id": rng.integers(0, 50_000, n), "greedy_text": [" A"] * n,
        "greedy_logprob": topk_lp[:, 0],
        "topk_ids": rng.integers(0, 50_000, (n, 10)).tolist(), "topk_logprobs": topk_lp.tolist(),
        "letter_cont_logprobs": letter[:, :, None].tolist(),
        "letter_cont_greedy": [[[False]] * 4] * n, "letter_cont_sum": letter.tolist(),
        "text_cont_logprobs": text_lp,
        "text_cont_greedy": [[[False] * k for k in row] for row in n_text],
        "text_cont_sum": [[sum(x) for x in row] for row in text_lp],
        "gen_ids": [[]] * n, "gen_text": [None] * n,
    }, schema=cache.STORE_SCHEMA)


def build(work: Path, cfg: dict, log=print) -> dict:
    """The work directory: config, Hub refs, questions and prompts (CLI), the full store."""
    t0 = time.perf_counter()
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in cfg["models"]:
        hub_id = cfg["model_registry"][name]["hub_id"]
        ref = work / "hub" / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(_fake_commit(hub_id))
    _questions(work, cfg)
    subjects = SUBJECTS if cfg["subjects"] == "all" else cfg["subjects"]
    rng = np.random.default_rng(0)
    rows = segments = 0
    for flavor in cfg["flavors"]:
        _cli("prompts", "--questions", str(work / "data/questions.parquet"), "--flavor", flavor,
             "--out", str(work / f"data/prompts/{flavor}.parquet"))
        prompts = cache.select_rows(read_prompts(work / f"data/prompts/{flavor}.parquet", flavor),
                                    subjects, None)
        log(f"  {flavor}: {prompts.height} prompts")
        pkeys: dict = {}  # max_length -> keys
        for name in cfg["models"]:
            entry = cfg["model_registry"][name]
            fp = models.fingerprint(entry, None, name=name)
            store = cache.Store(work / "data/cache/store", models.model_key(fp))
            store.write_identity(fp, {"name": name})
            ml = entry.get("max_length")
            if ml not in pkeys:
                pkeys[ml] = cache.prompt_keys(prompts, ml)
            out = _store_rows(prompts, pkeys[ml], name, rng)
            for (subject,), part in out.group_by(prompts["subject"], maintain_order=True):
                for start in range(0, part.height, CHECKPOINT):
                    store.write(flavor, subject, part.slice(start, CHECKPOINT),
                                {"dtype": entry.get("dtype"), "device": "cpu", "model": name})
                    segments += 1
            rows += out.height
    built = {"config": cfg, "store_rows": rows, "segments": segments,
             "store_bytes": sum(p.stat().st_size
                                for p in (work / "data/cache/store").rglob("*.parquet")),
             "build_seconds": round(time.perf_counter() - t0, 1)}
    (work / STAMP).write_text(json.dumps(built, indent=2))
    return built


def write_views(work: Path, cfg: dict) -> int:
    """Every view of the bench's flavors, as a logits job writes it (its rows from the store,
    `CACHE_SCHEMA`, its metadata): the `present` scenario. Returns the number written."""
    from mmlu_flavors.io import atomic_write_parquet

    shards = _shards(cfg)
    written = 0
    for flavor in cfg["flavors"]:
        prompts = read_prompts(work / f"data/prompts/{flavor}.parquet", flavor)
        for name in cfg["models"]:
            entry = cfg["model_registry"][name]
            fp = models.fingerprint(entry, None, name=name)
            store = cache.Store(work / "data/cache/store", models.model_key(fp), readonly=True)
            for shard, subjects in shards.items():
                rows = cache.select_rows(prompts, subjects, None)
                held = pl.concat([store.load(flavor, s).with_columns(subject=pl.lit(s))
                                  for s in subjects])
                n = rows.height
                view = (rows.select(
                    pl.lit(name).alias("model"), "flavor", "subject", "index", "gold",
                    "prompt_sha256", pl.col("shots").list.len().cast(pl.Int64).alias("n_shots"),
                    (pl.col("prompt").str.len_chars() // 4).cast(pl.Int64).alias("context_tokens"),
                    pl.lit(False).alias("truncated"), pl.lit(False).alias("chat"),
                    pl.col("choices").list.eval(pl.element().str.len_chars()).alias("choice_chars"),
                    "choices")
                    .with_columns(pl.Series("letter_cont_ids", [[[330], [365], [356], [422]]] * n),
                                  pl.Series("text_cont_ids", [[[1, 2, 3]] * 4] * n))
                    .join(held.drop("prompt_key", "input_key"), on=["subject", "index"],
                          how="left")
                    .select(list(cache.CACHE_SCHEMA)).cast(cache.CACHE_SCHEMA))
                atomic_write_parquet(view, work / "data/cache" / models.slugify(name) / flavor
                                     / "all" / f"{shard}.parquet",
                                     {"identity": {**fp, "model_key": store.key,
                                                   "flavor": flavor},
                                      "subjects": subjects, "questions_per_subject": None,
                                      "rows": n})
                (work / "data/cache" / models.slugify(name) / flavor / "all"
                 / f"{shard}.metrics.json").write_text(json.dumps(
                    {"model": name, "slug": models.slugify(name), "flavor": flavor,
                     "shard": shard, "selection": "all", "subjects": subjects, "questions": n,
                     "computed": 0, "reused": n}))
                written += 1
    return written


def _describe(repo: Path) -> str:
    """The timed checkout's commit (and whether its tree has local changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return (commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
            if commit else str(repo))


def _shards(cfg: dict) -> dict[str, list[str]]:
    from mmlu_flavors.plan import shards

    return shards(cfg)


def dry_run(work: Path, repo: Path = ROOT) -> dict:
    """One `snakemake -n` in `work` with `repo`'s Snakefile: wall seconds, peak RSS (MiB) and
    the cache plan's size."""
    args = [SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(repo / "Snakefile"),
            "--directory", str(work), "--configfile", str(work / "config.yaml")]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, cwd=work, env=_env(work), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise SystemExit(f"snakemake -n failed in {work}:\n{text[-3000:]}")
    planned = [ln for ln in text.splitlines() if " to compute" in ln]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
            "plan_lines": len(planned),
            "planned_to_compute": sum(int(ln.split(" cached, ")[1].split()[0])
                                      for ln in planned),
            "planned_cached": sum(int(ln.split(" questions, ")[1].split()[0])
                                  for ln in planned)}


def scenario(work: Path, runs: int, repo: Path = ROOT, log=print) -> dict:
    got = []
    for i in range(runs):
        load = os.getloadavg()[0]
        r = dry_run(work, repo)
        r["load_1min_before"] = round(load, 2)
        log(f"    run {i + 1}: {r['wall_s']:.2f} s (CPU {r['user_s'] + r['sys_s']:.1f} s), "
            f"{r['peak_rss_mb']:.0f} MiB, "
            f"load {load:.2f}, plan: {r['plan_lines']} jobs, {r['planned_cached']} cached")
        got.append(r)
    return {"runs": got,
            "median_wall_s": round(statistics.median(r["wall_s"] for r in got), 2),
            "median_cpu_s": round(statistics.median(r["user_s"] + r["sys_s"] for r in got), 2),
            "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in got), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a tiny store (2 models, 2 flavors, 2 subjects), 1 run: seconds")
    p.add_argument("--workdir", help="build (or reuse, when built with the same settings) "
                   "the work directory here; default: a temporary one")
    p.add_argument("--models", type=int, default=8, help="how many of blog.yaml's models")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenarios", nargs="+", default=["missing", "present"],
                   choices=["missing", "present"])
    p.add_argument("--repo", default=str(ROOT), help="time the Snakefile of this checkout "
                   "(e.g. an older commit's, for a before/after figure); default: this one")
    p.add_argument("--out", help="write the figures as JSON (e.g. bench/results/dryrun.json)")
    a = p.parse_args(argv)

    if a.quick:
        cfg = bench_config(2, FLAVORS[:2], ["abstract_algebra", "anatomy"], 57)
        runs = 1
    else:
        cfg = bench_config(a.models, FLAVORS, "all", 8)
        runs = a.runs
    tmp = None
    if a.workdir:
        work = Path(a.workdir).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="bench-dryrun-")
        work = Path(tmp)
    os.environ["HF_HUB_CACHE"] = str(work / "hub")  # fingerprints here read the bench's refs
    try:
        stamp = work / STAMP
        built = json.loads(stamp.read_text()) if stamp.exists() else None
        if built is None or built["config"] != cfg:
            if work.exists() and any(work.iterdir()):
                if not stamp.exists():
                    raise SystemExit(f"{work}: not empty and not a bench work directory")
                shutil.rmtree(work)
            print(f"building {work} ({len(cfg['models'])} models x {len(cfg['flavors'])} "
                  "flavors)", flush=True)
            built = build(work, cfg)
        print(f"store: {built['store_rows']} rows in {built['segments']} segments, "
              f"{built['store_bytes'] / 2**20:.0f} MiB (built in {built['build_seconds']} s)",
              flush=True)
        results: dict = {}
        report = {"command": "bench/bench_dryrun.py" + (" --quick" if a.quick else ""),
                  "repo": _describe(Path(a.repo).resolve()),
                  "machine": bench_machine.describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "store": {k: v for k, v in built.items() if k != "config"},
                  "models": len(cfg["models"]), "flavors": cfg["flavors"],
                  "subjects": len(SUBJECTS) if cfg["subjects"] == "all" else len(cfg["subjects"]),
                  "shards_per_model_flavor": len(_shards(cfg)), "scenarios": results}
        for name in a.scenarios:
            for d in (work / "data/cache").iterdir():  # views (and metrics) of either scenario
                if d.name != "store":
                    shutil.rmtree(d)
            shutil.rmtree(work / ".snakemake", ignore_errors=True)
            if name == "present":
                print(f"  wrote {write_views(work, cfg)} views", flush=True)
            print(f"scenario {name}: uptime {os.getloadavg()}", flush=True)
            results[name] = scenario(work, runs, Path(a.repo).resolve())
            print(f"  median {results[name]['median_wall_s']} s, "
                  f"{results[name]['median_peak_rss_mb']} MiB", flush=True)
            if a.out:  # after each scenario: a long run interrupted keeps what it measured
                report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
                print(f"wrote {a.out}", flush=True)
        if a.quick:
            m = results.get("missing")
            if m and m["runs"][0]["planned_to_compute"] != 0:
                raise SystemExit("quick: the plan should find every question in the store")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
