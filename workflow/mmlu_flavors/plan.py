"""What a run costs: planned GPU-hours before it, used GPU-hours after it (docs/cluster.md).

* `plan_table(config, metrics)`: per model x flavor, the logits jobs of the configured shards,
  their tokens and forwards (TOKEN_COUNTS, FORWARDS: resources/token_counts.json) and the best
  available throughput: measured by this model's
  finished jobs (their metrics files, `resources.measured`) or else assumed
  (`resources.compute_seconds`); says which. Offline: no model, network or cluster.
* `used_gpu_hours(metrics_files)`: per model and device, what the finished jobs used.
* `mmlu-flavors plan --configfile blog.yaml` prints the first (and the second when metrics
  exist); `mmlu-flavors plan --used FILES --out reports/cost.csv` writes the second (rule `cost`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import yaml

from . import resources as R
from .data import SUBJECTS
from .io import atomic_write_text
from .models import slugify

log = logging.getLogger(__name__)


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's `--configfile` merge: nested mappings are merged key by key, every other
    value (lists included) replaces the earlier one (`flavors.merge_mappings`, which custom
    flavors use the same way)."""
    from .flavors import merge_mappings

    return merge_mappings(base, update)


def load_config(configfiles: Iterable[str | Path], directory: str | Path = ".") -> dict[str, Any]:
    """`directory`/config.yaml (the Snakefile's `configfile:`), then each file in order."""
    config: dict[str, Any] = {}
    base = Path(directory) / "config.yaml"
    for f in ([base] if base.exists() else []) + [Path(f) for f in configfiles]:
        try:
            data = yaml.safe_load(Path(f).read_text()) or {}
        except OSError as e:
            raise ValueError(f"config file {f}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {f}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {f}: expected a mapping at the top level")
        config = merge_config(config, data)
    for key in ("models", "model_registry", "flavors", "subjects"):
        if key not in config:
            raise ValueError(f"config: no {key!r} (give --configfile, or run in the repository)")
    missing = [m for m in config["models"] if m not in config["model_registry"]]
    if missing:
        raise ValueError(f"config: models {missing} are not entries of model_registry")
    return config


def shards(config: dict[str, Any]) -> dict[str, list[str]]:
    """shard -> subjects, as workflow/rules/common.smk cuts them: shard k holds the chosen
    subjects among the 57 at canonical positions k*per .. (k+1)*per - 1 (stable names)."""
    chosen = SUBJECTS if config["subjects"] == "all" else config["subjects"]
    unknown = sorted(set(chosen) - set(SUBJECTS))
    if unknown:
        raise ValueError(f"config: subjects: unknown MMLU subject(s) {unknown}")
    per = int(config.get("subjects_per_shard", 57))
    out: dict[str, list[str]] = {}
    for i, s in enumerate(SUBJECTS):
        if s in chosen:
            out.setdefault(f"part{i // per:02d}", []).append(s)
    return out


def run_flavors(config: dict[str, Any]) -> list[str]:
    """The flavors the workflow runs logits jobs for, as workflow/rules/common.smk resolves
    them: `flavors`, then the attribution variants (attr_*) their walks need."""
    from . import attribution as A
    from . import flavors as F

    F.register_all(config.get("custom_flavors") or {})
    flavors = list(config["flavors"])
    variants = A.configured(config, flavors)[3]
    return flavors + list(variants)


def metrics_files(directory: str | Path, slug: str | None = None) -> list[Path]:
    return sorted((Path(directory) / "data" / "cache").glob(
        f"{slug or '*'}/*/*/*.metrics.json"))


def plan_table(config: dict[str, Any], directory: str | Path = ".") -> pl.DataFrame:
    """Planned work per model x flavor (see the module docstring). `hours` is the expected
    wall time of the jobs (load + forward + overhead, no margin), `gpu_hours` x their GPUs."""
    n = config.get("questions_per_subject")
    cut = shards(config)
    flavors = run_flavors(config)
    rows = []
    for name in config["models"]:
        entry = config["model_registry"][name]
        try:
            gpus = R.gpu_count(entry)
        except ValueError as e:
            raise ValueError(f"model_registry: {name}: {e}") from None
        metrics = (R.read_metrics(metrics_files(directory, slugify(name)))
                   if config.get("learned_resources", True) else [])
        for flavor in flavors:
            meas = R.measured(metrics, entry, flavor) if metrics else None
            tokens = seconds = 0.0
            questions = 0
            for subjects in cut.values():
                q = R.shard_questions(subjects, n)
                questions += q
                if meas:
                    t, s = R.learned_seconds(meas, flavor, subjects, n)
                else:
                    t = R.shard_tokens(flavor, subjects, n)
                    s = R.load_seconds(entry) + R.compute_seconds(
                        entry, t, q, gpus, R.shard_forwards(flavor, subjects, n))
                tokens += t
                seconds += s
            if meas:
                tps = meas.tokens_per_s
                basis = (f"measured: {meas.jobs} job(s) on {meas.device_name}"
                         + ("" if meas.flavor_matched else " (other flavors)"))
            else:
                compute = sum(R.compute_seconds(entry, R.shard_tokens(flavor, s, n),
                                                R.shard_questions(s, n), gpus,
                                                R.shard_forwards(flavor, s, n))
                              for s in cut.values())
                tps = tokens / compute if compute else None
                basis = ("assumed: " + (f"{R.ACHIEVED_FLOPS / 1e12:.0f} TFLOP/s per job "
                                        "+ weight streaming" if gpus else
                                        f"{R.CPU_FLOPS / 1e9:.0f} GFLOP/s (CPU)"))
            rows.append({"model": name, "flavor": flavor, "jobs": len(cut), "gpus": gpus,
                         "questions": questions, "tokens_m": tokens / 1e6,
                         "tokens_per_s": tps, "hours": seconds / 3600,
                         "gpu_hours": seconds / 3600 * gpus, "basis": basis})
    return pl.DataFrame(rows, schema={
        "model": pl.String, "flavor": pl.String, "jobs": pl.Int64, "gpus": pl.Int64,
        "questions": pl.Int64, "tokens_m": pl.Float64, "tokens_per_s": pl.Float64,
        "hours": pl.Float64, "gpu_hours": pl.Float64, "basis": pl.String})


