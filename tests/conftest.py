"""Shared fixtures: the real MMLU files and golden prompts beside the checkout (../shared)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MMLU_FLAVORS_SHARED", ROOT.parent / "shared"))
MMLU_DIR = SHARED / "mmlu"
GOLDEN = SHARED / "golden"


def golden(name: str) -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    if not (MMLU_DIR / "test").is_dir():
        pytest.fail(f"MMLU data not found at {MMLU_DIR} (set MMLU_FLAVORS_SHARED)")
    return MMLU_DIR


@pytest.fixture(scope="session")
def questions(mmlu_dir: Path) -> pl.DataFrame:
    from mmlu_flavors.data import Source, load_questions

    return load_questions(Source("local", str(mmlu_dir)))
