"""helm_current, lighteval_current and inspect_mmlu: today's tools as they run an instruct model by default.

Both render through the tokenizer's chat template when it has one and are their plain
flavor exactly otherwise (`chat: helm_user_auto`, `chat: lighteval_auto`). Checked here with
small real tokenizers (tests/tiny_tokenizers.py: one with SmolLM2's ChatML template, two
without) and a tiny random model: the rendered text and ids; the same model input, hence the
same cache key and zero new forwards, where there is no template; lighteval's EM without the
newline cut under a chat template. Agreement with the real packages on the embedded models:
tests/test_today_golden.py (golden rows) and bench/compare_helm_current.py, compare_lighteval.py.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors import cache, engine, models
from mmlu_flavors.flavors import get_flavor
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.reduce import predictions
from mmlu_flavors.tokenize import (chat_required, letter_ids, lighteval_messages, rendering,
                                   tokenize_row)
from synthetic_cache import cache_row, make_cache
from tiny_tokenizers import bytelevel_chat, bytelevel_no_bos, sentencepiece_bos
from workflow_fixture import make_tiny_model

SUBJECTS = ["abstract_algebra", "college_mathematics"]
PAIRS = {"helm_current": "helm", "lighteval_current": "lighteval_mmlu"}


def _rows(questions, flavor: str, k: int = 5, n: int = 3) -> list[dict]:
    df = build_prompts(questions, flavor, num_fewshot=k, subjects=SUBJECTS,
                       questions_per_subject=n)
    return df.sort("subject", "index").to_dicts()


@pytest.mark.parametrize("current,plain", sorted(PAIRS.items()))
@pytest.mark.parametrize("make_tok", [bytelevel_no_bos, sentencepiece_bos])
def test_without_a_template_the_model_input_is_the_plain_flavors(questions, current, plain,
                                                                   make_tok):
    tok = make_tok(questions)
    assert not getattr(tok, "chat_template", None)
    assert not chat_required(get_flavor(current))
    assert rendering(get_flavor(current), tok).startswith("plain text")
    letters = letter_ids(tok)
    for k in (0, 5):
        for a, b in zip(_rows(questions, current, k), _rows(questions, plain, k)):
            assert a["prompt"] == b["prompt"]
            ta, tb = tokenize_row(a, tok, 2048), tokenize_row(b, tok, 2048)
            assert ta.request == tb.request and ta.prompt == tb.prompt and not ta.chat
            assert cache.input_key(ta.request, letters) == cache.input_key(tb.request, letters)


def test_helm_current_wraps_the_whole_prompt_as_one_user_message(questions):
    tok = bytelevel_chat(questions)
    assert rendering(get_flavor("helm_current"), tok) == "chat template (helm_user_auto)"
    for k in (0, 5):
        for row, plain in zip(_rows(questions, "helm_current", k), _rows(questions, "helm", k)):
            t = tokenize_row(row, tok, 2048)
            want = tok.apply_chat_template([{"role": "user", "content": plain["prompt"]}],
                                           tokenize=False, add_generation_prompt=True)
            assert t.chat and t.prompt == want
            assert t.prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant")
            assert t.prompt.endswith(plain["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
            assert t.request.context == tok(want)["input_ids"]  # default special tokens
            assert t.request.generate == 0  # one token: the greedy token every row has


def test_helm_current_fits_the_plain_text_then_wraps(questions):
    """HELM's adapter drops shots while the PLAIN prompt does not fit (tokens + 1 <= max
    length); its client wraps what is left, which may then be longer than the model's
    context: nothing cuts it again."""
    tok = bytelevel_chat(questions)
    row = _rows(questions, "helm_current", 5, 1)[0]
    plain_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    limit = len(plain_ids)  # the full plain prompt needs len + 1: one shot must go
    t = tokenize_row(row, tok, limit)
    h = tokenize_row(_rows(questions, "helm", 5, 1)[0], bytelevel_no_bos(questions), limit)
    assert t.n_shots == 4 and t.truncated
    fitted = row["header"] + "".join(row["shots"][:4]) + row["test_block"]
    assert t.prompt == tok.apply_chat_template([{"role": "user", "content": fitted}],
                                               tokenize=False, add_generation_prompt=True)
    assert t.request.context == tok(t.prompt)["input_ids"]  # not cut again after wrapping
    assert h.n_shots == 4


def test_lighteval_current_renders_shots_as_turns(questions):
    tok = bytelevel_chat(questions)
    fl = get_flavor("lighteval_current")
    for k in (0, 5):
        for row in _rows(questions, "lighteval_current", k):
            msgs = lighteval_messages(row, k, fl)
            instruction = ("The following are multiple choice questions (with answers) about "
                           f"{row['subject'].replace('_', ' ')}.\n\n")
            assert [m["role"] for m in msgs] == ["user", "assistant"] * k + ["user"]
            assert msgs[0]["content"].startswith(instruction + "Question: ")
            assert all(not m["content"].startswith("The following")
                       for m in msgs[1:])
            assert [m["content"] for m in msgs[1::2]] == [" " + a for a in row["shot_answers"]]
            assert msgs[-1]["content"].endswith("\nAnswer:")
            t = tokenize_row(row, tok, 2048)
            assert t.chat and t.prompt == tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True)
            assert t.request.context == tok(t.prompt)["input_ids"]
            assert t.request.generate == 5


INSPECT_USER = ("Answer the following multiple choice question. The entire content of your "
                 "response should be of the following format: 'ANSWER: $LETTER' (without "
                 "quotes) where LETTER is one of {letters}.\n\n{q}\n\n{choices}")


def _inspect_user(question: str, choices: list[str], lower: bool) -> str:
    marks = [f"({L.lower()})" if lower else f"{L})" for L in "ABCD"]
    return INSPECT_USER.format(letters="a,b,c,d" if lower else "A,B,C,D", q=question,
                               choices="\n".join(f"{m} {c}" for m, c in zip(marks, choices)))


def _split_rows(questions, subject: str, split: str) -> list[dict]:
    return (questions.filter((pl.col("subject") == subject) & (pl.col("split") == split))
            .sort("index").to_dicts())


@pytest.mark.parametrize("k", [0, 5])
def test_inspect_mmlu_builds_inspect_evals_conversation(questions, k):
    """mmlu_5_shot: a system line naming the raw subject, every dev row as a user turn with
    lower-case (a)-(d) and an assistant "Answer: X", the test question with A)-D); mmlu_0_shot:
    the test question alone. Without a template it is the provider's `role: content` lines,
    the prompt row's text; with one, the template over the same messages."""
    chat_tok, plain_tok = bytelevel_chat(questions), sentencepiece_bos(questions)
    fl = get_flavor("inspect_mmlu")
    for row in _rows(questions, "inspect_mmlu", k, 2):
        subject = row["subject"]
        test = next(r for r in _split_rows(questions, subject, "test") if r["index"] == row["index"])
        msgs = []
        if k:
            msgs.append(("system", f"The following are multiple choice questions about {subject}."))
            for d in _split_rows(questions, subject, "dev")[:k]:
                msgs += [("user", _inspect_user(d["question"], d["choices"], True)),
                         ("assistant", f"Answer: {'ABCD'[d['answer']]}")]
        msgs.append(("user", _inspect_user(test["question"], test["choices"], False)))
        assert row["prompt"] == "".join(f"{r}: {c}\n" for r, c in msgs)
        plain = tokenize_row(row, plain_tok, 4096)
        assert not plain.chat and plain.prompt == row["prompt"]
        assert plain.request.context == plain_tok(row["prompt"])["input_ids"]  # BOS kept
        assert rendering(fl, plain_tok).startswith("plain text")
        t = tokenize_row(row, chat_tok, 4096)
        want = chat_tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs],
                                            tokenize=False, add_generation_prompt=True)
        assert t.chat and t.prompt == want and t.request.context == chat_tok(want)["input_ids"]
        assert t.request.generate == plain.request.generate == 16
        # the system message comes from the conversation, not the template's default
        assert ("You are a helpful AI assistant" in t.prompt) == (k == 0)


