# Config resolution shared by all rules: selected models, subjects, shards, resources.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from mmlu_flavors import flavors as _flavors
from mmlu_flavors.data import SUBJECTS, MMLUDataError, resolve_source
from mmlu_flavors.models import identity_entry, slugify

ENV = "../../envs/mmlu-flavors.yaml"
_PKG_DIR = str(Path(workflow.basedir) / "workflow")
_IN_CONDA = "conda" in str(workflow.deployment_settings.deployment_method).lower()
# The package runs under the Python that runs Snakemake (the project venv), or under the
# conda environment's python when Snakemake deploys envs/mmlu-flavors.yaml.
PY = (f"PYTHONPATH={shlex.quote(_PKG_DIR)} "
      f"{'python' if _IN_CONDA else shlex.quote(sys.executable)} -m mmlu_flavors.cli")


def _fail(msg):
    raise WorkflowError(f"config error: {msg}")


# custom flavors (config custom_flavors: a base flavor plus the keys that differ)
try:
    _CUSTOM = _flavors.register_all(config.get("custom_flavors") or {})
except ValueError as _e:
    _fail(f"custom_flavors: {_e}")
FLAVORS = list(config["flavors"])
for _f in FLAVORS:
    if _f not in _flavors.FLAVORS:
        _fail(f"flavors: {_f!r} is neither a built-in flavor nor in custom_flavors "
              f"(known: {', '.join(_flavors.FLAVORS)})")

# attribution (issue 13): the prompt variants its walks need are flavors of their own
# (rendered, run and reduced like any other, into reports/attribution_variants.parquet)
from mmlu_flavors import attribution as _attr

try:
    ATTR_PAIRS, _skipped, ATTR_ORDER, VARIANTS = _attr.configured(config, FLAVORS)
    for _name, _defn in VARIANTS.items():
        _flavors.register(_name, _defn)
except ValueError as _e:
    _fail(f"attribution: {_e}")
if workflow.is_main_process:
    for _line in _skipped:
        print(_line, file=sys.stderr)
# choice order (issue 20): choice_permutations: cyclic runs each selected flavor under the
# three other cyclic rotations of its choices (rotation 0 is the flavor's own run)
from mmlu_flavors import choice_order as _choice_order

try:
    ROTATED = _choice_order.study_flavors(FLAVORS, config.get("choice_permutations", "none"))
    for _name, _defn in ROTATED.items():
        _flavors.register(_name, _defn)
except ValueError as _e:
    _fail(f"choice_permutations: {_e}")
_CUSTOM = list(_CUSTOM) + list(VARIANTS) + list(ROTATED)
ALL_FLAVORS = FLAVORS + list(VARIANTS) + list(ROTATED)


def flavor_defs(names=None):
    """Resolved custom flavor definitions as JSON for the CLI's --flavor-defs (built-ins are
    read from the package). Only the named flavors, so a change to one custom flavor reruns
    only its own jobs."""
    chosen = [f for f in (names or FLAVORS) if f in _CUSTOM]
    # (definitions_json treats an empty list as "all registered": none chosen is "{}")
    return _flavors.definitions_json(chosen) if chosen else "{}"


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

# shards: chunks of the 57 subjects in canonical order, each holding only the chosen ones, so
# a subject's shard does not depend on which other subjects are chosen (adding one subject
# changes only its own shard)
_per = int(config.get("subjects_per_shard", 57))
SHARDS = {}
for _i, _s in enumerate(SUBJECTS):
    if _s in CHOSEN_SUBJECTS:
        SHARDS.setdefault(f"part{_i // _per:02d}", []).append(_s)


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
    """The entry without its runtime hints (batch size, resources): only what can change a
    cached number, so editing a hint never reruns a job (hints travel as resources)."""
    return json.dumps(identity_entry(entry(slug)), sort_keys=True)


def model_dir(slug):
    """Converted directory for GGUF entries; hub and local entries load directly."""
    return f"data/models/{slug}" if entry(slug)["source"] == "gguf" else None


def cache_shards(flavors=None):
    return [f"data/cache/{m}/{f}/{SELECTION}/{s}.parquet"
            for m in MODELS for f in (FLAVORS if flavors is None else flavors) for s in SHARDS]


def cache_metrics():
    return [p.removesuffix(".parquet") + ".metrics.json" for p in cache_shards()]


# ---- damaged or foreign outputs: removed before planning, so their own rules recompute them
# (mmlu_flavors.checks; cheap checks: Parquet footers, schemas, metadata, file sizes: no data
# page is read, so a dry run over a big store stays fast; a damaged page is found by the job
# that reads it). Only the main Snakemake process heals, and a dry run only reports.
def _heal():
    from mmlu_flavors import checks
    from mmlu_flavors.models import check_converted

    targets = [("data/questions.parquet", checks.check_questions)]
    targets += [(f"data/prompts/{f}.parquet", lambda p, f=f: checks.check_prompts(p, f))
                for f in ALL_FLAVORS]
    targets += [(model_dir(m), lambda p, m=m: check_converted(p, entry(m)))
                for m in MODELS if model_dir(m)]
    targets += [(p, checks.check_readable) for p in cache_shards(ALL_FLAVORS)]
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


