# Config resolution shared by all rules: selected models, subjects, shards, resources.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from mmlu_flavors.data import SUBJECTS, MMLUDataError, resolve_source
from mmlu_flavors.models import slugify

ENV = "../../envs/mmlu-flavors.yaml"
_PKG_DIR = str(Path(workflow.basedir) / "workflow")
_IN_CONDA = "conda" in str(workflow.deployment_settings.deployment_method).lower()
# The package runs under the Python that runs Snakemake (the project venv), or under the
# conda environment's python when Snakemake deploys envs/mmlu-flavors.yaml.
PY = (f"PYTHONPATH={shlex.quote(_PKG_DIR)} "
      f"{'python' if _IN_CONDA else shlex.quote(sys.executable)} -m mmlu_flavors.cli")


def _fail(msg):
    raise WorkflowError(f"config error: {msg}")


FLAVORS = list(config["flavors"])
REGISTRY = config["model_registry"]
for _name in config["models"]:
    if _name not in REGISTRY:
        _fail(f"models: {_name!r} is not an entry of model_registry "
              f"(known: {', '.join(REGISTRY)})")
MODELS = {slugify(n): n for n in config["models"]}  # slug -> name
if len(MODELS) != len(config["models"]):
    _fail(f"models: two names map to the same path slug: {config['models']}")

if config["subjects"] == "all":
    CHOSEN_SUBJECTS = list(SUBJECTS)
else:
    CHOSEN_SUBJECTS = list(config["subjects"])
    _unknown = sorted(set(CHOSEN_SUBJECTS) - set(SUBJECTS))
    if _unknown:
        _fail(f"subjects: unknown MMLU subject(s) {_unknown}")
N_PER_SUBJECT = config.get("questions_per_subject")
SELECTION = "all" if N_PER_SUBJECT is None else f"first{N_PER_SUBJECT}"

# shards: the chosen subjects in canonical order, cut into chunks
_ordered = [s for s in SUBJECTS if s in CHOSEN_SUBJECTS]
_per = int(config.get("subjects_per_shard", 57))
SHARDS = {f"part{i // _per:02d}": _ordered[i:i + _per] for i in range(0, len(_ordered), _per)}


# ---- inputs outside data/: checked before any job runs --------------------------------


def repo_path(value):
    """A config path as given when it exists (relative to the working directory), else the
    same path inside the repository (where the shipped resources/ are)."""
    p = Path(value)
    if p.is_absolute() or p.exists():
        return str(p)
    in_repo = Path(workflow.basedir) / p
    return str(in_repo) if in_repo.exists() else str(p)


BLOG_CSV = repo_path(config["blog_csv"]) if config.get("blog_csv") else ""
if BLOG_CSV and not Path(BLOG_CSV).is_file():
    _fail(f"blog_csv: no such file {config['blog_csv']} (looked in the working directory "
          f"and in {workflow.basedir})")


def entry(slug):
    return REGISTRY[MODELS[slug]]


def entry_json(slug):
    return json.dumps(entry(slug), sort_keys=True)


def model_dir(slug):
    """Converted directory for GGUF entries; hub and local entries load directly."""
    return f"data/models/{slug}" if entry(slug)["source"] == "gguf" else None


def cache_shards():
    return [f"data/cache/{m}/{f}/{SELECTION}/{s}.parquet"
            for m in MODELS for f in FLAVORS for s in SHARDS]


# ---- damaged or foreign outputs: removed before planning, so their own rules recompute them
# (mmlu_flavors.checks; cheap checks: Parquet footers, schemas, metadata, file sizes). Only the
# main Snakemake process heals, and a dry run only reports.
def _heal():
    from mmlu_flavors import checks
    from mmlu_flavors.models import check_converted

    targets = [("data/questions.parquet", checks.check_questions)]
    targets += [(f"data/prompts/{f}.parquet", lambda p, f=f: checks.check_prompts(p, f))
                for f in FLAVORS]
    targets += [(model_dir(m), lambda p, m=m: check_converted(p, entry(m)))
                for m in MODELS if model_dir(m)]
    targets += [(p, checks.check_readable) for p in cache_shards()]
    targets += [("reports/predictions.parquet", checks.check_predictions)]
    for line in checks.heal(targets, dry_run=_dry_run()):
        print(line, file=sys.stderr)


def _dry_run():
    """-n / --dry-run (the executor is not known while the Snakefile is parsed)."""
    return workflow.dryrun or any(
        a in ("--dry-run", "--dryrun", "--just-print") or re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", a)
        for a in sys.argv[1:])


if workflow.is_main_process:
    _heal()

# MMLU: mmlu_dir -> resources/mmlu -> Hub; a run that can reach none stops here, before any
# model work, naming each place tried (once questions.parquet exists its rule owns this)
if not Path("data/questions.parquet").exists():
    try:
        resolve_source(config.get("mmlu_source", "auto"), config.get("mmlu_dir"),
                       config.get("hub_dataset", "cais/mmlu"), config.get("hub_revision"))
    except MMLUDataError as e:
        raise WorkflowError(f"data error: {e}") from None


# ---- resources -------------------------------------------------------------------------
# Data-stage jobs are small and may need the network (Hub dataset): they run on the
# submitting host, like the reductions and report (scores.smk).
localrules: questions, prompts


def model_resources(slug, flavor=None, shard=None):
    """Resources of one logits job (model x flavor x shard), derived from the model entry by
    mmlu_flavors.resources (parameters x bytes per parameter of its dtype, headroom, and a
    runtime from the shard's token count); the entry may override each (docs/cluster.md).
    Partition and account fall back to the profile's environment variables: a rule-level
    value replaces default-resources, so the fallback must be applied here."""
    from mmlu_flavors import resources as _res

    try:
        res = _res.model_resources(entry(slug), flavor,
                                   SHARDS[shard] if shard is not None else None, N_PER_SUBJECT)
    except ValueError as e:
        _fail(f"model_registry: {MODELS[slug]}: {e}")
    env = os.environ
    if "slurm_partition" not in res:
        res["slurm_partition"] = ((env.get("MMLU_SLURM_GPU_PARTITION") if res.get("gpu") else "")
                                  or env.get("MMLU_SLURM_PARTITION", ""))
    if "slurm_account" not in res:
        res["slurm_account"] = env.get("MMLU_SLURM_ACCOUNT", "")
    return res
