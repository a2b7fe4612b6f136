"""Shared fixtures: the shipped MMLU (`resources/mmlu`) and the golden prompts (`tests/golden`).

Everything a test reads lives in this repository: no sibling folder, no environment variable
(`sibling_guard.py` fails a test that reads the folder beside the checkout,
`test_self_contained.py` one that names it)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import sibling_guard

ROOT = Path(__file__).resolve().parents[1]
MMLU_DIR = ROOT / "resources" / "mmlu"
BLOG_CSV = ROOT / "resources" / "blog" / "mmlu_scores.csv"
GOLDEN = Path(__file__).resolve().with_name("golden")
sibling_guard.install()


def golden(name: str) -> list[dict]:
    """The rows of tests/golden/<name>.jsonl (prompts the reference code built)."""
    return [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    if not (MMLU_DIR / "test").is_dir():
        pytest.fail(f"shipped MMLU not found at {MMLU_DIR} (resources/mmlu is tracked: is the "
                    "checkout complete?)")
    return MMLU_DIR


@pytest.fixture(scope="session")
def questions(mmlu_dir: Path) -> pl.DataFrame:
    from mmlu_flavors.data import Source, load_questions

    return load_questions(Source("local", str(mmlu_dir)))


@pytest.fixture
def registry():
    """The flavor registry, restored after a test registers flavors of its own."""
    from mmlu_flavors import flavors as F

    saved = dict(F.FLAVORS)
    yield F.FLAVORS
    F.FLAVORS.clear()
    F.FLAVORS.update(saved)
