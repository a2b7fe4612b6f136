"""Build MMLU prompts with crfm-helm 0.5.16's own code, offline, on the local CSVs.

Runs in the helm venv (bench/setup_helm.sh, default ~/.cache/mmlu-flavors/venvs/helm)::

    ~/.cache/mmlu-flavors/venvs/helm/bin/python bench/helm_local.py resources/mmlu SUBJECT... --out helm.jsonl

Executed HELM code: ``MMLUScenario.get_instances`` (its CSV reader: ``open(path)`` in text mode
+ ``csv.reader``; the data directory is a symlink to the local CSVs, so its download step sees
the data present and skips), ``get_mmlu_spec`` (the run spec: instructions, prefixes, 5 shots,
max_tokens 1, stop "\\n") and ``MultipleChoiceJointAdapter.adapt`` (train/eval split, the
label-balanced sampler, prompt assembly, output mapping). Not executed: the window service
(token counting for the too-long policy needs a model deployment; a stand-in says every prompt
fits, true for MMLU 5-shot within these models' context) and the model client.

One JSON line per test question: subject, index (CSV row), prompt (``request.prompt``),
output_mapping, gold_letters, max_tokens, temperature, stop_sequences.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from jsonl_out import write_jsonl  # bench/ (sys.path[0] when run as a script)

HELM_VERSION = "0.5.16"


class _FitsEverything:
    """Stand-in window service: every prompt fits (see module docstring)."""

    def fits_within_context_window(self, text: str, expected_completion_token_length: int = 0) -> bool:
        return True

    def truncate_from_right(self, text: str, expected_completion_token_length: int = 0) -> str:
        return text  # called once a prompt has no shots left; it fits, so nothing is cut


def helm_prompts(mmlu_dir: str | Path, subjects: list[str]) -> list[dict]:
    from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import (
        MultipleChoiceJointAdapter)
    from helm.benchmark.run_specs.lite_run_specs import get_mmlu_spec
    from helm.benchmark.scenarios.mmlu_scenario import MMLUScenario
    from helm.benchmark.scenarios.scenario import TEST_SPLIT

    rows = []
    with tempfile.TemporaryDirectory(prefix="helm_mmlu_") as out:
        os.symlink(Path(mmlu_dir).resolve(), Path(out) / "data")
        for subject in subjects:
            spec = get_mmlu_spec(subject).adapter_spec
            instances = MMLUScenario(subject).get_instances(out)
            adapter = object.__new__(MultipleChoiceJointAdapter)  # skip the window-service lookup
            adapter.adapter_spec = spec
            adapter.window_service = _FitsEverything()
            states = adapter.adapt(instances, parallelism=1)
            test = [s for s in states if s.instance.split == TEST_SPLIT]
            for index, s in enumerate(test):  # instances keep CSV order
                gold = [k for k, v in s.output_mapping.items()
                        if any(r.is_correct and r.output.text == v for r in s.instance.references)]
                rows.append({
                    "subject": subject, "index": index, "prompt": s.request.prompt,
                    "output_mapping": s.output_mapping, "gold_letters": sorted(gold),
                    "max_tokens": s.request.max_tokens, "temperature": s.request.temperature,
                    "stop_sequences": list(s.request.stop_sequences),
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mmlu_dir")
    p.add_argument("subjects", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from importlib.metadata import version

    if version("crfm-helm") != HELM_VERSION:
        print(f"warning: crfm-helm {version('crfm-helm')} installed, checked against "
              f"{HELM_VERSION}", file=sys.stderr)
    rows = helm_prompts(a.mmlu_dir, a.subjects)
    write_jsonl(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