USED_SCHEMA = {"model": pl.String, "device_name": pl.String, "jobs": pl.Int64,
               "questions": pl.Int64, "computed": pl.Int64, "reused": pl.Int64,
               "tokens": pl.Int64, "tokens_per_s": pl.Float64, "job_hours": pl.Float64,
               "gpu_hours": pl.Float64}


def used_gpu_hours(metrics_files: Iterable[str | Path]) -> pl.DataFrame:
    """GPU-hours the finished logits jobs used, per model and device, from their metrics
    files: wall seconds of each job x its GPUs (`n_gpus`, 0 on CPU), plus what they computed.
    A job killed before it finished wrote no metrics: its time is not counted here."""
    rows = [{"model": m.get("model") or m.get("slug"), "device_name": m.get("device_name"),
             "questions": m.get("questions") or 0, "computed": m.get("computed") or 0,
             "reused": m.get("reused") or 0, "tokens": m.get("tokens") or 0,
             "forward_seconds": float(m.get("forward_seconds") or 0),
             "wall_seconds": float(m.get("wall_seconds") or 0),
             "n_gpus": int(m.get("n_gpus") or 0)}
            for m in R.read_metrics(metrics_files)]
    if not rows:
        return pl.DataFrame(schema=USED_SCHEMA)
    df = pl.DataFrame(rows)
    out = (df.group_by("model", "device_name", maintain_order=True)
           .agg(pl.len().alias("jobs"), pl.col("questions", "computed", "reused", "tokens").sum(),
                (pl.col("tokens").sum() / pl.col("forward_seconds").sum()).alias("tokens_per_s"),
                (pl.col("wall_seconds").sum() / 3600).alias("job_hours"),
                ((pl.col("wall_seconds") * pl.col("n_gpus")).sum() / 3600).alias("gpu_hours"))
           .with_columns(pl.when(pl.col("tokens_per_s").is_finite())
                         .then(pl.col("tokens_per_s")))
           .sort("model", "device_name"))
    return out.select([pl.col(c).cast(t) for c, t in USED_SCHEMA.items()])


def write_cost(metrics_files: Iterable[str | Path], out: str | Path) -> pl.DataFrame:
    """reports/cost.csv: `used_gpu_hours` of these metrics files (missing ones are skipped)."""
    files = [Path(p) for p in metrics_files]
    present = [p for p in files if p.exists()]
    if len(present) < len(files):
        log.warning("%d of %d metrics files are missing: their jobs are not counted",
                    len(files) - len(present), len(files))
    df = used_gpu_hours(present)
    atomic_write_text(out, df.write_csv(float_precision=4))
    log.info("%s: %d jobs, %.2f GPU-hours, %.2f job-hours", out, df["jobs"].sum(),
             df["gpu_hours"].sum(), df["job_hours"].sum())
    return df


def format_plan(table: pl.DataFrame) -> str:
    """The plan as text: per model x flavor, then per model, then the total."""
    per_model = (table.group_by("model", maintain_order=True)
                 .agg(pl.col("gpus").first(),
                      pl.col("jobs", "questions", "tokens_m", "hours", "gpu_hours").sum()))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=80,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=2, tbl_formatting="MARKDOWN"):
        parts = [
            "Planned logits jobs per model and flavor (attr_*: the attribution's prompt "
            "variants; tokens from TOKEN_COUNTS, the mean flavor's where a flavor has none; "
            "throughput measured by this model's finished jobs where their metrics exist, "
            "else assumed):",
            str(table.with_columns(pl.col("tokens_per_s").round(0).cast(pl.Int64))),
            "Per model:", str(per_model),
        ]
    parts.append(f"Total: {table['jobs'].sum()} jobs, {table['hours'].sum():.1f} job-hours, "
                 f"{table['gpu_hours'].sum():.1f} GPU-hours (expected; requested runtimes "
                 "add the margins of docs/cluster.md)")
    return "\n\n".join(parts)


def format_used(table: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=60,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=3, tbl_formatting="MARKDOWN"):
        return ("Used by finished logits jobs (their metrics files):\n\n" + str(table)
                + f"\n\nTotal: {table['gpu_hours'].sum():.2f} GPU-hours, "
                f"{table['job_hours'].sum():.2f} job-hours")
