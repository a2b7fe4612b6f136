"""Run lighteval 0.13's English MMLU tasks offline, on the local CSVs and a local model.

Reference runner for the ``lighteval_*`` flavors (docs/IMPLEMENTATIONS.md, section 5). It
runs in lighteval's own virtualenv (``bench/setup_lighteval.sh``, default
``~/.cache/mmlu-flavors/venvs/lighteval``) because lighteval's pins clash with the project's::

    PYTHONPATH=workflow ~/.cache/mmlu-flavors/venvs/lighteval/bin/python bench/lighteval_local.py \\
        MODEL_DIR resources/mmlu SUBJECT... --task mmlu --num-fewshot 5 --out rows.jsonl

Tasks (the package's own `LightevalTaskConfig` objects, imported, never rewritten):

* ``mmlu`` -- ``lighteval|mmlu:<subject>`` (``lighteval/tasks/tasks/mmlu.py``): letters in the
  prompt, generative ``exact_match`` (greedy, at most 5 new tokens, stop at "\\n").
* ``mcf``  -- ``global_mmlu_all_eng_mcf:<subject>``
  (``lighteval/tasks/multilingual/tasks/global_mmlu.py``): lighteval's multilingual MCF
  template in English, log-likelihood accuracy of " A".." D".

Only the data location changes: each config is copied with ``dataclasses.replace`` so that
``hf_repo``/``hf_subset`` point at a local dataset written from the CSVs (``cais/mmlu``
layout for ``mmlu`` via ``mmlu_flavors.data.save_hub_layout``; Global-MMLU's columns
``question, option_a..option_d, answer (letter), subject, cultural_sensitivity_label`` for
``mcf``), and ``num_fewshots`` is set as lighteval's registry sets it from ``suite|task|k``.
Prompt, few-shot sampler, tokenization, model forward/generation and metric are the
package's own: ``LightevalTask.get_docs`` -> ``TransformersModel.loglikelihood`` /
``greedy_until`` -> ``lighteval.metrics.apply_metric``, as ``Pipeline`` calls them.

One JSON line per test question: task, subject, index (CSV row), num_fewshot, prompt (the
exact string from ``prompt_manager.prepare_prompt``), fewshot_index (CSV rows of the shots,
in prompt order), choices (the scored strings), gold, input_tokens, and either
output_tokens/logprobs (``mcf``) or text/output_tokens (``mmlu``), plus the metric values.
"""

from __future__ import annotations

import os

# Set before datasets / huggingface_hub are imported: the Hub is unreachable here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import sys
import tempfile

# datasets keys its cache of a local dataset by directory name and config, not content: a
# second run would read the first run's subjects. A fresh cache per process avoids that.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="lighteval_hf_datasets_"))
from pathlib import Path
from typing import Any

from jsonl_out import write_jsonl  # bench/ (sys.path[0] when run as a script)

LIGHTEVAL_VERSION = "0.13.0"
TASKS = ("mmlu", "mcf")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def _questions(mmlu_dir: str | Path, subjects: list[str]):
    from mmlu_flavors.data import read_local

    return read_local(mmlu_dir, subjects)


def global_mmlu_kept(choices: list[str]) -> bool:
    """global_mmlu.py's hf_filter on the options: every option non-empty after strip."""
    return all(c is not None and c.strip() for c in choices)