@pytest.mark.parametrize("text,pred", [
    ("ANSWER: B", 1), ("answer: c.", 2), ("ANSWER: $D$", 3), ("ANSWER: **A**", 0),
    ("ANSWER: (B)", 1), ("I think\nANSWER: A\nANSWER: C", 2), ("so the ANSWER: D. Done", 3), ("ANSWER: D is right", None),
    ("ANSWER: A,", 0), ("ANSWER: A, B", None), ("ANSWER: E", None), ("B", None), ("", None),
    (None, None), ("Answer: B<|im_end|>", 1), ("ANSWER:B", 1), ("ANSWER: AB", None),
])
def test_inspect_choice_parses_the_last_answer_line(text, pred):
    """inspect_ai's parse_answers for one answer: unwrap $X$, **X**, (X); the strict per-line
    "ANSWER: X" first, else anywhere; the last match, upper-cased, must be one letter A-D."""
    got = predictions(make_cache([cache_row(index=0, gold=1, gen_text=text)]),
                      ["inspect_choice"])
    assert got["pred"].to_list() == [pred]
    assert got["correct"].to_list() == [pred == 1]


def test_greedy_em_cuts_at_newline_only_on_plain_prompts():
    rows = [cache_row(index=i, gold=0, gen_text=text, chat=chat)
            for i, (text, chat) in enumerate([("A\nB", False), ("A\nB", True), (" A", True),
                                              ("A", None)])]
    pred = predictions(make_cache(rows), ["greedy_em"]).sort("index")["pred"].to_list()
    assert pred == [0, None, 0, 0]


