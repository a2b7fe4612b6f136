"""helm_current, lighteval_current and inspect_mmlu against rows the real packages produced on the embedded
models (tests/golden/today_<tool>_<model>.jsonl; tests/golden/README.md says how):

* crfm-helm 0.5.16 (bench/helm_current_local.py): its adapted prompt, the text its
  HuggingFaceClient sent (chat-wrapped for SmolLM2, unchanged for Gemma), the ids its server
  tokenized, its completion and exact_match;
* lighteval 0.13 (bench/lighteval_local.py --chat-template auto): the prompt its PromptManager
  rendered, the ids it fed, its generation and exact match;
* inspect_evals 0.26 (bench/inspect_local.py, inspect_ai's hf provider with do_sample=false):
  the text its provider built (chat template for SmolLM2, `role: content` lines for Gemma), its
  ids, its completion, the parsed answer and C/I.

Prompt text and ids are checked on every golden row (tokenizer only); the model runs on the
first PREDICTED rows per shot count, once loaded per session. The full agreement (100
questions per model at 0 and 5 shots) is bench/today_agreement.sh.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import letter_ids, tokenize_row
from test_lighteval import _model_dir

GOLDEN = Path(__file__).with_name("golden")
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
TOOLS = {"helm": "helm_current", "lighteval": "lighteval_current", "inspect": "inspect_mmlu"}
SCORER = {"helm": "greedy_token", "lighteval": "greedy_em", "inspect": "inspect_choice"}


def _golden(tool: str, slug: str) -> list[dict]:
    path = GOLDEN / f"today_{tool}_{slug}.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _ours(questions, tool: str, group: list[dict]) -> list[dict]:
    k = group[0]["num_fewshot"]
    subjects = sorted({r["subject"] for r in group})
    df = build_prompts(questions, TOOLS[tool], num_fewshot=k, subjects=subjects)
    by = {(r["subject"], r["index"]): r for r in df.iter_rows(named=True)}
    return [by[(r["subject"], r["index"])] for r in group]


def _theirs(tool: str, r: dict, chat: bool) -> int | None:
    """The reference's own prediction: HELM's mapped completion; lighteval's text stripped,
    cut at its stop sequence "\n" only on plain prompts (a chat model stops at EOS only)."""
    if tool == "helm":  # its output mapping: letter -> choice text
        letter = r["completion"].strip()
        letter = letter if letter in r["output_mapping"] else None
    elif tool == "inspect":  # its choice() scorer's parsed answer ("" when none)
        letter = r["answer"]
    else:
        letter = (r["text"][0] if chat else r["text"][0].split("\n")[0]).strip()
    return "ABCD".index(letter) if letter in ("A", "B", "C", "D") else None


_LOADED: dict[str, object] = {}
PREDICTED = 2  # golden rows per shot count that also run the model (the rest: prompt and ids)


def _lm(slug: str, tmp_path_factory):
    """The embedded model, loaded once per test session for both tools."""
    from mmlu_flavors.models import load_model

    if slug not in _LOADED:
        _LOADED[slug] = load_model({"source": "local", "dtype": "float32", "device": "cpu",
                                    "path": str(_model_dir(slug, tmp_path_factory))})
    return _LOADED[slug]


@pytest.mark.slow
@pytest.mark.parametrize("slug", MODELS)
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_today_flavors_agree_with_the_packages(tool, slug, questions, tmp_path_factory):
    from mmlu_flavors.cache import rows_from_results
    from mmlu_flavors.engine import run_fast
    from mmlu_flavors.reduce import predictions

    golden = _golden(tool, slug)
    shots = sorted({r["num_fewshot"] for r in golden})
    assert shots and set(shots) <= {0, 5}
    chat = slug.startswith("smollm2")  # SmolLM2-135M-Instruct has a template, Gemma base none
    lm = _lm(slug, tmp_path_factory)
    letters = letter_ids(lm.tokenizer)
    for k in shots:
        group = [r for r in golden if r["num_fewshot"] == k]
        rows = _ours(questions, tool, group)
        tok = [tokenize_row(p, lm.tokenizer, lm.max_length) for p in rows]
        for r, p, t in zip(group, rows, tok):
            where = f"{tool} {slug} {k}-shot {r['subject']}/{r['index']}"
            assert t.chat == chat, where
            if tool == "helm":
                assert r["apply_chat_template"] == chat, where
                assert p["prompt"] == r["prompt"], where  # the adapter's plain prompt
                assert t.prompt == r["client_prompt"], where  # what the client sent
            elif tool == "lighteval":
                assert t.prompt == r["prompt"], where
                assert list(p["shot_rows"]) == r["fewshot_index"], where
            else:
                assert t.prompt == r["prompt"], where  # what its provider's hf_chat built
            assert list(t.request.context) == r["input_tokens"], where
        # the model on the first rows only (CI time); the full agreement: bench/today_agreement.sh
        group, rows, tok = group[:PREDICTED], rows[:PREDICTED], tok[:PREDICTED]
        res = run_fast(lm.model, [t.request for t in tok], letters, progress=False)
        cache = rows_from_results(slug, rows, tok, res, letters, lm.tokenizer)
        scorer = SCORER[tool]
        pred = {(x["subject"], x["index"]): x for x in predictions(cache, [scorer]).to_dicts()}
        for r in group:
            where = f"{tool} {slug} {k}-shot {r['subject']}/{r['index']}"
            o = pred[(r["subject"], r["index"])]
            assert o["pred"] == _theirs(tool, r, chat), where
            em = {"helm": lambda: r["exact_match"], "lighteval": lambda: r["metrics"]["em"],
                  "inspect": lambda: r["value"] == "C"}[tool]()
            assert o["correct"] == bool(em), where
