# Config resolution shared by all rules: selected models, subjects, shards, resources.

import json
import math
import shlex
import sys
from pathlib import Path

from mmlu_flavors.data import SUBJECTS
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


def model_resources(slug):
    """Resources for a model job from its size: parameters x bytes per parameter + headroom."""
    e = entry(slug)
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}[e.get("dtype", "auto")]
    weights_gb = float(e.get("params_b", 1.0)) * bytes_per
    need_gb = weights_gb * 1.2 + 2  # activations, KV cache of a few-shot prefix, CUDA context
    gpus = e.get("gpus")
    if gpus is None:
        gpus = 0 if e.get("device", "auto") == "cpu" else max(1, math.ceil(need_gb / e.get("gpu_mem_gb", 80)))
    res = {
        "mem_mb": int(e.get("mem_mb", max(4000, (weights_gb * 1.5 + 4) * 1024))),
        "runtime": int(e.get("runtime_min", max(30, 20 + 2 * weights_gb))),
        "gpu": int(gpus),
    }
    for key in ("slurm_partition", "slurm_account", "constraint"):
        if key in e:
            res[key] = e[key]
    return res
