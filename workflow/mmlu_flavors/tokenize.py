"""Each flavor's token rule: the exact id sequences its reference code feeds the model.

A prompt row becomes a `Request`: the context ids (after the flavor's too-long policy) and
eight scored continuations (the definition's letter family, " A".." D" for the four plain
flavors, then its text family, " " + each choice text), encoded the way that flavor's
reference encodes continuations. Every flavor's cache holds both families, so any scorer can
be applied to any prompt flavor. The rule is read from the flavor's definition
(flavors.yaml: `chat`, `special_tokens`, `encoding`, `too_long`, `continuations`):

| flavor | special tokens | continuation encoding | too long |
|---|---|---|---|
| original | default (BOS if the tokenizer adds one) | literal: context exactly `tokenizer(prompt)` | drop last shot while > 2048 tokens |
| helm | default | literal | drop last shot while tokens(no special) + 1 > max length, then cut right |
| harness_e47e01b | none | separate | left-truncate (ctx + cont)[-(L+1):][:-1] |
| harness_current | lmeval: default, as lm-eval 0.4.13 (BOS where the tokenizer adds one) | joint (trailing context whitespace moves into the continuation) | left-truncate |
| lighteval_mmlu | default | literal; generates 5 greedy tokens | none |
| lighteval_mcf | default on the context (a trailing EOS dropped), none on continuations | pairwise (trailing context whitespace moves into the continuation) | left-truncate keeping the last token: (ctx + cont)[-L:] |
| helm_current | default, on the chat-rendered text when the tokenizer has a template | literal | as helm, on the plain text, then wrapped as one user message |
| lighteval_current | default, on the chat-rendered text when the tokenizer has a template | literal; generates 5 greedy tokens | none |
| inspect_mmlu | default, on the chat-rendered text (or its `role: content` lines) | literal; generates 16 greedy tokens | none |

`helm_current`, `lighteval_current` and `inspect_mmlu` depend on the tokenizer
(`AUTO_CHAT_MODES`): the chat template when it has one, their plain text otherwise (`helm`,
`lighteval_mmlu` exactly; inspect_ai's `role: content` lines, the prompt row's text);
`rendering` says which, `Tokenized.chat` records it per question.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .flavors import LETTERS, Flavor, get_flavor, role_content, role_line
from .prompts import assemble
from .request import Request  # noqa: F401 (re-exported: tokenize.Request)

ORIGINAL_MAX_TOKENS = 2048  # hard-coded in hendrycks/test evaluate_hf.py
NO_LIMIT = 1 << 40

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokenized:
    """A request plus what the too-long policy did to the prompt."""

    request: Request
    n_shots: int
    truncated: bool
    prompt: str
    chat: bool = False  # rendered through the tokenizer's chat template

    @property
    def prompt_sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


def encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    """Token ids of `text`, with or without the tokenizer's default special tokens."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def letter_ids(tokenizer: Any) -> list[int | None]:
    """hendrycks/test's candidates: `tokenizer(L).input_ids[-1]` (letter alone, default special
    tokens); None where a letter encodes to nothing."""
    out: list[int | None] = []
    for L in LETTERS:
        ids = encode(tokenizer, L, True)
        out.append(ids[-1] if ids else None)
    return out


def harness_current_special(tokenizer: Any, context: str) -> bool:
    """lm-eval 0.4.13 `tok_encode`: the tokenizer's default special tokens (BOS where the
    tokenizer adds one, e.g. Gemma, LLaMA; none for SmolLM2), except when the text already
    starts with the decoded prefix token (BOS, else EOS)."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is not None and context.startswith(tokenizer.decode([prefix])):
        return False
    return True


def encode_pair_joint(tokenizer: Any, context: str, continuation: str,
                      special: bool) -> tuple[list[int], list[int]]:
    """lm-eval `_encode_pair`: trailing context whitespace moves into the continuation;
    whole = enc(context + continuation); continuation ids = whole[len(enc(context)):]."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation, special)
    ctx = encode(tokenizer, context, special)
    return ctx, whole[len(ctx):]


def scored_strings(choices: list[str]) -> list[str]:
    """The eight continuations of the four plain flavors: " A".." D", then " " + each text."""
    return [" " + L for L in LETTERS] + [" " + c for c in choices]