def write_global_layout(questions, out_dir: Path) -> Path:
    """Global-MMLU's columns for the given questions, one config ``en``, splits test/dev."""
    import datasets
    import polars as pl

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for split in ("test", "dev"):
        part = questions.filter(pl.col("split") == split).sort("subject", "index")
        cols: dict[str, list] = {k: [] for k in (
            "sample_id", "subject", "question", "option_a", "option_b", "option_c", "option_d",
            "answer", "cultural_sensitivity_label")}
        for r in part.iter_rows(named=True):
            cols["sample_id"].append(f"{r['subject']}/{r['index']}")
            cols["subject"].append(r["subject"])
            cols["question"].append(r["question"])
            for k, c in zip("abcd", r["choices"]):
                cols[f"option_{k}"].append(c)
            cols["answer"].append("ABCD"[r["answer"]])
            cols["cultural_sensitivity_label"].append("CA")
        rel = f"en/{split}-00000-of-00001.parquet"
        (out_dir / "en").mkdir(exist_ok=True)
        datasets.Dataset.from_dict(cols).to_parquet(str(out_dir / rel))
        files.append(f"  - split: {split}\n    path: {rel}")
    (out_dir / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n" + "\n".join(files) + "\n---\n")
    return out_dir


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------

def task_config(task: str, subject: str, data_dir: Path, num_fewshot: int):
    """The package's shipped config for one subject, pointed at the local dataset."""
    if task == "mmlu":
        from lighteval.tasks.tasks import mmlu

        cfg = getattr(mmlu, f"mmlu_{subject}")
        return dataclasses.replace(cfg, hf_repo=str(data_dir), hf_subset=subject,
                                   num_fewshots=num_fewshot)
    if task == "mcf":
        from lighteval.tasks.multilingual.tasks import global_mmlu

        name = f"global_mmlu_all_eng_mcf:{subject}"
        cfg = next(c for c in global_mmlu.TASKS_TABLE if c.name == name)
        return dataclasses.replace(cfg, hf_repo=str(data_dir), hf_subset="en",
                                   num_fewshots=num_fewshot)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def load_model(model_dir: str | Path, chat_template: str = "off", batch_size: int = 1):
    """lighteval's TransformersModel on CPU, float32. ``chat_template``: ``off`` (plain-text
    prompts, what the lighteval_* flavors reproduce) or ``auto`` (lighteval's default: on
    when the tokenizer has a chat template)."""
    from lighteval.models.transformers.transformers_model import (
        TransformersModel, TransformersModelConfig)

    override = {"off": False, "auto": None, "on": True}[chat_template]
    # auto: the field left unset, as a user who does not pass it (its pydantic type is bool,
    # so an explicit None is rejected; the unset default None means "detect")
    extra = {} if override is None else {"override_chat_template": override}
    cfg = TransformersModelConfig(
        model_name=str(model_dir), device="cpu", dtype="float32", batch_size=batch_size,
        cache_dir=tempfile.mkdtemp(prefix="lighteval_cache_"), **extra)
    return TransformersModel(cfg)


def _csv_rows(task: str, questions, subject: str, split: str) -> list[int]:
    """CSV row of each lighteval doc id (doc.id = position in the (filtered) split)."""
    import polars as pl

    part = questions.filter((pl.col("split") == split) & (pl.col("subject") == subject)
                            ).sort("index")
    rows = part.to_dicts()
    if task == "mcf":
        rows = [r for r in rows if global_mmlu_kept(r["choices"])]
    return [r["index"] for r in rows]


def plain_prompt_manager():
    """lighteval's PromptManager as TransformersModel builds it without a chat template."""
    from lighteval.tasks.prompt_manager import PromptManager

    return PromptManager(use_chat_template=False, tokenizer=None, system_prompt=None)


def run_task(model, task: str, mmlu_dir: str | Path, subjects: list[str], num_fewshot: int,
             limit: int | None, work_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run one lighteval task on the subjects; one dict per evaluated test question.

    ``model=None`` builds prompts only (no model needed): lighteval's docs and its plain-text
    PromptManager, for every question, without responses."""
    from lighteval.metrics import apply_metric
    from lighteval.tasks.lighteval_task import LightevalTask

    from mmlu_flavors.data import save_hub_layout

    questions = _questions(mmlu_dir, subjects)
    tmp = tempfile.TemporaryDirectory(prefix="lighteval_mmlu_") if work_dir is None else None
    root = Path(tmp.name if tmp else work_dir)
    data_dir = (save_hub_layout(questions, root / "mmlu") if task == "mmlu"
                else write_global_layout(questions, root / "global_mmlu"))
    out: list[dict[str, Any]] = []
    try:
        # like Pipeline: every subject's docs first, then ONE model call over all of them
        # (lighteval's generative batching derives its token budget from the whole call)
        tasks, all_docs = [], []
        for subject in subjects:
            lt = LightevalTask(task_config(task, subject, data_dir, num_fewshot))
            docs = lt.get_docs(limit)  # seed-42 shuffle, then the first `limit`
            tasks.append((subject, lt, docs))
            all_docs += docs
        if model is None:
            all_resp = [None] * len(all_docs)
        else:
            all_resp = (model.greedy_until(all_docs) if task == "mmlu"
                        else model.loglikelihood(all_docs))
        pm = plain_prompt_manager() if model is None else model.prompt_manager
        start = 0
        for subject, lt, docs in tasks:
            responses = all_resp[start:start + len(docs)]
            start += len(docs)
            test_rows = _csv_rows(task, questions, subject, "test")
            shot_rows = _csv_rows(task, questions, subject, "dev")
            shot_pos = {id(d): int(d.id) for d in lt.fewshot_docs()}
            metrics = ([None] * len(docs) if model is None
                       else apply_metric(responses, docs, list(lt.metrics)))
            for doc, resp, met in zip(docs, responses, metrics):
                row = {
                    "task": task, "subject": subject, "index": test_rows[int(doc.id)],
                    "num_fewshot": num_fewshot,
                    "prompt": pm.prepare_prompt(doc),
                    "fewshot_index": [shot_rows[shot_pos[id(s)]] for s in doc.fewshot_samples],
                    "choices": list(doc.choices), "gold": int(_as_list(doc.gold_index)[0]),
                }
                out.append(row)
                if resp is None:
                    continue
                row["input_tokens"] = [int(t) for t in _tokens(resp.input_tokens)]
                row["metrics"] = {k: float(v) for k, v in met.items()}
                if task == "mmlu":
                    row["text"] = list(resp.text)
                    row["output_tokens"] = [[int(t) for t in _tokens(o)] for o in resp.output_tokens]
                else:
                    row["logprobs"] = [float(x) for x in resp.logprobs]
                    # ModelResponse.output_tokens keeps only the first len(continuation) rows
                    # (lighteval 0.13 slices the gathered [choices, len] tensor twice), so
                    # record what _loglikelihood_tokens feeds: its own tok_encode_pair call.
                    ctxs, conts = model.tok_encode_pair(row["prompt"], doc.choices, pairwise=True)
                    row["context_tokens"] = [int(t) for t in ctxs[0]]
                    row["output_tokens"] = [[int(t) for t in c] for c in conts]
    finally:
        if tmp:
            tmp.cleanup()
    out.sort(key=lambda r: (r["subject"], r["index"]))
    return out


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _tokens(t) -> list[int]:
    if hasattr(t, "tolist"):
        t = t.tolist()
    return list(t)


def _check_version() -> None:
    from importlib.metadata import version

    v = version("lighteval")
    if v != LIGHTEVAL_VERSION:
        print(f"warning: lighteval {v} installed, this runner was checked against "
              f"{LIGHTEVAL_VERSION}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("mmlu_dir")
    p.add_argument("subjects", nargs="+")
    p.add_argument("--task", choices=TASKS, default="mmlu")
    p.add_argument("--num-fewshot", type=int, default=5)
    p.add_argument("--limit", type=int, default=None,
                   help="questions per subject (lighteval's max_samples: after its seed-42 shuffle)")
    p.add_argument("--chat-template", choices=("off", "auto", "on"), default="off")
    p.add_argument("--prompts-only", action="store_true",
                   help="no model: prompts of every question (MODEL_DIR is ignored)")
    p.add_argument("--out", required=True, help="JSONL output")
    a = p.parse_args(argv)
    _check_version()
    model = None if a.prompts_only else load_model(a.model_dir, a.chat_template)
    rows = run_task(model, a.task, a.mmlu_dir, a.subjects, a.num_fewshot, a.limit)
    write_jsonl(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
