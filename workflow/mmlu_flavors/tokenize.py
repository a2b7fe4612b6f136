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

`helm_current` and `lighteval_current` depend on the tokenizer (`AUTO_CHAT_MODES`): the chat
template when it has one, their plain flavor (`helm`, `lighteval_mmlu`) exactly otherwise;
`rendering` says which, `Tokenized.chat` records it per question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .flavors import LETTERS, Flavor, get_flavor
from .prompts import assemble
from .request import Request  # noqa: F401 (re-exported: tokenize.Request)

ORIGINAL_MAX_TOKENS = 2048  # hard-coded in hendrycks/test evaluate_hf.py
NO_LIMIT = 1 << 40


@dataclass(frozen=True)
class Tokenized:
    """A request plus what the too-long policy did to the prompt."""

    request: Request
    n_shots: int
    truncated: bool
    prompt: str
    chat: bool = False  # rendered through the tokenizer's chat template


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
AUTO_CHAT_MODES = frozenset({"helm_user_auto", "lighteval_auto"})


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
