"""MMLU flavors as data: each flavor is ONE declarative definition.

Built-in definitions live in `flavors.yaml` (this package), user variants in config.yaml
`custom_flavors`; both are validated by `flavor.schema.yaml`. A definition names the reading
rule, header / example / answer templates, separators, shot split and sampler, chat rendering,
special-token rule, continuation encoding, too-long policy, the scored continuation strings,
its scorers with their averaging, a display name and the reference it reproduces. The code
here and in tokenize.py interprets those fields; nothing branches on a flavor's name.

A flavor renders a subject's test questions into prompt parts: a header, a list of
answered shots (each INCLUDING its trailing separator) and the test block, so that
`prompt = header + "".join(shots[:n]) + test_block` for any number n of shots kept.
Shot selection works on a whole subject at once, exactly as the reference seeds it, so
choosing a subset of questions never changes a prompt.

For issue 13's attribution a flavor is a point in `FACTORS` (header; example template; shot
split and sampler; answer delimiter; special tokens; scoring rule; averaging; ...):
`with_factors(a, b, ["header"])` is flavor a with b's header.
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import cycle
from pathlib import Path
from typing import Any

import yaml

from .data import LETTERS

BUILTIN_FILE = Path(__file__).with_name("flavors.yaml")
SCHEMA_FILE = Path(__file__).with_name("flavor.schema.yaml")


class FlavorError(ValueError):
    """A bad flavor definition: the message names the flavor and the key."""


@dataclass(frozen=True)
class Q:
    """One MMLU row: question, four choice texts, gold index, row in its CSV."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    index: int


# --- reading rules ------------------------------------------------------------------------

def universal_newlines(text: str) -> str:
    """Python text-mode reading (`open(path)`, newline=None): every "\r\n" and every lone
    "\r" becomes "\n". Applied per field it equals translating the file before `csv.reader`
    (a CSV field can only hold a carriage return inside quotes)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


READING_RULES: dict[str, Callable[[str], str]] = {
    "raw": lambda text: text,  # the CSV bytes as written ("\r\n" kept)
    "universal_newlines": universal_newlines,
}


def read_as(q: Q, rule: str) -> Q:
    """The row as a reference's reader sees it: `rule` applied to the question and choices."""
    f = READING_RULES[rule]
    return Q(f(q.question), tuple(f(c) for c in q.choices), q.answer, q.index)  # type: ignore[arg-type]


# --- subject formatting -----------------------------------------------------------------

def subject_original(subject: str) -> str:
    """hendrycks/test `format_subject`: every word prefixed by a space ("  us foreign policy")."""
    return "".join(" " + w for w in subject.split("_"))


def subject_spaced(subject: str) -> str:
    """HELM and today's harness: underscores become single spaces."""
    return subject.replace("_", " ")


# --- shot selection ---------------------------------------------------------------------

def shots_first_k(test: Sequence[Q], pool: Sequence[Q], k: int, seed: int = 0) -> list[list[int]]:
    """The first k rows of the pool, in file order, for every question."""
    first = list(range(min(k, len(pool))))
    return [first for _ in test]


def shots_first_k_distinct(test: Sequence[Q], pool: Sequence[Q], k: int,
                           seed: int = 0) -> list[list[int]]:
    """The first k rows of the pool in file order, a row that repeats an earlier row's
    question and choices left out: inspect_evals 0.26 de-duplicates the dev split by
    `create_stable_id(question, choices)` (`filter_duplicate_ids`, first occurrence kept) before
    its 5-shot prompt takes every dev row of the subject (college_physics' dev row 3 repeats row
    0, so that subject gets 4 shots). inspect drops repeats over all subjects at once; on MMLU
    the only repeated dev row is that one, inside its subject."""
    seen: set[tuple] = set()
    first: list[int] = []
    for i, q in enumerate(pool):
        key = (q.question, q.choices)
        if key not in seen and len(first) < k:
            first.append(i)
        seen.add(key)
    return [first for _ in test]


