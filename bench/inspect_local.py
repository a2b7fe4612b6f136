"""Run inspect_evals 0.26's MMLU tasks offline, on the local CSVs and a local model.

Reference runner for the ``inspect_mmlu`` flavor (docs/IMPLEMENTATIONS.md, section 10). It runs
in inspect_evals' own virtualenv (``bench/setup_inspect.sh``, default
``~/.cache/mmlu-flavors/venvs/inspect``)::

    PYTHONPATH=workflow ~/.cache/mmlu-flavors/venvs/inspect/bin/python bench/inspect_local.py \\
        MODEL_DIR resources/mmlu SUBJECT... --num-fewshot 0 5 --limit 25 --out rows.jsonl

Tasks: ``inspect_evals/mmlu_0_shot`` and ``inspect_evals/mmlu_5_shot`` (the package's own
``@task`` functions with their defaults, English), run by ``inspect_ai.eval`` on its Hugging
Face provider (``hf/<name>`` with ``model_path``, CPU, float32 weights as stored).

Why the package cannot run offline as shipped: ``get_mmlu_dataset`` loads ``cais/mmlu``
(config ``all``) through ``inspect_evals.utils.huggingface.hf_dataset`` at a pinned revision
(``MMLU_REVISION``) from the Hub, retrying with minutes of backoff, and nothing here reaches
the Hub. Only the data location changes: ``inspect_evals.mmlu.mmlu.hf_dataset`` is replaced
by a call of inspect_ai's own ``hf_dataset`` on a local ``cais/mmlu``-layout directory (config
``all``: the chosen subjects in alphabetical order, rows in CSV order, as the Hub's ``all``),
with the package's own ``sample_fields``, shuffle and seed. Dataset records, de-duplication,
few-shot conversation, ``multiple_choice`` solver, generation and ``choice()`` scorer are the
package's.

One provider default must be overridden: inspect_ai's ``hf`` provider samples
(``do_sample=True``) unless told otherwise, and the task's ``temperature=0`` then stops
transformers' ``generate`` ("`temperature` (=0.0) has to be a strictly positive float");
``--do-sample default`` runs it that way and records the error. ``-M do_sample=false`` (the
runner's default) is the greedy decoding the task asks for.

One JSON line per scored sample: task, num_fewshot, subject, index (CSV row), id, prompt (the
exact text the provider's ``hf_chat`` built: the chat template's rendering, or its
``role: content`` lines), input_tokens (``tokenizer(prompt)``, unpadded), completion, answer
(the scorer's parsed letter or ""), value (C/I/N), target, batch (max_connections).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("INSPECT_LOG_LEVEL", "warning")

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

# datasets keys its cache of a local dataset by directory name and config, not content
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="inspect_hf_datasets_"))

from jsonl_out import write_jsonl  # bench/ (sys.path[0] when run as a script)

INSPECT_EVALS_VERSION = "0.26.0"


def write_all_layout(questions: Any, subjects: list[str], limit: int | None, out: Path) -> Path:
    """A local ``cais/mmlu`` with one config ``all``: test (the first ``limit`` rows of each
    subject) and dev, subjects alphabetical, rows in CSV order; ``answer`` a ClassLabel."""
    import datasets
    import polars as pl

    features = datasets.Features({
        "question": datasets.Value("string"), "subject": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
        "answer": datasets.ClassLabel(names=list("ABCD")),
    })
    files = []
    for split in ("test", "dev"):
        parts = []
        for s in sorted(subjects):
            part = questions.filter((pl.col("split") == split) & (pl.col("subject") == s)).sort("index")
            parts.append(part.head(limit) if split == "test" and limit else part)
        df = pl.concat(parts).select("question", "subject", "choices",
                                     pl.col("answer").cast(pl.Int64))
        rel = f"all/{split}-00000-of-00001.parquet"
        (out / "all").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(df.to_dict(as_series=False),
                                   features=features).to_parquet(str(out / rel))
        files.append(f"  - split: {split}\n    path: {rel}")
    (out / "README.md").write_text("---\nconfigs:\n- config_name: all\n  data_files:\n"
                                   + "\n".join(files) + "\n---\n")
    return out


def use_local_data(data_dir: Path) -> None:
    """Point the package's dataset loader at ``data_dir`` (nothing else changes)."""
    import inspect_ai.dataset
    import inspect_evals.mmlu.mmlu as mmlu

    def local_hf_dataset(path: str, split: str, name: str | None = None,
                         revision: str | None = None, **kwargs: Any):
        if path != "cais/mmlu" or name != "all":
            raise ValueError(f"inspect_local: only cais/mmlu 'all' is local, not {path}/{name}")
        return inspect_ai.dataset.hf_dataset(path=str(data_dir), split=split, name="all",
                                             **kwargs)

    mmlu.hf_dataset = local_hf_dataset


