"""The four MMLU implementations as data plus small functions.

A flavor renders a subject's test questions into prompt parts: a header, a list of
answered shots (each INCLUDING its trailing separator) and the test block, so that
`prompt = header + "".join(shots[:n]) + test_block` for any number n of shots kept.
Shot selection works on a whole subject at once, exactly as the reference seeds it, so
choosing a subset of questions never changes a prompt. Token-level rules (special
tokens, joint or separate continuation encoding, too-long policy) live in tokenize.py.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from itertools import cycle
from typing import Callable, Sequence

from .data import LETTERS


@dataclass(frozen=True)
class Q:
    """One MMLU row: question, four choice texts, gold index, row in its CSV."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    index: int


# --- subject formatting -----------------------------------------------------------------

def subject_original(subject: str) -> str:
    """hendrycks/test `format_subject`: every word prefixed by a space ("  us foreign policy")."""
    return "".join(" " + w for w in subject.split("_"))


def subject_spaced(subject: str) -> str:
    """HELM and today's harness: underscores become single spaces."""
    return subject.replace("_", " ")


# --- shot selection ---------------------------------------------------------------------

def shots_first_k(test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
    """The first k rows of the pool, in file order, for every question."""
    first = list(range(min(k, len(pool))))
    return [first for _ in test]


def helm_balanced_sample(pool: Sequence[Q], k: int, seed: int = 0) -> list[int]:
    """HELM cab5d89 `sample_examples`: label-balanced draw with Python's seeded generator.

    Labels are the text of each row's first correct choice (a choice is correct when its
    text equals the gold choice's text). Returns pool positions in draw order.
    """
    rnd = random.Random(seed)  # == random.seed(seed) on the global generator
    n_left = min(len(pool), k)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(pool):
        by_label[q.choices[q.answer]].append(i)
    counts_to_labels: dict[int, list[str]] = defaultdict(list)
    for label, rows in sorted(by_label.items()):
        counts_to_labels[len(rows)].append(label)
    ordered: list[str] = []
    for count in sorted(counts_to_labels, reverse=True):
        labels = counts_to_labels[count]
        rnd.shuffle(labels)
        ordered.extend(labels)
    picked: list[int] = []
    labels_iter = cycle(ordered)
    while n_left > 0:
        label = next(labels_iter, None)
        if not label:  # HELM stops here, also on an empty-string label
            break
        rows = by_label[label]
        if not rows:
            continue
        picked.append(rows.pop(rnd.randrange(len(rows))))
        n_left -= 1
    return picked  # every pool row has a correct choice: HELM's unlabeled remainder is empty


def shots_helm(test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
    """HELM draws once per subject: the same shots, same order, for every question."""
    picked = helm_balanced_sample(pool, k, seed=0)
    return [picked for _ in test]


def lighteval_balanced_sample(pool: Sequence[Q], k: int, label: Callable[[Q], str],
                              seed: int = 0) -> list[int]:
    """lighteval 0.13 `FewShotSampler._init_fewshot_sampling_balanced` (few_shots_select None):
    HELM's label-balanced draw (global `random.seed(0)`; labels sorted, bucketed by size,
    each bucket shuffled; cycle over labels popping `randrange`), but it draws k + 1 rows
    (one spare in case the evaluated doc is among them) and keeps the first k."""
    if k == 0:
        return []
    rnd = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(pool):
        by_label[label(q)].append(i)
    counts_to_labels: dict[int, list[str]] = defaultdict(list)
    for lab, rows in sorted(by_label.items()):
        counts_to_labels[len(rows)].append(lab)
    ordered: list[str] = []
    for count in sorted(counts_to_labels, reverse=True):
        labels = counts_to_labels[count]
        rnd.shuffle(labels)
        ordered.extend(labels)
    picked: list[int] = []
    n_left = min(len(pool), k + 1)
    labels_iter = cycle(ordered)
    while n_left > 0:
        lab = next(labels_iter, None)
        if not lab:
            break
        rows = by_label[lab]
        if not rows:
            continue
        picked.append(rows.pop(rnd.randrange(len(rows))))
        n_left -= 1
    return picked[:k]  # a dev shot never equals a test doc (different doc ids)


def _lighteval_text_label(q: Q) -> str:
    # mmlu.py: fewshot_sorting_class = gold choice text, or the gold " X" when that is empty
    return q.choices[q.answer] or " " + LETTERS[q.answer]


def shots_lighteval_mmlu(test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
    picked = lighteval_balanced_sample(pool, k, _lighteval_text_label)
    return [picked for _ in test]


def shots_lighteval_mcf(test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
    # MCF template sets no fewshot_sorting_class: the label is the gold continuation " X"
    picked = lighteval_balanced_sample(pool, k, lambda q: " " + LETTERS[q.answer])
    return [picked for _ in test]


def _e47_doc(q: Q) -> tuple:
    # the harness compares processed docs (query, choices, gold) with `!=`
    return (q.question, q.choices, q.answer)


def shots_harness_e47e01b(test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
    """lm-evaluation-harness e47e01b: one `random.Random` seeded 42 per subject shuffles the
    test documents, then for each document in shuffled order samples k+1 validation docs,
    drops any equal to the document itself and keeps the first k."""
    rnd = random.Random()
    rnd.seed(42)
    order = list(range(len(test)))
    rnd.shuffle(order)  # shuffle depends only on the length: indices stand in for docs
    out: list[list[int]] = [[] for _ in test]
    if k == 0:
        return out  # the reference draws nothing without shots
    if len(pool) < k + 1:
        raise ValueError(f"harness_e47e01b needs at least {k + 1} validation rows, got {len(pool)}")
    for pos in order:
        doc = _e47_doc(test[pos])
        drawn = rnd.sample(range(len(pool)), k + 1)  # same draws as sampling the list itself
        out[pos] = [i for i in drawn if _e47_doc(pool[i]) != doc][:k]
    return out


def shuffle_position_e47e01b(n_test: int) -> list[int]:
    """doc_id of each test row: its position after the harness's seed-42 shuffle."""
    rnd = random.Random()
    rnd.seed(42)
    order = list(range(n_test))
    rnd.shuffle(order)
    pos = [0] * n_test
    for doc_id, row in enumerate(order):
        pos[row] = doc_id
    return pos


# --- rendering --------------------------------------------------------------------------

def _lettered(choices: Sequence[str], first: str, sep: str) -> str:
    return "".join(f"{first if i == 0 else sep}{L}. {c}" for i, (L, c) in enumerate(zip(LETTERS, choices)))


def _first_correct_letter(q: Q) -> str:
    gold = q.choices[q.answer]
    return LETTERS[next(i for i, c in enumerate(q.choices) if c == gold)]


@dataclass(frozen=True)
class Flavor:
    """A reference implementation's prompt: header, example template, shots, what it scores."""

    name: str
    shot_split: str                      # "dev" or "val"
    header: Callable[[str], str]         # subject -> header text
    example: Callable[[Q], str]          # unanswered block (ends in "Answer:")
    answered: Callable[[Q], str]         # answered shot incl. its trailing separator
    select: Callable[[Sequence[Q], Sequence[Q], int], list[list[int]]]
    continuations: Callable[[Q], list[str]]
    scorer: str                          # the reference's own reduction
    description: str

    def render(self, subject: str, test: Sequence[Q], pool: Sequence[Q], k: int) -> list[dict]:
        """Prompt parts for every test question of one subject, in test order."""
        header = self.header(subject)
        answered = [self.answered(p) for p in pool]
        rows = []
        for q, shot_rows in zip(test, self.select(test, pool, k)):
            shots = [answered[i] for i in shot_rows]
            block = self.example(q)
            rows.append({
                "subject": subject, "index": q.index, "header": header, "shots": shots,
                "test_block": block, "prompt": header + "".join(shots) + block,
                "shot_rows": [pool[i].index for i in shot_rows],
                "continuations": self.continuations(q),
            })
        return rows


def _original_example(q: Q) -> str:
    return q.question + _lettered(q.choices, "\n", "\n") + "\nAnswer:"


def _helm_example(q: Q) -> str:
    return "Question: " + q.question + "\n" + "".join(
        f"{L}. {c}\n" for L, c in zip(LETTERS, q.choices)) + "Answer:"


def _e47_example(q: Q) -> str:
    return "Question: " + q.question + "\nChoices:\n" + "".join(
        f"{L}. {c}\n" for L, c in zip(LETTERS, q.choices)) + "Answer:"


def _current_example(q: Q) -> str:
    return q.question.strip() + _lettered(q.choices, "\n", "\n") + "\nAnswer:"


def _lighteval_mmlu_example(q: Q) -> str:
    # mmlu.py's query minus its instruction; PromptManager strips it (a no-op here)
    return ("Question: " + q.question + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, q.choices))
            + "\nAnswer:").strip()


def _lighteval_fix(text: str) -> str:
    """capitalize(fix_ending_punct(text)) with lighteval's English literals: rstrip (the
    English end punctuation maps to itself), then upper-case the first character."""
    text = text.rstrip()
    return text[:1].upper() + text[1:]


def _lighteval_mcf_example(q: Q) -> str:
    options = "\n".join(f" {L}. {_lighteval_fix(c)}" for L, c in zip(LETTERS, q.choices))
    return f"Question: {_lighteval_fix(q.question)}\n{options}\nAnswer:"


def lighteval_mcf_keeps(q: Q) -> bool:
    """global_mmlu.py's hf_filter: every option is non-empty after strip."""
    return all(c.strip() for c in q.choices)


FLAVORS: dict[str, Flavor] = {
    "original": Flavor(
        name="original", shot_split="dev",
        header=lambda s: f"The following are multiple choice questions (with answers) about {subject_original(s)}.\n\n",
        example=_original_example,
        answered=lambda q: _original_example(q) + f" {LETTERS[q.answer]}\n\n",
        select=shots_first_k,
        continuations=lambda q: list(LETTERS),
        scorer="letter_argmax",
        description="hendrycks/test PR 13 (evaluate_hf.py): letter logits at the answer position",
    ),
    "helm": Flavor(
        name="helm", shot_split="dev",
        header=lambda s: f"The following are multiple choice questions (with answers) about {subject_spaced(s)}.\n\n",
        example=_helm_example,
        answered=lambda q: _helm_example(q) + f" {_first_correct_letter(q)}\n\n",
        select=shots_helm,
        continuations=lambda q: list(LETTERS),
        scorer="greedy_token",
        description="HELM cab5d89 multiple_choice_joint: one greedy token, stripped, exact match",
    ),
    "harness_e47e01b": Flavor(
        name="harness_e47e01b", shot_split="val",
        header=lambda s: "",
        example=_e47_example,
        answered=lambda q: _e47_example(q) + " " + q.choices[q.answer] + "\n\n",
        select=shots_harness_e47e01b,
        continuations=lambda q: [" " + c for c in q.choices],
        scorer="loglik_acc",
        description="lm-evaluation-harness e47e01b hendrycksTest: log-likelihood of each answer text",
    ),
    "harness_current": Flavor(
        name="harness_current", shot_split="dev",
        header=lambda s: f"The following are multiple choice questions (with answers) about {subject_spaced(s)}.\n\n",
        example=_current_example,
        answered=lambda q: _current_example(q) + f" {LETTERS[q.answer]}\n\n",
        select=shots_first_k,
        continuations=lambda q: [" " + L for L in LETTERS],
        scorer="loglik_letter",
        description="lm-evaluation-harness today (mmlu): log-likelihood of ' A'..' D'",
    ),
    "lighteval_mmlu": Flavor(
        name="lighteval_mmlu", shot_split="dev",
        header=lambda s: f"The following are multiple choice questions (with answers) about {subject_spaced(s)}.\n\n" + "\n\n",
        example=_lighteval_mmlu_example,
        answered=lambda q: _lighteval_mmlu_example(q) + f" {LETTERS[q.answer]}\n\n",
        select=shots_lighteval_mmlu,
        continuations=lambda q: [" " + L for L in LETTERS],
        scorer="greedy_em",
        description="lighteval 0.13 lighteval|mmlu: greedy generation (<= 5 tokens, stop at newline), exact match",
    ),
    "lighteval_mcf": Flavor(
        name="lighteval_mcf", shot_split="dev",
        header=lambda s: "",
        example=_lighteval_mcf_example,
        answered=lambda q: _lighteval_mcf_example(q) + f" {LETTERS[q.answer]}\n\n",
        select=shots_lighteval_mcf,
        continuations=lambda q: [" " + L for L in LETTERS],
        scorer="loglik_letter",
        description="lighteval 0.13 global_mmlu_all_eng_mcf: log-likelihood of ' A'..' D'",
    ),
}


def get_flavor(name: str) -> Flavor:
    """Look up a flavor by name, with a clear error for an unknown one."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise ValueError(f"unknown flavor {name!r}; known: {', '.join(FLAVORS)}") from None