def balanced_draw(pool: Sequence[Q], n: int, label: Callable[[Q], str],
                  seed: int = 0) -> list[int]:
    """HELM cab5d89 `sample_examples` (lighteval copies it): a label-balanced draw of `n`
    rows with Python's seeded generator (`random.seed(seed)`): labels sorted, bucketed by
    size, largest first, each bucket shuffled; cycle over the labels popping `randrange`.
    Returns pool positions in draw order."""
    rnd = random.Random(seed)  # == random.seed(seed) on the global generator
    n_left = min(len(pool), n)
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
    labels_iter = cycle(ordered)
    while n_left > 0:
        lab = next(labels_iter, None)
        if not lab:  # HELM stops here, also on an empty-string label
            break
        rows = by_label[lab]
        if not rows:
            continue
        picked.append(rows.pop(rnd.randrange(len(rows))))
        n_left -= 1
    return picked  # every pool row has a label: HELM's unlabeled remainder is empty


def helm_balanced_sample(pool: Sequence[Q], k: int, seed: int = 0) -> list[int]:
    """HELM: the balanced draw of k rows labelled by the text of each row's first correct
    choice (a choice is correct when its text equals the gold choice's text)."""
    return balanced_draw(pool, k, lambda q: q.choices[q.answer], seed)


def shots_helm(test: Sequence[Q], pool: Sequence[Q], k: int, seed: int = 0) -> list[list[int]]:
    """HELM draws once per subject: the same shots, same order, for every question."""
    picked = helm_balanced_sample(pool, k, seed=seed)
    return [picked for _ in test]


def _e47_doc(q: Q) -> tuple:
    # the harness compares processed docs (query, choices, gold) with `!=`
    return (q.question, q.choices, q.answer)


def shots_harness_e47e01b(test: Sequence[Q], pool: Sequence[Q], k: int,
                          seed: int = 42) -> list[list[int]]:
    """lm-evaluation-harness e47e01b: one `random.Random` seeded 42 per subject shuffles the
    test documents, then for each document in shuffled order samples k+1 validation docs,
    drops any equal to the document itself and keeps the first k."""
    rnd = random.Random()
    rnd.seed(seed)
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


def shuffle_position_e47e01b(n_test: int, seed: int = 42) -> list[int]:
    """doc_id of each test row: its position after the harness's seed-42 shuffle."""
    rnd = random.Random()
    rnd.seed(seed)
    order = list(range(n_test))
    rnd.shuffle(order)
    pos = [0] * n_test
    for doc_id, row in enumerate(order):
        pos[row] = doc_id
    return pos


def lighteval_balanced_sample(pool: Sequence[Q], k: int, label: Callable[[Q], str],
                              seed: int = 0) -> list[int]:
    """lighteval 0.13 `FewShotSampler._init_fewshot_sampling_balanced` (few_shots_select
    None): HELM's label-balanced draw (`random.seed(seed)`; labels sorted, bucketed by size,
    largest first, each bucket shuffled; cycle over the labels popping `randrange`), but it
    draws k + 1 rows (a spare in case the evaluated doc is among them), once per subject, and
    keeps the first k. A shot from `dev` never equals a test doc (their doc ids differ)."""
    return balanced_draw(pool, k + 1, label, seed)[:k] if k else []


def shots_lighteval_balanced(test: Sequence[Q], pool: Sequence[Q], k: int, seed: int = 0,
                             label: Callable[[Q], str] | None = None) -> list[list[int]]:
    """lighteval draws once per subject: the same shots, same order, for every question."""
    picked = lighteval_balanced_sample(pool, k, label or (lambda q: q.choices[q.answer]), seed)
    return [picked for _ in test]


SAMPLERS: dict[str, Callable[..., list[list[int]]]] = {
    "first_k": shots_first_k,
    "first_k_distinct": shots_first_k_distinct,
    "helm_balanced": shots_helm,
    "e47e01b_per_question": shots_harness_e47e01b,
    "lighteval_balanced": shots_lighteval_balanced,
}
LABELED_SAMPLERS: frozenset[str] = frozenset({"lighteval_balanced"})  # take shots.label


# --- templates --------------------------------------------------------------------------

def _first_correct_letter(q: Q) -> str:
    gold = q.choices[q.answer]
    return LETTERS[next(i for i, c in enumerate(q.choices) if c == gold)]


def header_vars(subject: str) -> dict[str, str]:
    """Variables of a header template."""
    return {"subject": subject, "subject_spaced": subject_spaced(subject),
            "subject_words": subject_original(subject)}


def capitalized(text: str) -> str:
    """lighteval's `capitalize(fix_ending_punct(text))` with its English literals: strip the
    right end (English end punctuation maps to itself), upper-case the first character."""
    text = text.rstrip()
    return text[:1].upper() + text[1:]