class ChatTemplateError(ValueError):
    """A chat flavor on a tokenizer without a chat template."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


# chat modes that render through the template when the tokenizer has one and fall back to the
# plain text otherwise (the tool's own default: HELM 0.5.16's HuggingFaceClient, lighteval 0.13's
# TransformersModel); the other non-"none" modes need a template
AUTO_CHAT_MODES = frozenset({"helm_user_auto", "lighteval_auto", "inspect_auto"})


def chat_required(fl: Flavor) -> bool:
    """True when the flavor cannot run without a chat template."""
    return fl.chat != "none" and fl.chat not in AUTO_CHAT_MODES


def chat_used(fl: Flavor, tokenizer: Any) -> bool:
    """Whether this flavor renders through this tokenizer's chat template."""
    if fl.chat == "none":
        return False
    if fl.chat in AUTO_CHAT_MODES:
        return has_chat_template(tokenizer)
    return True


def rendering(fl: Flavor, tokenizer: Any) -> str:
    """How this flavor's prompts reach this model, in words (logged per model and flavor)."""
    if not chat_used(fl, tokenizer):
        return ("plain text (the tokenizer has no chat template)"
                if fl.chat in AUTO_CHAT_MODES else "plain text")
    return f"chat template ({fl.chat})"


def chat_messages(row: dict, n_shots: int, mode: str) -> list[dict[str, str]]:
    """lm-eval 0.4.13 `fewshot_context` messages: system = the header (description) when
    non-empty; multiturn: one user (example) / assistant (answer) turn per shot, then the test
    example; singleturn: one user message with the plain shots and the test example."""
    msgs = [{"role": "system", "content": row["header"]}] if row["header"] else []
    if mode == "multiturn":
        for q, a in zip(row["shot_queries"][:n_shots], row["shot_answers"][:n_shots]):
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": row["test_block"]})
    else:
        msgs.append({"role": "user",
                     "content": "".join(row["shots"][:n_shots]) + row["test_block"]})
    return msgs


def lighteval_messages(row: dict, n_shots: int, fl: Flavor) -> list[dict[str, str]]:
    """lighteval 0.13 `PromptManager._prepare_chat_template` (no `system_prompt`: the template's
    own default system message, if any, applies): the instruction is prepended to the first
    user turn (to the test query when there are no shots); each shot is a user turn (its query,
    stripped) and an assistant turn with the gold continuation as scored, leading space kept
    (`get_golds()[0]`, e.g. " A"). The instruction is the header without the "\n\n" that
    `_prepare_plain_text` joins its parts with (the plain header holds both)."""
    instruction = row["header"].removesuffix(fl.spec["separator"])
    delim = fl.spec["answer_delimiter"]
    msgs: list[dict[str, str]] = []
    for i, (q, a) in enumerate(zip(row["shot_queries"][:n_shots], row["shot_answers"][:n_shots])):
        msgs += [{"role": "user", "content": (instruction if i == 0 else "") + q.strip()},
                 {"role": "assistant", "content": delim + a}]
    msgs.append({"role": "user",
                 "content": ("" if msgs else instruction) + row["test_block"].strip()})
    return msgs


def inspect_messages(row: dict, n_shots: int) -> list[dict[str, str]]:
    """inspect_evals 0.26 `mmlu_5_shot`'s conversation (`record_to_sample_mmlu_5_shot`, then
    the `multiple_choice` solver's template on the last user message): system = the header
    ("The following are multiple choice questions about <subject>.") when there are shots, each
    shot a user turn (its `shot_example`, letters "(a)".."(d)") and an assistant turn
    ("Answer: <letter>"), then the test example as a user turn; `mmlu_0_shot` (no shots): the
    test example alone. Read back from the prompt row's role lines (`flavors.role_content`)."""
    msgs = ([{"role": "system", "content": role_content(row["header"], "system")}]
            if n_shots > 0 and row["header"] else [])
    for q, a in zip(row["shot_queries"][:n_shots], row["shot_answers"][:n_shots]):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": role_content(row["test_block"], "user")})
    return msgs


