"""Each flavor's token rule: the exact id sequences its reference code feeds the model.

A prompt row becomes a `Request`: the context ids (after the flavor's too-long policy) and
eight scored continuations, " A".." D" then " " + each choice text, encoded the way that
flavor's reference encodes continuations. Every flavor's cache holds both families, so any
scorer can be applied to any prompt flavor.

| flavor | special tokens | continuation encoding | too long |
|---|---|---|---|
| original | default (BOS if the tokenizer adds one) | joint, context exactly `tokenizer(prompt)` | drop last shot while > 2048 tokens |
| helm | default | joint, context exactly `tokenizer(prompt)` | drop last shot while tokens(no special) + 1 > max length, then cut right |
| harness_e47e01b | none | separate | left-truncate (ctx + cont)[-(L+1):][:-1] |
| harness_current | default, as lm-eval 0.4.13 (BOS where the tokenizer adds one) | joint (trailing context whitespace moves into the continuation) | left-truncate |
| lighteval_mcf | default on the context (a trailing EOS dropped), none on continuations | separate (trailing context whitespace moves into the continuation) | left-truncate to max length - 1 |
| lighteval_mmlu | default, context exactly `tokenizer(prompt)` | joint, as original/helm | none; greedy generation of 5 tokens |
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .flavors import LETTERS
from .prompts import assemble

ORIGINAL_MAX_TOKENS = 2048  # hard-coded in hendrycks/test evaluate_hf.py
NO_LIMIT = 1 << 40
LIGHTEVAL_GENERATION_SIZE = 5  # lighteval|mmlu generation_size


@dataclass(frozen=True)
class Request:
    """Token ids for one question: context, scored continuations, left-truncation length."""

    context: list[int]
    continuations: list[list[int]]
    max_length: int
    generate: int = 0  # greedy tokens to generate after the context (0: none)


@dataclass(frozen=True)
class Tokenized:
    """A request plus what the too-long policy did to the prompt."""

    request: Request
    n_shots: int
    truncated: bool
    prompt: str


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
    """The eight continuations every cache row scores: letters, then answer texts."""
    return [" " + L for L in LETTERS] + [" " + c for c in choices]


def _shots_that_fit(row: dict, fits) -> tuple[int, str]:
    n = len(row["shots"])
    prompt = assemble(row["header"], row["shots"], row["test_block"], n)
    while n > 0 and not fits(prompt):
        n -= 1
        prompt = assemble(row["header"], row["shots"], row["test_block"], n)
    return n, prompt


def tokenize_row(row: dict, tokenizer: Any, max_length: int) -> Tokenized:
    """Apply the row's flavor token rule (see the module table) with this tokenizer."""
    flavor = row["flavor"]
    conts = scored_strings(list(row["choices"]))
    if flavor == "original":
        n, prompt = _shots_that_fit(
            row, lambda p: len(encode(tokenizer, p, True)) <= ORIGINAL_MAX_TOKENS)
        truncated = n < len(row["shots"])
        return _literal(tokenizer, prompt, conts, NO_LIMIT, n, truncated)
    if flavor == "helm":
        n, prompt = _shots_that_fit(
            row, lambda p: len(encode(tokenizer, p, False)) + 1 <= max_length)
        truncated = n < len(row["shots"])
        ids = encode(tokenizer, prompt, False)
        if len(ids) + 1 > max_length:  # no shots left: HELM cuts the text from the right
            prompt = tokenizer.decode(ids[: max_length - 1])
            truncated = True
        return _literal(tokenizer, prompt, conts, NO_LIMIT, n, truncated)
    if flavor == "harness_e47e01b":
        prompt = row["prompt"]
        ctx = encode(tokenizer, prompt, False) or [tokenizer.eos_token_id]
        cont_ids = [encode(tokenizer, c, False) for c in conts]
        return _finish(ctx, cont_ids, max_length, len(row["shots"]), False, prompt)
    if flavor == "harness_current":
        special = harness_current_special(tokenizer, row["prompt"])
        return _joint(tokenizer, row["prompt"], conts, special, max_length,
                      len(row["shots"]), False)
    if flavor == "lighteval_mcf":
        return _lighteval_pairwise(tokenizer, row["prompt"], conts, max_length - 1,
                                   len(row["shots"]))
    if flavor == "lighteval_mmlu":
        t = _literal(tokenizer, row["prompt"], conts, NO_LIMIT, len(row["shots"]), False)
        return Tokenized(replace(t.request, generate=LIGHTEVAL_GENERATION_SIZE),
                         t.n_shots, t.truncated, t.prompt)
    raise ValueError(f"no token rule for flavor {flavor!r}")


def _lighteval_pairwise(tokenizer: Any, prompt: str, conts: list[str], max_length: int,
                        n_shots: int) -> Tokenized:
    """lighteval 0.13 `tok_encode_pair(..., pairwise=True)`, as `TransformersModel`
    always calls it when scoring: trailing context whitespace moves into each continuation;
    context = tokenizer(context) with default special tokens, minus a trailing EOS;
    continuation = tokenizer(continuation) without special tokens. The model input is
    (context + continuation)[-model_max_length:], i.e. our `max_length` is that minus one."""
    n_spaces = len(prompt) - len(prompt.rstrip())
    context = prompt[:-n_spaces] if n_spaces else prompt
    conts = [prompt[len(context):] + c for c in conts]
    ctx = encode(tokenizer, context, True)
    if ctx and ctx[-1] == tokenizer.eos_token_id:
        ctx = ctx[:-1]
    cont_ids = [encode(tokenizer, c, False) for c in conts]
    return _finish(ctx, cont_ids, max_length, n_shots, False, prompt)


def _literal(tokenizer: Any, prompt: str, conts: list[str], max_length: int,
             n_shots: int, truncated: bool) -> Tokenized:
    """Context exactly as `tokenizer(prompt)` (default special tokens), as original and HELM
    feed it; continuations are the extra ids of `tokenizer(prompt + continuation)`."""
    ctx = encode(tokenizer, prompt, True)
    cont_ids = [encode(tokenizer, prompt + c, True)[len(ctx):] for c in conts]
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