def example_vars(q: Q) -> dict[str, str]:
    """Variables of example and answer templates."""
    return {"question": q.question, "question_stripped": q.question.strip(),
            **dict(zip(LETTERS, q.choices)), "gold_letter": LETTERS[q.answer],
            "gold_text": q.choices[q.answer], "first_correct_letter": _first_correct_letter(q),
            "question_capitalized": capitalized(q.question),
            **{f"{L}_capitalized": capitalized(c) for L, c in zip(LETTERS, q.choices)}}


TEMPLATE_VARS: dict[str, tuple[str, ...]] = {
    "header": tuple(header_vars("x")),
    "example": tuple(example_vars(Q("q", ("a", "b", "c", "d"), 0, 0))),
    "answer": tuple(example_vars(Q("q", ("a", "b", "c", "d"), 0, 0))),
    "continuations": ("letter", "choice"),
}


def _check_template(flavor: str, key: str, template: str, allowed: Sequence[str]) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise FlavorError(f"flavor {flavor!r}: {key}: bad template {template!r} ({e}); "
                          "write a literal brace as {{ or }}") from None
    for n in names:
        if n not in allowed:
            raise FlavorError(f"flavor {flavor!r}: {key}: unknown variable {{{n}}}; "
                              f"known: {', '.join('{' + a + '}' for a in allowed)}")


# --- inspect_ai's plain conversation -------------------------------------------------------

def role_line(role: str, content: str) -> str:
    """One message as inspect_ai 0.3's Hugging Face provider writes a conversation for a
    tokenizer without a chat template (`HuggingFaceAPI.hf_chat`: f"{role}: {content}\n")."""
    return f"{role}: {content}\n"


def role_content(line: str, role: str) -> str:
    """The content of a `role_line` (its exact inverse)."""
    head = f"{role}: "
    if not (line.startswith(head) and line.endswith("\n")):
        raise ValueError(f"not a {role!r} role line: {line[:40]!r}")
    return line[len(head):-1]


# --- definitions --------------------------------------------------------------------------

@dataclass(frozen=True)
class Implementation:
    """A published implementation in tables: a prompt flavor read by one of its scorers."""

    name: str
    flavor: str
    scorer: str
    averaging: str             # micro | macro
    order: float = float("inf")  # place in tables (ties: registry order)
    blog_column: str | None = None
    color: str | None = None
    marker: str | None = None


