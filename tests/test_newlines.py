"""Rows holding "\\r" (college_mathematics dev/val, college_physics val): each flavor reads them
exactly as its reference does, byte for byte.

Expected prompts are built here from the real CSVs with each reference's own reading code
(HELM: text-mode `open` + `csv.reader`; original: `pandas.read_csv`; harness e47e01b: its
dataset script's bytes lines decoded then `csv.reader`) and each reference's own formatting
code, transcribed. harness_current is checked against lm-eval itself in test_lmeval_prompts.py.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from mmlu_flavors.flavors import Q, helm_balanced_sample, universal_newlines
from mmlu_flavors.prompts import build_prompts

CR_SUBJECTS = ["college_mathematics", "college_physics"]


def _csv(mmlu_dir: Path, split: str, subject: str) -> Path:
    return mmlu_dir / split / f"{subject}_{split}.csv"


def _raw_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_the_carriage_return_rows_are_where_we_test_them(mmlu_dir) -> None:
    found = {(split, s, i) for s in CR_SUBJECTS for split in ("dev", "val", "test")
             for i, r in enumerate(_raw_rows(_csv(mmlu_dir, split, s))) if any("\r" in c for c in r)}
    assert found == {("dev", "college_mathematics", 2), ("val", "college_mathematics", 3),
                     ("val", "college_physics", 8), ("val", "college_physics", 10)}


def test_universal_newlines_equals_text_mode_reading(mmlu_dir, tmp_path) -> None:
    for split, subject in [("dev", "college_mathematics"), ("val", "college_mathematics"),
                           ("val", "college_physics")]:
        path = _csv(mmlu_dir, split, subject)
        with open(path, encoding="utf-8") as f:  # newline=None: universal newlines
            text_mode = list(csv.reader(f))
        assert text_mode == [[universal_newlines(c) for c in r] for r in _raw_rows(path)]
    # lone "\r" and "\r\r\n" as well (no MMLU row has them)
    p = tmp_path / "x.csv"
    p.write_bytes(b'"a\rb\r\r\nc\n\rd",x\r\n')
    with open(p, encoding="utf-8") as f:
        assert next(csv.reader(f))[0] == universal_newlines("a\rb\r\r\nc\n\rd") == "a\nb\n\nc\n\nd"


# ------------------------------------------------------------------ HELM cab5d89

def _helm_read(path: Path) -> list[Q]:
    # HELM cab5d89 mmlu_scenario.process_csv: `with open(csv_path) as f: csv.reader(f, ...)`
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=","))
    return [Q(r[0], tuple(r[1:5]), "ABCD".index(r[5]), i) for i, r in enumerate(rows)]


def _helm_block(q: Q, answer: bool) -> str:
    out = "Question: " + q.question + "\n" + "".join(
        f"{L}. {c}\n" for L, c in zip("ABCD", q.choices))
    if answer:
        gold = q.choices[q.answer]
        return out + "Answer: " + "ABCD"[q.choices.index(gold)] + "\n"
    return out + "Answer:"


def test_helm_reads_with_universal_newlines(mmlu_dir, questions) -> None:
    subject = "college_mathematics"
    dev = _helm_read(_csv(mmlu_dir, "dev", subject))
    test = _helm_read(_csv(mmlu_dir, "test", subject))
    order = helm_balanced_sample(dev, 5)  # the sampler's order is golden-tested elsewhere
    instructions = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n"
    shots = [_helm_block(dev[i], True) for i in order]
    got = build_prompts(questions, "helm", subjects=[subject]).sort("index")
    assert got.height == len(test)
    for q, prompt in zip(test, got["prompt"].to_list()):
        want = "\n".join([instructions] + shots + [_helm_block(q, False)])
        assert prompt.encode() == want.encode(), q.index
    assert all("\r" not in p for p in got["prompt"].to_list())
    assert all("2x2 matrix. Which of the following statements must be true?\nI." in p
               for p in got["prompt"].to_list())
    # the balanced sampler groups by the label texts as HELM read them
    labels = {dev[i].choices[dev[i].answer] for i in order}
    assert labels <= {c for q in dev for c in q.choices}


# ------------------------------------------------------------------ original (pandas)

def test_original_keeps_crlf_as_pandas_reads_it(mmlu_dir, questions) -> None:
    pd = pytest.importorskip("pandas")
    subject = "college_mathematics"
    choices = ["A", "B", "C", "D"]

    # hendrycks/test evaluate_hf.py, transcribed
    def format_subject(subject):
        s = ""
        for entry in subject.split("_"):
            s += " " + entry
        return s

    def format_example(df, idx, include_answer=True):
        prompt = df.iloc[idx, 0]
        k = df.shape[1] - 2
        for j in range(k):
            prompt += "\n{}. {}".format(choices[j], df.iloc[idx, j + 1])
        prompt += "\nAnswer:"
        if include_answer:
            prompt += " {}\n\n".format(df.iloc[idx, k + 1])
        return prompt

    def gen_prompt(train_df, subject, k=-1):
        prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(
            format_subject(subject))
        for i in range(train_df.shape[0] if k == -1 else k):
            prompt += format_example(train_df, i)
        return prompt

    dev_df = pd.read_csv(_csv(mmlu_dir, "dev", subject), header=None)[:5]
    # the one documented deviation: a cell "None" stays the text (pandas would make it nan)
    test_df = pd.read_csv(_csv(mmlu_dir, "test", subject), header=None, keep_default_na=False)
    assert not dev_df.isna().any().any()
    got = build_prompts(questions, "original", subjects=[subject]).sort("index")
    assert got.height == test_df.shape[0]
    for i, prompt in enumerate(got["prompt"].to_list()):
        want = gen_prompt(dev_df, subject, 5) + format_example(test_df, i, include_answer=False)
        assert prompt.encode() == want.encode(), i
        assert "must be true?\r\nI." in prompt


# ------------------------------------------------------------------ harness e47e01b

def _e47_read(path: Path) -> list[dict]:
    # hendrycks_test.py (the dataset script e47e01b loads): iter_archive yields binary files;
    # `lines = (line.decode("utf-8") for line in file)`; `reader = csv.reader(lines)`
    with open(path, "rb") as file:
        lines = (line.decode("utf-8") for line in file)
        rows = list(csv.reader(lines))
    return [{"question": r[0], "choices": r[1:5], "answer": r[5]} for r in rows]


def _e47_process(doc: dict) -> dict:
    # e47e01b lm_eval/tasks/hendrycks_test.py GeneralHendrycksTest._process_doc
    keys = ["A", "B", "C", "D"]
    prompt = "Question: " + doc["question"] + "\nChoices:\n"
    prompt += "".join([f"{key}. {choice}\n" for key, choice in zip(keys, doc["choices"])])
    prompt += "Answer:"
    return {"query": prompt, "choices": doc["choices"], "gold": keys.index(doc["answer"])}


@pytest.mark.parametrize("subject", CR_SUBJECTS)
def test_harness_e47e01b_keeps_crlf_of_its_dataset_script(mmlu_dir, questions, subject) -> None:
    val = [_e47_process(d) for d in _e47_read(_csv(mmlu_dir, "val", subject))]
    test = [_e47_process(d) for d in _e47_read(_csv(mmlu_dir, "test", subject))]
    # evaluator: one Random seeded 42 shuffles the docs, then fewshot_context samples k+1
    rnd = random.Random()
    rnd.seed(42)
    docs = list(enumerate(test))
    rnd.shuffle(docs)
    want: dict[int, str] = {}
    for i, doc in docs:
        shots = [x for x in rnd.sample(val, 6) if x != doc][:5]
        labeled = "\n\n".join(x["query"] + " " + x["choices"][x["gold"]] for x in shots) + "\n\n"
        want[i] = labeled + doc["query"]
    got = build_prompts(questions, "harness_e47e01b", subjects=[subject]).sort("index")
    assert got.height == len(test)
    for i, prompt in enumerate(got["prompt"].to_list()):
        assert prompt.encode() == want[i].encode(), i
    assert sum("\r\n" in p for p in got["prompt"].to_list()) > 0
