"""Each flavor's token rule, checked against the reference procedures written out literally."""

from __future__ import annotations

import pytest

from mmlu_flavors.prompts import assemble, build_prompts
from mmlu_flavors.tokenize import (ORIGINAL_MAX_TOKENS, letter_ids, scored_strings,
                                   tokenize_row)
from tiny_tokenizers import bytelevel_no_bos, sentencepiece_bos


@pytest.fixture(scope="module", params=["bytelevel", "sentencepiece"])
def tok(request, questions):
    return bytelevel_no_bos(questions) if request.param == "bytelevel" else sentencepiece_bos(questions)


@pytest.fixture(scope="module")
def rows(questions) -> dict[str, dict]:
    out = {}
    for f in ("original", "helm", "harness_e47e01b", "harness_current"):
        df = build_prompts(questions, f, subjects=["us_foreign_policy"], questions_per_subject=2)
        out[f] = df.row(1, named=True)
    return out


def test_letter_ids_follow_original_code(tok) -> None:
    ids = letter_ids(tok)
    assert ids == [tok(L).input_ids[-1] for L in "ABCD"]
    if tok.bos_token == "<bos>":  # SentencePiece style: the letter alone is "▁A"
        assert tok.convert_ids_to_tokens(ids[0]) == "▁A"
    else:  # byte-level BPE: "A", not the " A" token
        assert tok.convert_ids_to_tokens(ids[0]) == "A"
        assert ids[0] != tok(" A", add_special_tokens=False).input_ids[-1]


def test_original_and_helm_feed_tokenizer_prompt(tok, rows) -> None:
    for f in ("original", "helm"):
        t = tokenize_row(rows[f], tok, max_length=4096)
        assert t.request.context == tok(rows[f]["prompt"]).input_ids
        assert t.n_shots == 5 and not t.truncated
        whole = tok(rows[f]["prompt"] + " A").input_ids
        assert t.request.continuations[0] == whole[len(t.request.context):]


def test_harness_e47e01b_separate_no_special(tok, rows) -> None:
    r = rows["harness_e47e01b"]
    t = tokenize_row(r, tok, max_length=4096)
    assert t.request.context == tok(r["prompt"], add_special_tokens=False).input_ids
    conts = scored_strings(r["choices"])
    assert t.request.continuations == [tok(c, add_special_tokens=False).input_ids for c in conts]
    assert conts[4:] == r["continuations"]


def test_harness_current_joint_with_default_special_tokens(tok, rows) -> None:
    """lm-eval 0.4.13: the tokenizer's default special tokens (its 0.4.8 Gemma-only BOS rule is
    gone), context and continuation encoded together and split."""
    r = rows["harness_current"]
    t = tokenize_row(r, tok, max_length=4096)
    ctx = tok(r["prompt"]).input_ids
    assert t.request.context == ctx
    whole = tok(r["prompt"] + " B").input_ids
    assert t.request.continuations[1] == whole[len(ctx):]
    assert (ctx[0] == tok.bos_token_id) == (tok.bos_token == "<bos>")


def test_harness_current_no_special_when_text_starts_with_prefix_token(tok, rows) -> None:
    r = dict(rows["harness_current"])
    r["prompt"] = tok.decode([tok.bos_token_id]) + r["prompt"]
    t = tokenize_row(r, tok, max_length=4096)
    assert t.request.context == tok(r["prompt"], add_special_tokens=False).input_ids


def test_original_drops_shots_over_2048(questions) -> None:
    tok = bytelevel_no_bos(questions)  # small vocabulary: long history prompts exceed 2048
    r = build_prompts(questions, "original", subjects=["high_school_european_history"],
                      questions_per_subject=1).row(0, named=True)
    assert len(tok(r["prompt"]).input_ids) > ORIGINAL_MAX_TOKENS
    t = tokenize_row(r, tok, max_length=100_000)
    n = t.n_shots
    assert n < 5 and t.truncated
    assert len(tok(assemble(r["header"], r["shots"], r["test_block"], n)).input_ids) <= ORIGINAL_MAX_TOKENS
    if n < 5:
        assert len(tok(assemble(r["header"], r["shots"], r["test_block"], n + 1)).input_ids) > ORIGINAL_MAX_TOKENS
    assert t.request.context == tok(t.prompt).input_ids


def test_helm_drops_shots_then_cuts_right(tok, rows) -> None:
    r = rows["helm"]
    n_full = len(tok(r["prompt"], add_special_tokens=False).input_ids)
    t = tokenize_row(r, tok, max_length=n_full)  # +1 for the generated token does not fit
    assert t.n_shots == 4 and t.truncated
    assert len(tok(t.prompt, add_special_tokens=False).input_ids) + 1 <= n_full
    tiny = tokenize_row(r, tok, max_length=20)
    assert tiny.n_shots == 0 and tiny.truncated
    assert len(tok(tiny.prompt, add_special_tokens=False).input_ids) <= 20


def test_left_truncation_flag(tok, rows) -> None:
    r = rows["harness_e47e01b"]
    t = tokenize_row(r, tok, max_length=64)
    assert t.truncated and t.request.max_length == 64
    assert not tokenize_row(r, tok, max_length=100_000).truncated