@dataclass(frozen=True)
class Flavor:
    """A flavor's resolved definition (`spec`, as in flavors.yaml) and what it renders."""

    name: str
    spec: Mapping[str, Any] = field(repr=False)

    # -- the factors, read from the definition
    @property
    def shot_split(self) -> str:
        return self.spec["shots"]["split"]

    @property
    def reading(self) -> str:
        return self.spec["reading"]

    @property
    def chat(self) -> str:
        return self.spec["chat"]

    @property
    def description(self) -> str:
        return self.spec.get("description") or self.spec["display"]

    @property
    def scorer(self) -> str:
        """The reference's own (main) reduction."""
        return self.spec["scorers"][0]["scorer"]

    def implementations(self) -> list[Implementation]:
        scorers = self.spec["scorers"]
        out = []
        for s in scorers:
            default = self.name if len(scorers) == 1 else f"{self.name} ({s['scorer']})"
            out.append(Implementation(s.get("implementation") or default, self.name,
                                      s["scorer"], s["averaging"],
                                      float(s.get("order", float("inf"))),
                                      s.get("blog_column"), s.get("color"), s.get("marker")))
        return out

    # -- text
    def header(self, subject: str) -> str:
        return self.spec["header"].format_map(header_vars(subject))

    def example(self, q: Q) -> str:
        """The unanswered block (for a test question and, answered, for a shot)."""
        return self.spec["example"].format_map(example_vars(q))

    def answer(self, q: Q) -> str:
        return self.spec["answer"].format_map(example_vars(q))

    def shot_query(self, q: Q) -> str:
        """A shot's unanswered block: `shot_example` where the definition gives one (inspect_evals
        formats its shots apart from the test question), else `example`."""
        return self.spec.get("shot_example", self.spec["example"]).format_map(example_vars(q))

    def answered(self, q: Q) -> str:
        """An answered shot, including its trailing separator."""
        return self.shot_query(q) + self.spec["answer_delimiter"] + self.answer(q) + self.spec["separator"]

    def select(self, test: Sequence[Q], pool: Sequence[Q], k: int) -> list[list[int]]:
        shots = self.spec["shots"]
        if shots["sampler"] in LABELED_SAMPLERS:
            return SAMPLERS[shots["sampler"]](test, pool, k, shots.get("seed", 0),
                                              label=self.shot_label)
        return SAMPLERS[shots["sampler"]](test, pool, k, shots.get("seed", 0))

    def shot_label(self, q: Q) -> str:
        """A pool row's class for a balanced sampler: `shots.label` (an answer template), or
        when that is empty the gold's own continuation (lighteval: `fewshot_sorting_class or
        get_golds()[0]`)."""
        label = self.spec["shots"].get("label", "").format_map(example_vars(q))
        return label or self.continuations(q)[q.answer]

    @property
    def generate(self) -> int:
        """Greedy tokens to generate after the context (0: none)."""
        return int(self.spec.get("generate", 0))

    def _conts(self, key: str, choices: Sequence[str]) -> list[str]:
        t = self.spec["continuations"][key]
        return [t.format(letter=L, choice=c) for L, c in zip(LETTERS, choices)]

    def continuations(self, q: Q) -> list[str]:
        """What this flavor itself scores, per choice (the prompt table's `continuations`)."""
        return self._conts("own", q.choices)

    def cache_continuations(self, choices: Sequence[str]) -> list[str]:
        """The eight strings a cache row scores: the letter family, then the text family."""
        return self._conts("letters", choices) + self._conts("texts", choices)

    # -- choice order (issue 20; choice_order.py)
    @property
    def choice_order(self) -> str:
        """identity (default), rotate_k, reverse or shuffle_<seed>."""
        return self.spec.get("choice_order", "identity")

    def choice_perm(self, subject: str, index: int) -> list[int]:
        """Shown position -> original choice index, for one question of this flavor."""
        from .choice_order import permutation

        return permutation(self.choice_order, subject, index)

    def shown(self, subject: str, q: Q) -> Q:
        """The question with its choices in this flavor's order (the gold follows its text)."""
        if self.choice_order == "identity":
            return q
        from .choice_order import apply

        choices, gold = apply(self.choice_perm(subject, q.index), q.choices, q.answer)
        return Q(q.question, tuple(choices), gold, q.index)  # type: ignore[arg-type]

    def render(self, subject: str, test: Sequence[Q], pool: Sequence[Q], k: int) -> list[dict]:
        """Prompt parts for every test question of one subject, in test order (each test
        question's choices in `choice_order`; shots too when `choice_order_shots`)."""
        header = self.header(subject)
        select = self.select(test, pool, k)  # shots are drawn on the rows as written
        if self.spec.get("choice_order_shots", False):
            pool = [self.shown(subject + ":shot", p) for p in pool]
        test = [self.shown(subject, q) for q in test]
        queries = [self.shot_query(p) for p in pool]
        answers = [self.answer(p) for p in pool]
        answered = [self.answered(p) for p in pool]
        example = self.example
        if self.chat == "inspect_auto":  # the plain text is the conversation as role lines
            header = role_line("system", header) if k > 0 else ""
            answered = [role_line("user", qq) + role_line("assistant", a)
                        for qq, a in zip(queries, answers)]
            example = lambda q: role_line("user", self.example(q))  # noqa: E731
        rows = []
        for q, shot_rows in zip(test, select):
            shots = [answered[i] for i in shot_rows]
            block = example(q)
            rows.append({
                "subject": subject, "index": q.index, "header": header, "shots": shots,
                "test_block": block, "prompt": header + "".join(shots) + block,
                "shot_rows": [pool[i].index for i in shot_rows],
                "shot_queries": [queries[i] for i in shot_rows],
                "shot_answers": [answers[i] for i in shot_rows],
                "continuations": self.continuations(q),
            })
            if self.choice_order != "identity":
                rows[-1].update(gold=q.answer, choices=list(q.choices),
                                choice_perm=self.choice_perm(subject, q.index))
        return rows


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def _schema_errors(defn: Mapping[str, Any], which: str) -> list[str]:
    """Schema errors, the most specific first ("path.to.key: message")."""
    from jsonschema.exceptions import best_match

    v = _validator()
    sub = {**v.schema, "$ref": f"#/$defs/{which}"}
    errs = list(type(v)(sub).iter_errors(defn))
    # a key that fails its own schema is also reported as "unevaluated": keep the real error
    real = [e for e in errs if e.validator != "unevaluatedProperties"] or errs
    ordered = ([best_match(real)] + [e for e in real if e is not best_match(real)]) if real else []
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in ordered]