def inspect_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """inspect_ai 0.3.285 `HuggingFaceAPI._apply_chat_template`: the tokenizer's template with a
    generation prompt, `tools=None` and `enable_thinking=None` passed as template variables;
    without a template its plain form, one "role: content" line per message."""
    if not has_chat_template(tokenizer):
        return "".join(role_line(m["role"], m["content"]) for m in messages)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         tools=None, enable_thinking=None)


def apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`,
    exactly as HELM 0.5.16's HuggingFaceClient.get_prompt and lighteval 0.13 call it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_chat(tokenizer: Any, messages: list[dict[str, str]], flavor: str = "") -> str:
    """lm-eval HFLM.apply_chat_template: the tokenizer's template with a generation prompt;
    a template that rejects the system role is retried without it."""
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            f"flavor {flavor!r} renders prompts with the tokenizer's chat template, but "
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has none (a base model); "
            "leave this flavor out for this model")
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True,
                                             continue_final_message=False)
    except jinja2.exceptions.TemplateError:
        rest = [m for m in messages if m["role"] != "system"]
        return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True,
                                             continue_final_message=False)


def _prompt_at(row: dict, fl: Flavor, tokenizer: Any) -> Callable[[int], str]:
    """The prompt text with the first n shots, as this flavor renders it for the too-long
    policy (helm_user_auto counts the plain text: HELM fits the prompt before its client wraps
    it)."""
    if not chat_used(fl, tokenizer) or fl.chat == "helm_user_auto":
        return lambda n: assemble(row["header"], row["shots"], row["test_block"], n)
    if fl.chat == "lighteval_auto":
        return lambda n: apply_template(tokenizer, lighteval_messages(row, n, fl))
    if fl.chat == "inspect_auto":
        return lambda n: inspect_chat(tokenizer, inspect_messages(row, n))
    return lambda n: render_chat(tokenizer, chat_messages(row, n, fl.chat), fl.name)


def _wrap(prompt: str, fl: Flavor, tokenizer: Any) -> str:
    """HELM 0.5.16 HuggingFaceClient.get_prompt: the fitted plain prompt as one user message."""
    if fl.chat == "helm_user_auto" and chat_used(fl, tokenizer):
        return apply_template(tokenizer, [{"role": "user", "content": prompt}])
    return prompt


def _special(rule: str, tokenizer: Any, text: str) -> bool:
    if rule == "lmeval":
        return harness_current_special(tokenizer, text)
    return rule == "default"


def tokenize_row(row: dict, tokenizer: Any, max_length: int,
                 flavor: Flavor | None = None) -> Tokenized:
    """Apply the row's flavor token rule (its definition's `chat`, `special_tokens`,
    `too_long`, `encoding`, `continuations`) with this tokenizer."""
    fl = flavor or get_flavor(row["flavor"])
    spec = fl.spec
    conts = fl.cache_continuations(list(row["choices"]))
    prompt_at = _prompt_at(row, fl, tokenizer)
    n = len(row["shots"])
    chat = chat_used(fl, tokenizer)
    prompt = row["prompt"] if not chat or fl.chat == "helm_user_auto" else prompt_at(n)
    truncated = False
    drop = spec["too_long"]["drop_shots"]
    if drop is not None:
        limit = max_length if drop["max_tokens"] == "model" else int(drop["max_tokens"])
        count_special, reserve = drop.get("special_tokens", True), drop.get("reserve", 0)

        def fits(p: str) -> bool:
            return len(encode(tokenizer, p, count_special)) + reserve <= limit

        while n > 0 and not fits(prompt):
            n -= 1
            prompt = prompt_at(n)
        truncated = n < len(row["shots"])
        if spec["too_long"]["then"] == "cut_right":
            ids = encode(tokenizer, prompt, count_special)
            if len(ids) + reserve > limit:  # no shots left: HELM cuts the text from the right
                prompt = tokenizer.decode(ids[: limit - reserve])
                truncated = True
    prompt = _wrap(prompt, fl, tokenizer)
    then = spec["too_long"]["then"]
    feed_limit = {"left_truncate": max_length,
                  "left_truncate_keep_last": max_length - 1}.get(then, NO_LIMIT)
    special = _special(spec["special_tokens"], tokenizer, prompt)
    encoding = spec["encoding"]
    if encoding == "literal":
        t = _literal(tokenizer, prompt, conts, special, feed_limit, n, truncated)
    elif encoding == "separate":
        ctx = encode(tokenizer, prompt, special) or [tokenizer.eos_token_id]
        cont_ids = [encode(tokenizer, c, False) for c in conts]
        t = _finish(ctx, cont_ids, feed_limit, n, truncated, prompt)
    elif encoding == "pairwise":
        t = _pairwise(tokenizer, prompt, conts, special, feed_limit, n, truncated)
    else:
        t = _joint(tokenizer, prompt, conts, special, feed_limit, n, truncated)
    if fl.generate:
        t = replace(t, request=replace(t.request, generate=fl.generate))
    return replace(t, chat=chat)


def _pairwise(tokenizer: Any, prompt: str, conts: list[str], special: bool, max_length: int,
              n_shots: int, truncated: bool) -> Tokenized:
    """lighteval 0.13 `tok_encode_pair(..., pairwise=True)`, which `TransformersModel` always
    uses when scoring: trailing context whitespace moves into each continuation; context =
    tokenizer(context) with the special-token rule, minus a trailing EOS; continuation =
    tokenizer(continuation) without special tokens."""
    n_spaces = len(prompt) - len(prompt.rstrip())
    context = prompt[:len(prompt) - n_spaces]
    ctx = encode(tokenizer, context, special)
    if ctx and ctx[-1] == tokenizer.eos_token_id:
        ctx = ctx[:-1]
    cont_ids = [encode(tokenizer, prompt[len(context):] + c, False) for c in conts]
    return _finish(ctx, cont_ids, max_length, n_shots, truncated, prompt)


def _literal(tokenizer: Any, prompt: str, conts: list[str], special: bool, max_length: int,
             n_shots: int, truncated: bool) -> Tokenized:
    """Context exactly as `tokenizer(prompt)` (default special tokens), as original and HELM
    feed it; continuations are the extra ids of `tokenizer(prompt + continuation)`."""
    ctx = encode(tokenizer, prompt, special)
    cont_ids = [encode(tokenizer, prompt + c, special)[len(ctx):] for c in conts]
    return _finish(ctx, cont_ids, max_length, n_shots, truncated, prompt)


def _joint(tokenizer: Any, prompt: str, conts: list[str], special: bool, max_length: int,
           n_shots: int, truncated: bool) -> Tokenized:
    ctx: list[int] = []
    cont_ids = []
    for c in conts:
        ctx, ids = encode_pair_joint(tokenizer, prompt, c, special)
        cont_ids.append(ids)
    if not ctx:  # lm-eval scores an empty context after its prefix token
        bos = getattr(tokenizer, "bos_token_id", None)
        ctx = [bos if bos is not None else tokenizer.eos_token_id]
    return _finish(ctx, cont_ids, max_length, n_shots, truncated, prompt)


def _finish(ctx: list[int], cont_ids: list[list[int]], max_length: int, n_shots: int,
            truncated: bool, prompt: str) -> Tokenized:
    longest = max(len(c) for c in cont_ids)
    truncated = truncated or len(ctx) + longest > max_length + 1
    return Tokenized(Request(ctx, cont_ids, max_length), n_shots, truncated, prompt)


# ------------------------------------------------------------ many rows at once (exact, fast)
#
# `tokenize_rows` gives exactly `[tokenize_row(r, ...) for r in rows]` with far fewer
# encodings. The continuation rules "literal" and "joint" both take, for a text P and a
# continuation c, enc(P + c)[len(enc(P)):]. Encoding P + c for every continuation repeats
# the whole prompt 8 times; instead P is encoded once (with offsets) and only its last line
# is re-encoded with each continuation: with k the character after P's last newline and m
# the first token of enc(P) that starts at or after k,
#     enc(P + c) == enc(P)[:m] + enc(P[k:] + c, no special tokens)
# holds whenever the tokenizer splits nothing across k (a pre-tokenizer boundary, no merge
# across the newline, no special token appended at the end). Each question is checked
# where it is cheap (no token of enc(P) straddles k; enc(P[k:]) == enc(P)[m:]) and, on a
# sample (the first question of every subject and every `verify_every`-th), against the full
# encodings; a question that fails either check, and every question of a subject whose sample
# failed, is encoded in full instead. `FastStats` counts both.

VERIFY_EVERY = 64
_END = operator.itemgetter(1)  # an offset's end


@dataclass
class FastStats:
    """What `tokenize_rows` did: questions, splices used, checks and fallbacks."""

    questions: int = 0
    spliced: int = 0  # questions whose continuations came from the boundary re-encoding
    full: int = 0  # questions encoded in full (no usable boundary, failed check, fallback)
    verified: int = 0  # spliced questions also checked against the full encoding
    verify_failures: int = 0  # ... that differed (their subject then runs in full)
    slow_rows: int = 0  # rows through tokenize_row (too long, chat, slow tokenizer)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _batch(tokenizer: Any, texts: list[str], special: bool, offsets: bool = False
           ) -> tuple[list[list[int]], list[list[tuple[int, int]]] | None]:
    """`tokenizer(texts)`: the fast tokenizer's parallel batch encoding (Rust threads), each
    distinct text encoded once (the same last line with the same continuation recurs across
    a subject's questions)."""
    if not texts:
        return [], [] if offsets else None
    uniq = list(dict.fromkeys(texts))
    if len(uniq) < len(texts):
        u_ids, u_offs = _batch(tokenizer, uniq, special, offsets)
        at = {t: j for j, t in enumerate(uniq)}
        where = [at[t] for t in texts]
        return ([list(u_ids[j]) for j in where],
                [list(u_offs[j]) for j in where] if u_offs is not None else None)
    enc = tokenizer(texts, add_special_tokens=special, return_offsets_mapping=offsets)
    ids = [list(x) for x in enc["input_ids"]]
    return ids, ([list(map(tuple, o)) for o in enc["offset_mapping"]] if offsets else None)


def _no_splice(tokenizer: Any) -> bool:
    """Whether no splice can be exact: special tokens added at the end, or a text encoded
    alone differs from the same text after a newline (e.g. a prefix "▁" on the first word)."""
    probe = "Answer: x"
    with_, without = encode(tokenizer, probe, True), encode(tokenizer, probe, False)
    if not without or with_[len(with_) - len(without):] != without:
        return True
    tail = "What is it?\nAnswer:"
    whole = encode(tokenizer, "Answer: B\n\n" + tail, False)
    alone = encode(tokenizer, tail, False)
    return whole[len(whole) - len(alone):] != alone


def _extensions(tokenizer: Any, texts: list[str], heads: list[str], specials: list[bool],
                conts: list[list[str]], subjects: list[str], verify_every: int,
                stats: FastStats) -> tuple[list[list[int]], list[list[list[int]]]]:
    """For each i: enc(texts[i]) and [enc(texts[i] + c)[len(enc(texts[i])):] for c in
    conts[i]], with special tokens as specials[i]; exact (see the section comment)."""
    n = len(texts)
    ctx, offs = _contexts(tokenizer, texts, heads, specials, verify_every, stats)
    no_splice = _no_splice(tokenizer)
    split: list[tuple[int, int] | None] = [None] * n  # (char k, token m)
    for i in range(n):
        k = texts[i].rfind("\n") + 1
        if no_splice or k == 0:
            continue
        o = offs[i]
        m = next((t for t, (s, e) in enumerate(o) if s >= k and e > s), len(o))
        if max(map(_END, o[:m]), default=0) <= k:  # no token before m ends after k
            split[i] = (k, m)
    # the tail of each candidate, alone and with each continuation, in one batch
    cand = [i for i in range(n) if split[i] is not None]
    tails = [texts[i][split[i][0]:] for i in cand]
    flat = [t + c for t, i in zip(tails, cand) for c in conts[i]]
    tail_ids, _ = _batch(tokenizer, tails + flat, False)
    alone, with_c = tail_ids[:len(tails)], tail_ids[len(tails):]
    out: list[list[list[int]] | None] = [None] * n
    at = 0
    for t, i in enumerate(cand):
        k, m = split[i]
        got = with_c[at:at + len(conts[i])]
        at += len(conts[i])
        if alone[t] == ctx[i][m:]:
            keep = len(ctx[i]) - m
            out[i] = [g[keep:] for g in got]
    # the sample: the first question of each subject and every verify_every-th, in full
    seen: set[str] = set()
    sample = []
    for i in range(n):
        if out[i] is not None and (subjects[i] not in seen or i % max(verify_every, 1) == 0):
            sample.append(i)
            seen.add(subjects[i])
    full = _full(tokenizer, texts, specials, conts, ctx, sample)
    bad_subjects = set()
    for i in sample:
        stats.verified += 1
        if full[i] != out[i]:
            stats.verify_failures += 1
            bad_subjects.add(subjects[i])
            log.warning("tokenize: the boundary re-encoding differs from the full encoding "
                        "(subject %s, row %d): its subject is encoded in full", subjects[i], i)
        out[i] = full[i]
    rest = [i for i in range(n) if i not in full and (out[i] is None
                                                       or subjects[i] in bad_subjects)]
    full.update(_full(tokenizer, texts, specials, conts, ctx, rest))
    for i in rest:
        out[i] = full[i]
    n_full = len(rest) + sum(subjects[i] in bad_subjects for i in sample)
    stats.full += n_full
    stats.spliced += n - n_full
    return ctx, out  # type: ignore[return-value]


def _contexts(tokenizer: Any, texts: list[str], heads: list[str], specials: list[bool],
              verify_every: int, stats: FastStats
              ) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """enc(texts[i]) with offsets, exactly. A subject's questions share their head (header and
    shots, heads[i] a prefix of texts[i]): each distinct head is encoded once, and each text
    as enc(head)[:m] + enc(text[k:], no special tokens), k the start of the head's last
    non-blank line, m its first token (the same splice as for continuations, checked the
    same way: no token straddles k; on a sample -- the first text of each head and every
    `verify_every`-th -- against the full encoding, a head whose sample differs is encoded in
    full for all its texts)."""
    n = len(texts)
    uses: dict[str, int] = {}
    for h in heads:
        uses[h] = uses.get(h, 0) + 1
    heads = [h if uses[h] > 1 else "" for h in heads]  # a head of its own: encode in full
    ids: list[Any] = [None] * n
    offs: list[Any] = [None] * n
    split: dict[tuple[str, bool], tuple[list[int], list[tuple[int, int]], int, int] | None] = {}
    if _no_splice(tokenizer):
        heads = [""] * n
    for flag in (True, False):
        uniq = sorted({heads[i] for i in range(n) if specials[i] == flag and heads[i]})
        enc, off = _batch(tokenizer, uniq, flag, offsets=True)
        for h, e, o in zip(uniq, enc, off):
            k = h.rstrip().rfind("\n") + 1
            m = next((t for t, (a, b) in enumerate(o) if a >= k and b > a), len(o))
            ok = k > 0 and m < len(o) and all(b <= k for a, b in o[:m])
            split[(h, flag)] = (e, o, k, m) if ok else None
    spliced = [i for i in range(n) if split.get((heads[i], specials[i])) is not None]
    tails, tail_off = _batch(tokenizer, [texts[i][split[(heads[i], specials[i])][2]:]
                                         for i in spliced], False, offsets=True)
    for i, t, to in zip(spliced, tails, tail_off):
        e, o, k, m = split[(heads[i], specials[i])]
        ids[i] = e[:m] + t
        offs[i] = o[:m] + [(a + k, b + k) for a, b in to]
    seen: set[tuple[str, bool]] = set()
    sample = []
    for j, i in enumerate(spliced):
        key = (heads[i], specials[i])
        if key not in seen or j % max(verify_every, 1) == 0:
            sample.append(i)
            seen.add(key)
    bad: set[tuple[str, bool]] = set()
    for flag in (True, False):
        idx = [i for i in sample if specials[i] == flag]
        for i, ref in zip(idx, _batch(tokenizer, [texts[i] for i in idx], flag)[0]):
            stats.verified += 1
            if ref != ids[i]:
                stats.verify_failures += 1
                bad.add((heads[i], flag))
                log.warning("tokenize: the shared-head encoding differs from the full "
                            "encoding (row %d): its %d-character head is encoded in full",
                            i, len(heads[i]))
    rest = [i for i in range(n) if ids[i] is None or (heads[i], specials[i]) in bad]
    for flag in (True, False):
        idx = [i for i in rest if specials[i] == flag]
        enc, off = _batch(tokenizer, [texts[i] for i in idx], flag, offsets=True)
        for i, e, o in zip(idx, enc, off):
            ids[i], offs[i] = e, o
    return ids, offs


def _full(tokenizer: Any, texts: list[str], specials: list[bool], conts: list[list[str]],
          ctx: list[list[int]], which: list[int]) -> dict[int, list[list[int]]]:
    """The reference: enc(texts[i] + c)[len(enc(texts[i])):], batch-encoded."""
    out: dict[int, list[list[int]]] = {}
    for flag in (True, False):
        idx = [i for i in which if specials[i] == flag]
        ids, _ = _batch(tokenizer, [texts[i] + c for i in idx for c in conts[i]], flag)
        at = 0
        for i in idx:
            out[i] = [x[len(ctx[i]):] for x in ids[at:at + len(conts[i])]]
            at += len(conts[i])
    return out


def _head(row: dict, n_shots: int, prompt: str) -> str:
    """The part of a prompt its subject's questions share (header and shots), or ""."""
    h = row["header"] + "".join(row["shots"][:n_shots])
    return h if prompt == h + row["test_block"] else ""


def tokenize_rows(rows: list[dict], tokenizer: Any, max_length: int,
                  flavor: Flavor | None = None, *, verify_every: int = VERIFY_EVERY,
                  stats: FastStats | None = None) -> list[Tokenized]:
    """Exactly `[tokenize_row(r, tokenizer, max_length, flavor) for r in rows]` (rows of one
    flavor), with one encoding per prompt and batch encoding. Rows whose prompt the too-long
    policy changes, chat flavors and slow (non-Rust) tokenizers go through `tokenize_row`."""
    stats = stats if stats is not None else FastStats()
    stats.questions += len(rows)
    if not rows:
        return []
    fl = flavor or get_flavor(rows[0]["flavor"])
    spec = fl.spec
    if fl.chat != "none" or not getattr(tokenizer, "is_fast", False):
        stats.slow_rows += len(rows)
        return [tokenize_row(r, tokenizer, max_length, fl) for r in rows]
    prompts = [r["prompt"] for r in rows]
    n_shots = [len(r["shots"]) for r in rows]
    dropped = [False] * len(rows)
    out: list[Tokenized | None] = [None] * len(rows)
    drop = spec["too_long"]["drop_shots"]
    if drop is not None:  # tokenize_row's loop: drop the last shot while the prompt is too long
        limit = max_length if drop["max_tokens"] == "model" else int(drop["max_tokens"])
        count_special, reserve = drop.get("special_tokens", True), drop.get("reserve", 0)
        # the prompt's length from the subject's shared head (as `_contexts` encodes it)
        lengths, _ = _contexts(tokenizer, prompts,
                               [_head(r, n, p) for r, n, p in zip(rows, n_shots, prompts)],
                               [count_special] * len(rows), verify_every, stats)
        long = [i for i, ids in enumerate(lengths) if len(ids) + reserve > limit]
        # every shorter prompt of those rows at once (the rows with as many shots share
        # that head); the most shots that fit win
        cands = [(i, n) for i in long for n in range(n_shots[i] - 1, -1, -1)]
        texts = [assemble(rows[i]["header"], rows[i]["shots"], rows[i]["test_block"], n)
                 for i, n in cands]
        cand_ids, _ = _contexts(tokenizer, texts,
                                [rows[i]["header"] + "".join(rows[i]["shots"][:n])
                                 for i, n in cands],
                                [count_special] * len(texts), verify_every, stats)
        fit = [len(ids) + reserve <= limit for ids in cand_ids]
        for i in long:
            best = next(((n, t) for (j, n), t, ok in zip(cands, texts, fit) if j == i and ok),
                        None)
            if best is None and spec["too_long"]["then"] == "cut_right":
                out[i] = tokenize_row(rows[i], tokenizer, max_length, fl)  # HELM cuts text
                stats.slow_rows += 1
                continue
            if best is None and n_shots[i] == 0:
                continue  # nothing to drop: the prompt stays as it is
            n, text = best if best is not None else (0, texts[cands.index((i, 0))])
            prompts[i], n_shots[i], dropped[i] = text, n, True
    todo = [i for i in range(len(rows)) if out[i] is None]
    then = spec["too_long"]["then"]
    feed_limit = {"left_truncate": max_length,
                  "left_truncate_keep_last": max_length - 1}.get(then, NO_LIMIT)
    conts = {i: fl.cache_continuations(list(rows[i]["choices"])) for i in todo}
    special = {i: _special(spec["special_tokens"], tokenizer, prompts[i]) for i in todo}
    encoding = spec["encoding"]
    subjects = [rows[i]["subject"] for i in todo]
    head = {i: _head(rows[i], n_shots[i], prompts[i]) for i in todo}
    if encoding in ("literal", "joint"):
        texts, cs = [], []
        for i in todo:
            p, c = prompts[i], conts[i]
            if encoding == "joint":  # trailing context whitespace moves into the continuation
                ns = len(p) - len(p.rstrip())
                if ns:
                    p, c = p[:-ns], [p[-ns:] + x for x in c]
            texts.append(p)
            cs.append(c)
        heads = [head[i] if texts[j].startswith(head[i]) else "" for j, i in enumerate(todo)]
        ctxs, cids = _extensions(tokenizer, texts, heads, [special[i] for i in todo], cs,
                                 subjects, verify_every, stats)
        for j, i in enumerate(todo):
            ctx = ctxs[j]
            if encoding == "joint" and not ctx:  # lm-eval scores an empty context after BOS
                bos = getattr(tokenizer, "bos_token_id", None)
                ctx = [bos if bos is not None else tokenizer.eos_token_id]
            out[i] = _finish(ctx, cids[j], feed_limit, n_shots[i], dropped[i], prompts[i])
    elif encoding in ("separate", "pairwise"):
        if encoding == "pairwise":
            ctx_text = {i: prompts[i][:len(prompts[i].rstrip())] for i in todo}
            cstr = {i: [prompts[i][len(ctx_text[i]):] + c for c in conts[i]] for i in todo}
        else:
            ctx_text, cstr = {i: prompts[i] for i in todo}, conts
        texts = [ctx_text[i] for i in todo]
        enc, _ = _contexts(tokenizer, texts, [head[i] if t.startswith(head[i]) else ""
                                              for i, t in zip(todo, texts)],
                           [special[i] for i in todo], verify_every, stats)
        ctxs = dict(zip(todo, enc))
        uniq = sorted({c for i in todo for c in cstr[i]})
        cmap = dict(zip(uniq, _batch(tokenizer, uniq, False)[0]))
        for i in todo:
            ctx = ctxs[i]
            if encoding == "separate":
                ctx = ctx or [tokenizer.eos_token_id]
            elif ctx and ctx[-1] == tokenizer.eos_token_id:
                ctx = ctx[:-1]
            out[i] = _finish(ctx, [list(cmap[c]) for c in cstr[i]], feed_limit, n_shots[i],
                             dropped[i], prompts[i])
        stats.full += len(todo)
    else:
        raise ValueError(f"flavor {fl.name!r}: unknown encoding {encoding!r}")
    if fl.generate:
        out = [t if t.request.generate else
               Tokenized(replace(t.request, generate=fl.generate), t.n_shots, t.truncated,
                         t.prompt) for t in out]  # type: ignore[union-attr]
    return out  # type: ignore[return-value]


def model_input(row: dict, tokenizer: Any, max_length: int, fl: Flavor, n_shots: int,
                prompt_sha256: str | None = None) -> str:
    """The text the model saw for a prompt row whose too-long policy kept `n_shots` shots
    (the chat template's rendering for a chat flavor), as `tokenize_row` builds it. With
    `prompt_sha256` (the cache's record of the fed text) the result is checked against it,
    falling back to the full `tokenize_row` for a prompt cut inside its text; ValueError when
    neither matches (the cache was made from another prompt or tokenizer)."""
    import hashlib

    def sha(t: str) -> str:
        return hashlib.sha256(t.encode("utf-8")).hexdigest()

    text = _wrap(_prompt_at(row, fl, tokenizer)(n_shots), fl, tokenizer)
    if prompt_sha256 is None or sha(text) == prompt_sha256:
        return text
    text = tokenize_row(row, tokenizer, max_length, fl).prompt
    if sha(text) != prompt_sha256:
        raise ValueError(f"{fl.name} {row['subject']}/{row['index']}: the cached prompt hash "
                         f"{prompt_sha256[:12]} is not this tokenizer's rendering of the prompt "
                         "row (a cache made from another prompt table or tokenizer)")
    return text
