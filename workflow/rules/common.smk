# Config resolution shared by all rules: selected models, subjects, shards, resources.

import json
import os
import shlex
import sys
from pathlib import Path

from mmlu_flavors.data import SUBJECTS
from mmlu_flavors import flavors as _flavors
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

ATTR_PAIRS = [list(p) for p in config.get("attribution_pairs", _attr.DEFAULT_PAIRS)]
if "attribution_pairs" not in config:  # the default pairs only where the run has their flavors
    _impls = _flavors.implementations()
    ATTR_PAIRS = [p for p in ATTR_PAIRS
                  if all(x in _impls and _impls[x].flavor in FLAVORS for x in p)]
ATTR_ORDER = list(config.get("attribution_order", _attr.DEFAULT_ORDER))
try:
    VARIANTS = _attr.variant_definitions(ATTR_PAIRS, ATTR_ORDER,
                                         config.get("attribution_variants", "walk"), FLAVORS)
    for _name, _defn in VARIANTS.items():
        _flavors.register(_name, _defn)
except ValueError as _e:
    _fail(f"attribution: {_e}")
_CUSTOM = list(_CUSTOM) + list(VARIANTS)
ALL_FLAVORS = FLAVORS + list(VARIANTS)


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

# shards: the chosen subjects in canonical order, cut into chunks
_ordered = [s for s in SUBJECTS if s in CHOSEN_SUBJECTS]
_per = int(config.get("subjects_per_shard", 57))
SHARDS = {f"part{i // _per:02d}": _ordered[i:i + _per] for i in range(0, len(_ordered), _per)}


def entry(slug):
    return REGISTRY[MODELS[slug]]


def entry_json(slug):
    return json.dumps(entry(slug), sort_keys=True)


def model_dir(slug):
    """Converted directory for GGUF entries; hub and local entries load directly."""
    return f"data/models/{slug}" if entry(slug)["source"] == "gguf" else None


def cache_shards(flavors=None):
    return [f"data/cache/{m}/{f}/{SELECTION}/{s}.parquet"
            for m in MODELS for f in (FLAVORS if flavors is None else flavors) for s in SHARDS]


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