def validate_definition(name: str, defn: Mapping[str, Any]) -> None:
    """Check a resolved definition against the schema and its templates' variables."""
    errs = _schema_errors(defn, "flavor")
    if errs:
        raise FlavorError(f"flavor {name!r}: {errs[0]}"
                          + (f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""))
    for key in ("header", "example", "answer"):
        _check_template(name, key, defn[key], TEMPLATE_VARS[key])
    if "shot_example" in defn:
        _check_template(name, "shot_example", defn["shot_example"], TEMPLATE_VARS["example"])
    if "label" in defn["shots"]:
        if defn["shots"]["sampler"] not in LABELED_SAMPLERS:
            raise FlavorError(f"flavor {name!r}: shots.label: only used by "
                              f"{', '.join(sorted(LABELED_SAMPLERS))}")
        _check_template(name, "shots.label", defn["shots"]["label"], TEMPLATE_VARS["answer"])
    for key, t in defn["continuations"].items():
        _check_template(name, f"continuations.{key}", t, TEMPLATE_VARS["continuations"])
    if defn["chat"] not in ("none", "helm_user_auto") and defn["too_long"]["then"] == "cut_right":
        raise FlavorError(f"flavor {name!r}: too_long.then: cut_right cannot cut a chat-rendered "
                          "prompt; use left_truncate or none")
    seen = [s["scorer"] for s in defn["scorers"]]
    if len(set(seen)) != len(seen):
        raise FlavorError(f"flavor {name!r}: scorers: a scorer is listed twice ({seen})")


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of `over` replace those of `base`; mappings merge key by key; lists are replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_mappings(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def derive(name: str, custom: Mapping[str, Any],
           known: Mapping[str, Flavor] | None = None) -> dict[str, Any]:
    """The resolved definition of a custom flavor: its base's, with the given keys replaced.

    Scorers inherited from the base lose their table names (and blog column, colour, marker)
    so the variant gets its own rows (`name`, or `name (scorer)` with several scorers).
    """
    errs = _schema_errors(custom, "custom")
    if errs:
        raise FlavorError(f"custom flavor {name!r}: {errs[0]}")
    known = FLAVORS if known is None else known
    base = custom["base"]
    if base not in known:
        raise FlavorError(f"custom flavor {name!r}: base {base!r} is not a flavor "
                          f"(known: {', '.join(known)})")
    over = {k: v for k, v in custom.items() if k != "base"}
    defn = merge_mappings(known[base].spec, over)
    if "scorers" not in over:
        defn["scorers"] = [{"scorer": s["scorer"], "averaging": s["averaging"]}
                           for s in defn["scorers"]]
    if "display" not in over:
        defn["display"] = name
    if "description" not in over:
        defn["description"] = f"{name}: {base} with {', '.join(sorted(over)) or 'nothing'} changed"
    defn["derived_from"] = base
    return defn


def _make(name: str, defn: Mapping[str, Any]) -> Flavor:
    validate_definition(name, defn)
    return Flavor(name, copy.deepcopy(dict(defn)))


def load_builtin(path: Path = BUILTIN_FILE) -> dict[str, Flavor]:
    """The built-in flavors of flavors.yaml, validated, in file order."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise FlavorError(f"{path}: expected a mapping of flavor name -> definition")
    return {name: _make(name, defn) for name, defn in data.items()}


BUILTIN: dict[str, Flavor] = load_builtin()
FLAVORS: dict[str, Flavor] = dict(BUILTIN)  # the registry: built-ins, then registered customs


def register(name: str, definition: Mapping[str, Any]) -> Flavor:
    """Add a flavor to the registry: a custom variant (`base:` ...) or a full definition.

    Re-registering the same definition is a no-op; a built-in name or a different
    definition under a registered name is an error.
    """
    if not isinstance(definition, Mapping):
        raise FlavorError(f"custom flavor {name!r}: expected a mapping, got {type(definition).__name__}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or len(name) > 64:
        raise FlavorError(f"flavor name {name!r}: use lower-case letters, digits and _ "
                          "(it becomes a path component)")
    defn = derive(name, definition) if "base" in definition else dict(definition)
    fl = _make(name, defn)
    if name in FLAVORS:
        if FLAVORS[name].spec == fl.spec:
            return FLAVORS[name]
        what = "a built-in flavor" if name in BUILTIN else "already registered differently"
        raise FlavorError(f"flavor {name!r}: {what}; choose another name")
    clash = {i.name for i in fl.implementations()} & {i.name for f in FLAVORS.values()
                                                       for i in f.implementations()}
    if clash:
        raise FlavorError(f"flavor {name!r}: implementation name(s) {sorted(clash)} already "
                          "used; set scorers[].implementation")
    FLAVORS[name] = fl
    return fl


def register_all(custom: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """Register config.yaml `custom_flavors` (bases may be earlier customs); returns names."""
    names = []
    for name, defn in (custom or {}).items():
        register(name, defn)
        names.append(name)
    return names


def definitions_json(names: Sequence[str] | None = None) -> str:
    """Resolved definitions of registered non-built-in flavors, as JSON (for the CLI)."""
    chosen = [n for n in (names or FLAVORS) if n in FLAVORS and n not in BUILTIN]
    return json.dumps({n: FLAVORS[n].spec for n in chosen}, sort_keys=True)


def get_flavor(name: str) -> Flavor:
    """Look up a flavor by name, with a clear error for an unknown one."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise ValueError(f"unknown flavor {name!r}; known: {', '.join(FLAVORS)}") from None


def implementations(flavors: Sequence[str] | None = None) -> dict[str, Implementation]:
    """Table name -> implementation, over the registered flavors, in table order (`order`,
    then registry order)."""
    names = list(FLAVORS) if flavors is None else list(flavors)
    every = [i for n in names for i in get_flavor(n).implementations()]
    return {i.name: i for _, i in sorted(enumerate(every), key=lambda t: (t[1].order, t[0]))}


# --- factor space (issue 13) ----------------------------------------------------------------

# factor -> the definition keys it consists of. Prompt factors change the prompt or token ids
# (a new variant costs one forward pass per question); scoring factors cost nothing.
FACTORS: dict[str, tuple[str, ...]] = {
    "reading": ("reading",),
    "header": ("header",),
    "example": ("example", "shot_example", "answer", "separator"),
    "answer_delimiter": ("answer_delimiter",),
    "shots": ("shots",),
    "chat": ("chat",),
    "special_tokens": ("special_tokens",),
    "encoding": ("encoding",),
    "too_long": ("too_long",),
    "continuations": ("continuations",),
    "scoring": ("scorer",),
    "averaging": ("averaging",),
}
SCORING_FACTORS: frozenset[str] = frozenset({"scoring", "averaging"})


def with_factors(a: str | Mapping[str, Any], b: str | Mapping[str, Any],
                 factors: Sequence[str]) -> dict[str, Any]:
    """Definition `a` with the given factors taken from `b` (names or resolved definitions).

    Scoring factors act on the first (main) scorer. The result has no table names; register
    it under a new name to build its prompts and score it."""
    da = copy.deepcopy(dict(get_flavor(a).spec if isinstance(a, str) else a))
    db = get_flavor(b).spec if isinstance(b, str) else b
    for f in factors:
        if f not in FACTORS:
            raise FlavorError(f"unknown factor {f!r}; known: {', '.join(FACTORS)}")
        if f in SCORING_FACTORS:
            da["scorers"] = [dict(da["scorers"][0])]
            for key in FACTORS[f]:
                da["scorers"][0][key] = db["scorers"][0][key]
        else:
            for key in FACTORS[f]:
                if key in db:
                    da[key] = copy.deepcopy(db[key])
                else:  # an optional key (shot_example) b does not set
                    da.pop(key, None)
    da["scorers"] = [{"scorer": s["scorer"], "averaging": s["averaging"]} for s in da["scorers"]]
    da.pop("derived_from", None)
    da["display"] = f"{da['display']} with {b if isinstance(b, str) else 'b'}'s {', '.join(factors)}"
    return da


def prompt_spec(defn: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a definition that determines prompts and token ids (not the scoring):
    two flavors with equal prompt specs share one cache."""
    out = {k: v for k, v in defn.items()
           if k not in ("scorers", "display", "description", "reference", "derived_from")}
    if out.get("choice_order") == "identity":  # the default, written or not
        del out["choice_order"]
    if not out.get("choice_order_shots", True):
        del out["choice_order_shots"]
    return out