def _cache_plan():
    """For each logits job whose view is missing: (selected, cached) questions, estimated from
    prompt keys without loading any model (mmlu_flavors.cache.plan_counts); None where the
    prompt table or the model's identity is not known yet. Printed, and a job with nothing
    to compute asks for no GPU. Reads only what it needs: each prompt table once, its keys
    computed once per max-length setting, the store's key columns (never its outputs), each
    model's files hashed at most once (cache.plan_fingerprint)."""
    from mmlu_flavors import cache as _cache
    from mmlu_flavors import models as _models

    plan, questions = {}, Path("data/questions.parquet")
    keyed = {}  # (flavor, max_length) -> prompt keys (None: damaged prompt table)

    def _keyed(flavor, max_length):
        if (flavor, max_length) not in keyed:
            try:
                keyed[(flavor, max_length)] = _cache.plan_keys(
                    f"data/prompts/{flavor}.parquet", flavor, max_length, PLAN_MEMO)
            except ValueError:  # damaged: its rule remakes it, the plan is unknown
                keyed[(flavor, max_length)] = None
        return keyed[(flavor, max_length)]

    for slug in MODELS:
        missing = {(f, s): subjects for f in ALL_FLAVORS for s, subjects in SHARDS.items()
                   if not Path(f"data/cache/{slug}/{f}/{SELECTION}/{s}.parquet").exists()}
        if not missing:
            continue  # nothing to plan: the model is not even fingerprinted
        try:
            fp = _cache.plan_fingerprint(entry(slug), model_dir(slug), MODELS[slug], CACHE_STORE)
        except Exception:
            fp = None
        store = (_cache.Store(Path(CACHE_STORE), _models.model_key(fp), readonly=True)
                 if fp else None)
        max_length = entry(slug).get("max_length")
        for (flavor, shard), subjects in missing.items():
            prompts_path = Path(f"data/prompts/{flavor}.parquet")
            fresh = (prompts_path.exists() and questions.exists()
                     and prompts_path.stat().st_mtime >= questions.stat().st_mtime)
            prompts = _keyed(flavor, max_length) if store is not None and fresh else None
            plan[(slug, flavor, shard)] = (None if prompts is None else _cache.plan_counts(
                prompts, store, flavor, subjects, N_PER_SUBJECT, max_length))
    if plan:
        lines = [f"  {MODELS[m]} / {f} / {SELECTION}/{s}: "
                 + ("not known before the prompts and the model exist" if v is None
                    else f"{v[0]} questions, {v[1]} cached, {v[0] - v[1]} to compute")
                 for (m, f, s), v in plan.items()]
        print("cache plan (from prompt keys, no model loaded; each job confirms by its exact "
              "model input):\n" + "\n".join(lines), file=sys.stderr)
    return plan


CACHE_STORE = config.get("cache_store", "data/cache/store")
PLAN_MEMO = ".snakemake/mmlu_flavors/prompt_keys"  # the plan's prompt keys, by prompt table
CACHE_PLAN = _cache_plan() if workflow.is_main_process else {}


def nothing_to_compute(slug, flavor, shard):
    got = CACHE_PLAN.get((slug, flavor, shard))
    return got is not None and got[0] == got[1]


# ---- resources -------------------------------------------------------------------------
# Data-stage jobs are small and may need the network (Hub dataset): they run on the
# submitting host, like the reductions and report (scores.smk).
localrules: questions, prompts


def model_resources(slug, flavor=None, shard=None, attempt=1):
    """Resources of one logits job (model x flavor x shard), derived from the model entry by
    mmlu_flavors.resources (parameters x bytes per parameter of its dtype, headroom, and a
    runtime from the shard's token count), or from the metrics files of this model's finished
    jobs when there are usable ones (learned resources); `attempt` > 1 (a retry) grows runtime
    and mem_mb up to max_runtime_min / max_mem_mb. The entry may override each
    (docs/cluster.md). Partition and account fall back to the profile's environment
    variables: a rule-level value replaces default-resources, so the fallback must be applied
    here."""
    from mmlu_flavors import resources as _res

    if flavor is not None and nothing_to_compute(slug, flavor, shard):
        # every question is in the store: the job only tokenizes and writes its view
        return {"mem_mb": 4000, "runtime": _res.grown_runtime(15, attempt), "gpu": None,
                "constraint": None,
                "slurm_partition": os.environ.get("MMLU_SLURM_PARTITION", ""),
                "slurm_account": os.environ.get("MMLU_SLURM_ACCOUNT", "")}
    metrics = (_res.read_metrics(sorted(Path("data/cache", slug).glob("*/*/*.metrics.json")))
               if config.get("learned_resources", True) else None)
    try:
        res = _res.model_resources(entry(slug), flavor,
                                   SHARDS[shard] if shard is not None else None, N_PER_SUBJECT,
                                   attempt=attempt, metrics=metrics,
                                   max_runtime_min=config.get("max_runtime_min"),
                                   max_mem_mb=config.get("max_mem_mb"))
    except ValueError as e:
        _fail(f"model_registry: {MODELS[slug]}: {e}")
    env = os.environ
    if "slurm_partition" not in res:
        res["slurm_partition"] = ((env.get("MMLU_SLURM_GPU_PARTITION") if res.get("gpu") else "")
                                  or env.get("MMLU_SLURM_PARTITION", ""))
    if "slurm_account" not in res:
        res["slurm_account"] = env.get("MMLU_SLURM_ACCOUNT", "")
    return res
