"""The engine's input type, kept free of heavy imports (polars) so that the engine runs
where only torch and transformers are installed (bench/gpu_check.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """Token ids for one question: context, scored continuations, left-truncation length."""

    context: list[int]
    continuations: list[list[int]]
    max_length: int
    generate: int = 0  # greedy tokens to generate after the context (0: none)

    def needs_truncation(self) -> bool:
        """Whether the reference cuts this input from the left (`max_length`): the context,
        a continuation or the generated tokens would not fit."""
        longest = max((len(c) for c in self.continuations), default=0)
        return (len(self.context) + longest > self.max_length + 1
                or len(self.context) > self.max_length
                or len(self.context) + max(self.generate - 1, 0) > self.max_length)