def record_prompts() -> list[tuple[str, str]]:
    """Wrap the provider's ``hf_chat`` to keep (last user message, text built) per call."""
    from inspect_ai.model._providers.hf import HuggingFaceAPI

    seen: list[tuple[str, str]] = []
    orig = HuggingFaceAPI.hf_chat

    def hf_chat(self, messages, tools):
        text = orig(self, messages, tools)
        last = next(m for m in reversed(messages) if m.role == "user")
        seen.append((last.text, text))
        return text

    HuggingFaceAPI.hf_chat = hf_chat
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("mmlu_dir")
    p.add_argument("subjects", nargs="+")
    p.add_argument("--num-fewshot", type=int, nargs="+", default=[5], choices=(0, 5))
    p.add_argument("--limit", type=int, default=25, help="test rows per subject")
    p.add_argument("--do-sample", choices=("false", "default"), default="false")
    p.add_argument("--max-connections", type=int, default=None,
                   help="the provider's batch size (default: its own, 32)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import polars as pl
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model
    from inspect_evals.mmlu.mmlu import mmlu_0_shot, mmlu_5_shot

    from mmlu_flavors.data import read_local

    questions = read_local(a.mmlu_dir, a.subjects)
    tmp = Path(tempfile.mkdtemp(prefix="inspect_mmlu_"))
    use_local_data(write_all_layout(questions, a.subjects, a.limit, tmp / "cais_mmlu"))
    seen = record_prompts()
    args: dict[str, Any] = {"model_path": a.model_dir, "device": "cpu"}
    if a.do_sample == "false":
        args["do_sample"] = False
    model = get_model("hf/local", **args)
    tok = model.api.tokenizer  # type: ignore[attr-defined]
    index = {}
    for r in questions.filter(pl.col("split") == "test").iter_rows(named=True):
        index.setdefault((r["subject"], r["question"], tuple(r["choices"])), r["index"])
    rows = []
    for k in a.num_fewshot:
        task = (mmlu_0_shot if k == 0 else mmlu_5_shot)(subjects=a.subjects)
        seen.clear()
        log = inspect_eval(task, model=model, log_dir=str(tmp / "logs"), display="none",
                           max_connections=a.max_connections, fail_on_error=False)[0]
        texts = dict(seen)
        if log.status != "success" or not log.samples:
            err = log.error.message if log.error else next(
                (s.error.message for s in log.samples or [] if s.error), "?")
            print(f"mmlu_{k}_shot: {log.status}: {err.strip().splitlines()[-1]}", file=sys.stderr)
            rows.append({"task": f"mmlu_{k}_shot", "num_fewshot": k, "status": log.status,
                         "error": err})
            continue
        for s in log.samples:
            if s.error:
                rows.append({"task": f"mmlu_{k}_shot", "num_fewshot": k, "id": s.id,
                             "error": s.error.message})
                continue
            subject = s.metadata["subject"]
            user = next(m for m in reversed(s.messages) if m.role == "user")
            prompt = texts[user.text]
            score = s.scores["choice"]
            rows.append({
                "task": f"mmlu_{k}_shot", "num_fewshot": k, "subject": subject,
                "index": index[(subject, s.input[-1].text if isinstance(s.input, list)
                                else s.input, tuple(c for c in s.choices))],
                "id": s.id, "prompt": prompt,
                "input_tokens": tok(prompt)["input_ids"],
                "completion": s.output.completion, "answer": score.answer,
                "value": score.value, "target": s.target,
                "batch": a.max_connections or model.api.max_connections(),  # type: ignore[attr-defined]
                "inspect_evals": INSPECT_EVALS_VERSION,
            })
        errors = [r["error"] for r in rows if r["num_fewshot"] == k and "error" in r]
        acc = (f"accuracy {log.results.scores[0].metrics['accuracy'].value:.3f}"
               if log.results and log.results.scores else "no scores")
        print(f"mmlu_{k}_shot: {log.status}, "
              f"{sum('index' in r for r in rows if r['num_fewshot'] == k)} samples scored, "
              f"{len(errors)} failed, {acc}" + (f"; first error: {errors[0].strip().splitlines()[-1]}"
                                                if errors else ""))
    write_jsonl(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
