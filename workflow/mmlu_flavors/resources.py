"""Cluster resources of a logits job (model x flavor x shard of subjects), from the model entry.

Pure functions (no Snakemake, no torch): `workflow/rules/common.smk` calls `model_resources`
for every logits job, `bench/token_counts.py` and `tests/test_resources.py` use them directly.

How each resource is derived (GiB = 2**30 bytes; an "80 GB" A100/H100 has 80 GiB):

* weights = `params_b` x 1e9 x bytes per parameter of `dtype` (float32 4; bfloat16, float16
  and `auto` 2 -- `auto` keeps the checkpoint's dtype, fp16/bf16 for every Hub LLM; an entry
  without `dtype` loads as float32, as models.load_model does).
* GPU memory needed = weights x 1.2 + 4 GiB (CUDA context and allocator slack per process,
  the key/value cache of one few-shot prompt of <= 2048 tokens, a batch of 8 continuations,
  fp32 log-softmax over the vocabulary at the scored positions).
* `gpu` = ceil(needed / `gpu_mem_gb`) (default 80), rounded up to 1, 2, 4 or 8 (node shapes);
  0 -- no GPU requested at all -- for `device: cpu`. An entry's `gpus` overrides. More than
  one GPU needs `device_map: auto` in the entry (the model is split layer-wise over the
  GPUs); without it the job would OOM on one GPU, so that is an error here. More than 8 GPUs
  (one node) is an error: set `gpu_mem_gb` for larger GPUs or a smaller dtype.
* `mem_mb` (host RAM) = weights x 1.25 + 4 GiB on GPU (safetensors are memory-mapped and
  copied to the GPU tensor by tensor; a .bin checkpoint or a dtype cast needs ~1 extra copy of
  the largest shard, hence 1.25), weights x 1.5 + 2 GiB on CPU (weights stay in RAM, plus
  activations). An entry's `mem_mb` overrides.
* `runtime` (minutes) = ceil(1.5 x (load + compute) / 60) + 10, rounded up to 5 minutes,
  at least 15, where compute = 2 x params x tokens / ACHIEVED_FLOPS (forward FLOPs; the
  engine runs one forward pass per prompt, so no backward/generation terms), tokens = the
  tokens the engine runs for this shard's subjects and flavor (TOKEN_COUNTS, planned by
  bench/token_counts.py on the full test set, resources/token_counts.json, scaled to
  `questions_per_subject`, times TOKENIZER_FACTOR), plus the weight streaming: every forward
  reads all weights from GPU memory, forwards x weights / HBM_BYTES_PER_S, where forwards =
  the forward calls of the same planned schedule (FORWARDS, same file and scaling; counted in
  addition to the FLOPs, conservatively), and
  load = weights / LOAD_BYTES_PER_S + 60 s. With `device_map: auto`
  the GPUs work one after another, so compute time does not shrink with more GPUs. An
  entry's `runtime_min` overrides.
* `slurm_partition`, `slurm_account`, `constraint` are passed through from the entry when
  set (they override the profile's defaults for that model's jobs only).

Retries (`attempt`, Snakemake's count of this job's tries, 1 on the first): `runtime` x
RUNTIME_GROWTH ** (attempt - 1) up to `max_runtime_min` (the partition's time limit), `mem_mb`
x MEM_GROWTH ** (attempt - 1) up to `max_mem_mb` (default MEM_CAP_FACTOR x the first request).
Snakemake does not say why a job failed, so both grow on every retry; a time limit and a host
OOM are the failures that a larger request cures.

Learned resources (`measured`, `learned_runtime_minutes`, `learned_mem_mb`): the metrics
files of finished logits jobs (`data/cache/{model}/{flavor}/{selection}/{shard}.metrics.json`,
written by `mmlu-flavors logits`) replace the assumptions for later jobs of the same model on
the same kind of hardware; docs/cluster.md states the rule.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .io import atomic_write_text

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
GIB = 2**30
GPU_HEADROOM = 1.2          # x weights
GPU_FIXED_GIB = 4.0         # CUDA context, KV cache of one prompt, a continuation batch, logits
DEFAULT_GPU_MEM_GB = 80     # per GPU (A100/H100 80GB); entry `gpu_mem_gb` overrides
GPU_SHAPES = (1, 2, 4, 8)   # GPUs per node one job may ask for
HOST_GPU_FACTOR, HOST_GPU_FIXED_GIB = 1.25, 4.0
HOST_CPU_FACTOR, HOST_CPU_FIXED_GIB = 1.5, 2.0
A100_PEAK_FLOPS = 312e12    # bf16/fp16 dense tensor-core peak
ACHIEVED_FRACTION = 0.40    # assumed: prefill of a few hundred tokens at batch 1
ACHIEVED_FLOPS = A100_PEAK_FLOPS * ACHIEVED_FRACTION
CPU_FLOPS = 20e9            # a CPU job (2 threads, fp32); only the tiny test models run there
LOAD_BYTES_PER_S = 0.5e9    # reading weights from a shared filesystem / HF cache
HBM_BYTES_PER_S = 1.5e12    # achieved GPU memory bandwidth (A100-80GB peak 2.0 TB/s)
TOKENIZER_FACTOR = 1.2      # LLaMA-1 SentencePiece (32k) vs SmolLM2 BPE (49k): assumed
RUNTIME_MARGIN, RUNTIME_FIXED_MIN, RUNTIME_MIN_MIN = 1.5, 10, 15
TOKENS_PER_QUESTION_FALLBACK = 2000  # a subject missing from TOKEN_COUNTS
RUNTIME_GROWTH = 2.0        # x runtime per retry: a job killed at its limit asks for twice
MEM_GROWTH = 1.5            # x mem_mb per retry
DEFAULT_MAX_RUNTIME_MIN = 2880  # cap of the grown runtime (2 days); config max_runtime_min
MEM_CAP_FACTOR = 2.0        # default cap of the grown mem_mb: twice the first request
LEARNED_MARGIN = 1.25       # x measured time (subjects differ; other jobs share the node)
LEARNED_MEM_FACTOR, LEARNED_MEM_FIXED_MB = 1.25, 1024  # x measured peak host memory, + MB


def dtype_of(entry: dict[str, Any]) -> str:
    return str(entry.get("dtype") or "float32")


def weights_bytes(entry: dict[str, Any]) -> float:
    return float(entry.get("params_b", 1.0)) * 1e9 * BYTES_PER_PARAM[dtype_of(entry)]


def gpu_count(entry: dict[str, Any]) -> int:
    """GPUs for this entry (0 for device: cpu); see the module docstring."""
    if entry.get("gpus") is not None:
        n = int(entry["gpus"])
    elif str(entry.get("device") or "auto") == "cpu":
        n = 0
    else:
        need_gib = weights_bytes(entry) / GIB * GPU_HEADROOM + GPU_FIXED_GIB
        per_gpu = float(entry.get("gpu_mem_gb") or DEFAULT_GPU_MEM_GB)
        raw = math.ceil(need_gib / per_gpu)
        fits = [s for s in GPU_SHAPES if s >= raw]
        if not fits:
            raise ValueError(
                f"needs {need_gib:.0f} GiB of GPU memory = {raw} GPUs of {per_gpu:g} GB: more "
                f"than one node of {GPU_SHAPES[-1]}; set gpu_mem_gb, a smaller dtype or gpus")
        n = fits[0]
    if n > 1 and entry.get("device_map") != "auto":
        raise ValueError(f"needs {n} GPUs, so the entry must set device_map: auto "
                         "(or gpus: 1 / a larger gpu_mem_gb)")
    return n


def host_mem_mb(entry: dict[str, Any], gpus: int) -> int:
    w = weights_bytes(entry) / GIB
    gib = (w * HOST_GPU_FACTOR + HOST_GPU_FIXED_GIB if gpus
           else w * HOST_CPU_FACTOR + HOST_CPU_FIXED_GIB)
    return int(math.ceil(gib * 1024 / 100) * 100)


def _scaled(per_subject: dict[str, dict[str, tuple[int, int]]], flavor: str | None,
            subjects: Iterable[str] | None, questions_per_subject: int | None,
            fallback_per_question: float) -> float:
    """Sum over these subjects of a per-subject count (questions, count), scaled to the first
    N questions; the flavor's own table, else its base flavor's, else the mean of the counted
    flavors."""
    table = per_subject.get(flavor or "")
    if not table and flavor:
        table = per_subject.get(_measured_base(flavor) or "")
    tables = [table] if table else [per_subject[f] for f in COUNTED_FLAVORS if f in per_subject]
    total = 0.0
    for t in tables:
        for s in (subjects if subjects is not None else t):
            q, value = t.get(s, (100, 100 * fallback_per_question))
            frac = 1.0 if questions_per_subject is None else min(questions_per_subject, q) / q
            total += value * frac
    return total / len(tables)


def shard_tokens(flavor: str | None, subjects: Iterable[str] | None,
                 questions_per_subject: int | None) -> float:
    """Tokens the engine runs for one flavor over these subjects (first N questions of each),
    in the models' tokenizers (TOKEN_COUNTS x TOKENIZER_FACTOR). A flavor without counts
    (custom flavors without counted base, attribution variants of other pairs or orders,
    later implementations) or no flavor: the mean of the four counted flavors."""
    return _scaled(TOKEN_COUNTS, flavor, subjects, questions_per_subject,
                   TOKENS_PER_QUESTION_FALLBACK) * TOKENIZER_FACTOR


def shard_forwards(flavor: str | None, subjects: Iterable[str] | None,
                   questions_per_subject: int | None) -> float:
    """Forward calls the engine makes for one flavor over these subjects (FORWARDS, the same
    planned schedule as TOKEN_COUNTS, scaled like shard_tokens, x TOKENIZER_FACTOR: more
    tokens fill more forwards of a fixed budget)."""
    table = {f: {s: (TOKEN_COUNTS[f][s][0], n) for s, n in t.items()}
             for f, t in FORWARDS.items()}
    return _scaled(table, flavor, subjects, questions_per_subject,
                   FORWARDS_PER_QUESTION) * TOKENIZER_FACTOR


def _measured_base(flavor: str | None) -> str | None:
    """A custom flavor without measured counts uses those of the flavor it derives from."""
    from .flavors import FLAVORS

    fl = FLAVORS.get(flavor) if flavor else None
    return fl.spec.get("derived_from") if fl is not None else None


def shard_questions(subjects: Iterable[str] | None, questions_per_subject: int | None) -> int:
    table = next(iter(TOKEN_COUNTS.values()), {})  # question counts are the same in every flavor
    total = 0
    for s in (subjects if subjects is not None else table):
        q = table.get(s, (100, 0))[0]
        total += q if questions_per_subject is None else min(q, questions_per_subject)
    return total


def load_seconds(entry: dict[str, Any]) -> float:
    return weights_bytes(entry) / LOAD_BYTES_PER_S + 60


def compute_seconds(entry: dict[str, Any], tokens: float, questions: int, gpus: int,
                    forwards: float | None = None) -> float:
    """Forward FLOPs at the assumed throughput, plus weight streaming on a GPU: `forwards`
    calls (shard_forwards; None: questions x the schedule's mean FORWARDS_PER_QUESTION), each
    reading all weights."""
    flops = 2 * float(entry.get("params_b", 1.0)) * 1e9 * tokens
    if not gpus:
        return flops / CPU_FLOPS
    if forwards is None:
        forwards = questions * FORWARDS_PER_QUESTION
    return flops / ACHIEVED_FLOPS + forwards * weights_bytes(entry) / HBM_BYTES_PER_S


def _round_runtime(seconds: float, margin: float) -> int:
    minutes = math.ceil(margin * seconds / 60) + RUNTIME_FIXED_MIN
    return max(RUNTIME_MIN_MIN, 5 * math.ceil(minutes / 5))


def runtime_minutes(entry: dict[str, Any], tokens: float, gpus: int, questions: int = 0,
                    forwards: float | None = None) -> int:
    compute = compute_seconds(entry, tokens, questions, gpus, forwards)
    return _round_runtime(load_seconds(entry) + compute, RUNTIME_MARGIN)


# ---------------------------------------------------------------- retries

def grown_runtime(minutes: int, attempt: int, max_runtime_min: int | None = None) -> int:
    """The runtime request of try `attempt`: x RUNTIME_GROWTH per retry, capped (never below
    the first request)."""
    cap = max(minutes, int(max_runtime_min or DEFAULT_MAX_RUNTIME_MIN))
    return int(min(cap, math.ceil(minutes * RUNTIME_GROWTH ** (max(attempt, 1) - 1))))


def grown_mem_mb(mem_mb: int, attempt: int, max_mem_mb: int | None = None) -> int:
    """The mem_mb request of try `attempt`: x MEM_GROWTH per retry, capped."""
    if attempt <= 1:
        return int(mem_mb)
    cap = max(mem_mb, int(max_mem_mb or mem_mb * MEM_CAP_FACTOR))
    grown = mem_mb * MEM_GROWTH ** (attempt - 1)
    return int(min(cap, math.ceil(grown / 100) * 100))


# ---------------------------------------------------------------- learned resources

@dataclass(frozen=True)
class Measured:
    """What finished jobs of one model on one kind of hardware measured."""

    device_name: str
    jobs: int
    tokens_per_s: float          # all their tokens / all their forward seconds
    token_ratio: float           # tokens run / TOKEN_COUNTS tokens of what they computed
    load_seconds: float          # the slowest load
    overhead_s_per_question: float  # wall - load - forward, per question (tokenizing, writes)
    peak_host_mem_mb: float      # the largest peak
    peak_gpu_mem_mb: float | None
    flavor_matched: bool         # measured on the flavor asked for (else: all flavors)


_METRICS_CACHE: dict[tuple[str, int, int], dict[str, Any] | None] = {}


def read_metrics(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The readable metrics files among `paths` (unchanged files are read once per process);
    an unreadable one is skipped with a warning: it must not stop a cluster run."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
        except OSError:
            continue
        key = (str(p), st.st_mtime_ns, st.st_size)
        if key not in _METRICS_CACHE:
            try:
                m = json.loads(p.read_text())
                _METRICS_CACHE[key] = m if isinstance(m, dict) else None
            except (OSError, ValueError) as e:
                print(f"warning: ignoring metrics file {p}: {e}", file=sys.stderr)
                _METRICS_CACHE[key] = None
        if _METRICS_CACHE[key] is not None:
            out.append(_METRICS_CACHE[key])
    return out


def selection_n(selection: str | None) -> int | None:
    """`all` -> None, `first12` -> 12 (the questions per subject of a cache view)."""
    s = str(selection or "all")
    return int(s[5:]) if s.startswith("first") and s[5:].isdigit() else None


def _table_tokens(m: dict[str, Any]) -> float:
    """TOKEN_COUNTS tokens (no tokenizer factor) of what a finished job computed."""
    total = shard_tokens(m.get("flavor"), m.get("subjects") or [], selection_n(m.get("selection")))
    questions = m.get("questions") or 0
    return total / TOKENIZER_FACTOR * (m["computed"] / questions if questions else 1.0)


def _usable(m: dict[str, Any], entry: dict[str, Any], gpus: int) -> bool:
    try:
        ok = (m.get("computed", 0) > 0 and float(m.get("tokens_per_s") or 0) > 0
              and float(m.get("tokens") or 0) > 0 and float(m.get("forward_seconds") or 0) > 0)
    except (TypeError, ValueError):
        return False
    if not ok or m.get("device") != ("cuda" if gpus else "cpu"):
        return False
    dtype = str(m.get("dtype") or "").removeprefix("torch.")
    return dtype_of(entry) == "auto" or dtype in ("", dtype_of(entry))


def measured(metrics: list[dict[str, Any]], entry: dict[str, Any],
             flavor: str | None = None) -> Measured | None:
    """The measurements that size this entry's jobs, or None (no usable metrics).

    Usable: a job that computed something, on the device kind the entry asks for (cuda when
    it requests GPUs, else cpu), in the entry's dtype. Hardware: the entry's `constraint`
    picks the device names that contain it (`a100` -> "NVIDIA A100-SXM4-80GB") when any do;
    otherwise the slowest device measured (the next job may land on any of them). Jobs of
    the same flavor are preferred (prompt lengths change the throughput); without any, all
    flavors of the model count."""
    gpus = gpu_count(entry)
    rows = [m for m in metrics if _usable(m, entry, gpus)]
    want = str(entry.get("constraint") or "").lower()
    if want and any(want in str(m.get("device_name", "")).lower() for m in rows):
        rows = [m for m in rows if want in str(m.get("device_name", "")).lower()]
    if not rows:
        return None
    same = [m for m in rows if m.get("flavor") == flavor] if flavor else []
    use = same or rows
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in use:
        groups.setdefault(str(m.get("device_name") or "?"), []).append(m)

    def tps(ms: list[dict[str, Any]]) -> float:
        return sum(float(m["tokens"]) for m in ms) / sum(float(m["forward_seconds"]) for m in ms)

    name, ms = min(groups.items(), key=lambda kv: tps(kv[1]))
    every = [m for m in rows if str(m.get("device_name") or "?") == name]  # memory: all flavors
    table = sum(_table_tokens(m) for m in ms)
    gpu_peaks = [float(m["peak_gpu_mem_mb"]) for m in every if m.get("peak_gpu_mem_mb")]
    return Measured(
        device_name=name, jobs=len(ms), tokens_per_s=tps(ms),
        token_ratio=(sum(float(m["tokens"]) for m in ms) / table if table > 0
                     else TOKENIZER_FACTOR),
        load_seconds=max(float(m.get("load_seconds") or 0) for m in ms),
        overhead_s_per_question=max(
            max(0.0, float(m.get("wall_seconds") or 0) - float(m.get("load_seconds") or 0)
                - float(m["forward_seconds"])) / max(int(m.get("questions") or 1), 1)
            for m in ms),
        peak_host_mem_mb=max(float(m.get("peak_host_mem_mb") or 0) for m in every),
        peak_gpu_mem_mb=max(gpu_peaks) if gpu_peaks else None,
        flavor_matched=bool(same))


def learned_seconds(meas: Measured, flavor: str | None, subjects: Iterable[str] | None,
                    questions_per_subject: int | None) -> tuple[float, float]:
    """(tokens, seconds) a job over these subjects takes at the measured throughput: the
    TOKEN_COUNTS tokens of the shard x the measured tokens-per-table-token ratio (the model's
    own tokenizer instead of the assumed TOKENIZER_FACTOR) / tokens_per_s, plus the measured
    load and per-question overhead."""
    subjects = list(subjects) if subjects is not None else None
    tokens = (shard_tokens(flavor, subjects, questions_per_subject) / TOKENIZER_FACTOR
              * meas.token_ratio)
    questions = shard_questions(subjects, questions_per_subject)
    return tokens, (meas.load_seconds + tokens / meas.tokens_per_s
                    + meas.overhead_s_per_question * questions)


def learned_runtime_minutes(meas: Measured, flavor: str | None,
                            subjects: Iterable[str] | None,
                            questions_per_subject: int | None) -> int:
    """LEARNED_MARGIN x the measured time of this shard + RUNTIME_FIXED_MIN, rounded up to 5
    minutes, at least RUNTIME_MIN_MIN."""
    _, seconds = learned_seconds(meas, flavor, subjects, questions_per_subject)
    return _round_runtime(seconds, LEARNED_MARGIN)


def learned_mem_mb(meas: Measured) -> int:
    """LEARNED_MEM_FACTOR x the largest measured peak host memory + LEARNED_MEM_FIXED_MB."""
    mb = meas.peak_host_mem_mb * LEARNED_MEM_FACTOR + LEARNED_MEM_FIXED_MB
    return int(math.ceil(mb / 100) * 100)


def model_resources(entry: dict[str, Any], flavor: str | None = None,
                    subjects: Iterable[str] | None = None,
                    questions_per_subject: int | None = None, *, attempt: int = 1,
                    metrics: list[dict[str, Any]] | None = None,
                    max_runtime_min: int | None = None,
                    max_mem_mb: int | None = None) -> dict[str, Any]:
    """Snakemake resources of one logits job. `gpu` is present only when > 0 (so a CPU job
    asks SLURM for no GPU at all); partition/account/constraint only when the entry sets them.
    `metrics` (finished jobs of this model, `read_metrics`) replace the assumed throughput and
    memory when usable; an entry's `runtime_min`/`mem_mb` win over both. `attempt` > 1 grows
    runtime and mem_mb (retries)."""
    gpus = gpu_count(entry)
    subjects = list(subjects) if subjects is not None else None
    meas = measured(metrics, entry, flavor) if metrics else None
    if entry.get("mem_mb"):
        mem = int(entry["mem_mb"])
    else:
        mem = learned_mem_mb(meas) if meas else host_mem_mb(entry, gpus)
    if entry.get("runtime_min"):
        runtime = int(entry["runtime_min"])
    elif meas:
        runtime = learned_runtime_minutes(meas, flavor, subjects, questions_per_subject)
    else:
        runtime = runtime_minutes(entry, shard_tokens(flavor, subjects, questions_per_subject),
                                  gpus, shard_questions(subjects, questions_per_subject),
                                  shard_forwards(flavor, subjects, questions_per_subject))
    res: dict[str, Any] = {
        "mem_mb": grown_mem_mb(mem, attempt, max_mem_mb),
        "runtime": grown_runtime(runtime, attempt, max_runtime_min),
    }
    if gpus > 0:
        res["gpu"] = gpus
    for key in ("slurm_partition", "slurm_account", "constraint"):
        if entry.get(key):
            res[key] = entry[key]
    return res


# ---------------------------------------------------------------- planned tokens and forwards

TOKEN_COUNTS_FILE = Path(__file__).resolve().parents[2] / "resources" / "token_counts.json"
COUNTED_FLAVORS = ("original", "helm", "harness_e47e01b", "harness_current")  # the mean's
_COUNT_KEYS = ("questions", "engine_tokens", "forwards")


def load_token_counts(path: str | Path = TOKEN_COUNTS_FILE) -> dict[str, Any]:
    """resources/token_counts.json (written by bench/token_counts.py): its provenance keys and
    `flavors` -> flavor -> subject -> {questions, engine_tokens, forwards, ...}. ValueError
    naming the file and the field when it is missing or malformed."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror} (regenerate it: python bench/token_counts.py)"
                         ) from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    flavors = doc.get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict) or not flavors:
        raise ValueError(f"{path}: no 'flavors' mapping")
    for flavor, table in flavors.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: flavors.{flavor}: expected a mapping of subjects")
        for subject, row in table.items():
            bad = [k for k in _COUNT_KEYS if not isinstance((row or {}).get(k), int)
                   or row[k] < 0] if isinstance(row, dict) else list(_COUNT_KEYS)
            if bad:
                raise ValueError(f"{path}: flavors.{flavor}.{subject}: {bad[0]!r} must be a "
                                 f"non-negative integer")
    return doc


def write_token_counts(path: str | Path, doc: dict[str, Any]) -> None:
    """Write a token-counts document atomically (bench/token_counts.py)."""
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    load_token_counts(path)  # what was written reads back


TOKEN_COUNTS_DOC = load_token_counts()
# flavor -> subject -> (questions, engine tokens); flavor -> subject -> forward calls
TOKEN_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    f: {s: (r["questions"], r["engine_tokens"]) for s, r in t.items()}
    for f, t in TOKEN_COUNTS_DOC["flavors"].items()}
FORWARDS: dict[str, dict[str, int]] = {
    f: {s: r["forwards"] for s, r in t.items()} for f, t in TOKEN_COUNTS_DOC["flavors"].items()}
# the schedule's mean over the counted flavors (where a caller has no flavor)
FORWARDS_PER_QUESTION = (
    sum(sum(FORWARDS[f].values()) for f in COUNTED_FLAVORS if f in FORWARDS)
    / max(1, sum(q for f in COUNTED_FLAVORS if f in TOKEN_COUNTS
                 for q, _ in TOKEN_COUNTS[f].values())))
