"""The engine seam: a backend turns a job's tokenized requests into cache rows.

A model entry picks its backend (`backend: transformers | llama_cpp | openai_completions`,
default `transformers`). Every backend returns one `engine.EngineResult` per request, in
request order, with the numbers `engine.run_naive` defines (letter log-probs at the answer
position, greedy token and top-k, every token of every continuation, generated tokens); the
cache turns them into rows. Nothing above the seam (cache, reductions, report) knows which
backend ran: the backend only enters the model's cache identity (`identity`).

Each backend is its own module, imported only when an entry asks for it (llama-cpp-python is
an optional, compiled dependency):

| backend | module | runs |
|---|---|---|
| `transformers` | `transformers_engine` | `engine.run_fast` on the transformers model (in process) |
| `llama_cpp` | `llamacpp` | the GGUF file itself in llama-cpp-python (in process, CPU) |
| `openai_completions` | `openai_completions` | prompt log-probs from an OpenAI-compatible `/v1/completions` server |
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, Sequence

from ..request import Request

DEFAULT = "transformers"
BACKENDS: dict[str, str] = {  # name -> module (imported lazily)
    "transformers": "transformers_engine",
    "llama_cpp": "llamacpp",
    "openai_completions": "openai_completions",
}


class Backend(Protocol):
    """What the cache needs from an engine."""

    name: str

    def identity(self, entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """The model fingerprint (`models.fingerprint`) for this backend, from the
        weights-and-tokenizer fingerprint `base`: backend, its version, its numeric
        settings. The transformers backend returns `base` unchanged (existing caches stay
        valid)."""

    def load(self, entry: dict[str, Any], model_dir: Any, name: str | None) -> Any:
        """A `models.LoadedModel` whose `model` is what `run` needs."""

    def run(self, loaded: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
            *, batch_size: int, max_batch_tokens: int | None, progress: bool,
            stats: Any) -> list[Any]:
        """One `EngineResult` per request, in request order; fills `stats`
        (`engine.EngineStats`)."""


def name_of(entry: dict[str, Any], name: str | None = None) -> str:
    """The entry's backend name; a clear error for an unknown one."""
    backend = entry.get("backend", DEFAULT) or DEFAULT
    if backend not in BACKENDS:
        who = name or entry.get("name") or entry.get("hub_id") or entry.get("gguf_file") \
            or entry.get("path") or "<unnamed>"
        raise ValueError(f"model {who!r}, field 'backend': {backend!r} is not one of "
                         f"{tuple(BACKENDS)}")
    return backend


def get(entry: dict[str, Any], name: str | None = None) -> Backend:
    """The backend object of a model entry."""
    module = importlib.import_module(f"{__name__}.{BACKENDS[name_of(entry, name)]}")
    return module.BACKEND