@pytest.fixture(scope="module")
def tiny_dir(questions, tmp_path_factory) -> Path:
    return make_tiny_model(questions, tmp_path_factory.mktemp("today") / "tiny")


def test_same_input_under_another_flavor_costs_no_forward(questions, tiny_dir, tmp_path,
                                                          monkeypatch):
    """A tokenizer without a template: helm_current's questions are helm's model inputs, so
    after a helm run its job computes nothing (no engine call) and its plan, once it has run,
    counts every question cached."""
    calls: list[int] = []
    real = engine.run_fast
    monkeypatch.setattr(engine, "run_fast",
                        lambda m, reqs, *a, **k: calls.append(len(reqs)) or real(m, reqs, *a, **k))
    prompts = pl.concat([build_prompts(questions, f, subjects=SUBJECTS)
                         for f in ("helm", "helm_current")])
    entry = {"source": "local", "path": str(tiny_dir), "dtype": "float32", "device": "cpu"}
    views = {}
    key = models.model_key(models.fingerprint(entry))
    for flavor in ("helm", "helm_current"):
        if flavor == "helm_current":  # a damaged segment of a third flavor: skipped, left alone
            junk = tmp_path / "store" / key / "original" / SUBJECTS[0] / "junk.parquet"
            junk.parent.mkdir(parents=True)
            junk.write_bytes(b"not parquet")
        stats = cache.JobStats()
        views[flavor] = cache.compute_view(prompts, "tiny", entry, None, flavor, SUBJECTS, 3,
                                           tmp_path / f"{flavor}.parquet", tmp_path / "store",
                                           progress=False, stats=stats)
        assert stats.questions == 6
        assert (stats.computed, stats.reused) == ((6, 0) if flavor == "helm" else (0, 6))
    assert calls == [3, 3]  # helm's two subjects; nothing for helm_current
    cols = [c for c in cache.CACHE_SCHEMA if c not in ("flavor",)]
    assert views["helm"].select(cols).equals(views["helm_current"].select(cols))
    assert junk.read_bytes() == b"not parquet"  # another flavor's damage is its own job's
    store = cache.Store(tmp_path / "store", key, readonly=True)
    assert cache.plan_counts(prompts, store, "helm_current", SUBJECTS, 3, None) == (6, 6)


def test_a_chat_flavor_on_a_model_without_template_stops_or_is_skipped(questions, tiny_dir,
                                                                       tmp_path, monkeypatch):
    """lmeval_chat needs a template: by default the job stops naming flavor and model; with
    chat_without_template: skip (the 2026 study) it writes an empty view and runs nothing."""
    calls: list[int] = []
    monkeypatch.setattr(engine, "run_fast", lambda m, reqs, *a, **k: calls.append(len(reqs)))
    prompts = build_prompts(questions, "lmeval_chat", subjects=SUBJECTS)
    entry = {"source": "local", "path": str(tiny_dir), "dtype": "float32", "device": "cpu"}
    args = (prompts, "tiny", entry, None, "lmeval_chat", SUBJECTS, 2)
    with pytest.raises(ValueError, match="lmeval_chat.*tiny.*has none"):
        cache.compute_view(*args, tmp_path / "stop.parquet", tmp_path / "store", progress=False)
    view = cache.compute_view(*args, tmp_path / "skip.parquet", tmp_path / "store",
                              progress=False, without_template="skip")
    assert view.height == 0 and calls == []
    back = cache.read_shards([tmp_path / "skip.parquet"])
    assert back.height == 0 and predictions(back).height == 0
