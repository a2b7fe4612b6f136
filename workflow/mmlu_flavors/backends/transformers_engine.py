"""The default backend: the model in process through transformers, `engine.run_fast`."""

from __future__ import annotations

from typing import Any, Sequence

from ..request import Request


class TransformersBackend:
    name = "transformers"

    def identity(self, entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        return base  # unchanged: caches written before the seam existed stay valid

    def load(self, entry: dict[str, Any], model_dir: Any, name: str | None) -> Any:
        from .. import models

        return models.load_model(entry, model_dir, name)

    def run(self, loaded: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
            *, batch_size: int = 8, max_batch_tokens: int | None = None,
            progress: bool = True, stats: Any = None) -> list[Any]:
        from .. import engine  # looked up at call time (tests count engine.run_fast calls)

        kwargs = {"max_batch_tokens": max_batch_tokens} if max_batch_tokens else {}
        return engine.run_fast(loaded.model, list(requests), letter_ids, batch_size=batch_size,
                               progress=progress, stats=stats, **kwargs)


BACKEND = TransformersBackend()
