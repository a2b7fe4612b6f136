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
