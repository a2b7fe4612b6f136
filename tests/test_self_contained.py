"""The suite needs nothing beside the checkout: golden prompts ship in tests/golden, MMLU and
the published table in resources/ (`.ci/run` runs the suite in a clone with nothing beside it)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from conftest import BLOG_CSV, GOLDEN, MMLU_DIR, ROOT
from sibling_guard import SIBLING, OutsideReadError

TESTS = Path(__file__).resolve().parent
# the two files that name the folder to keep tests away from it
GUARDS = {Path(__file__).resolve(), TESTS / "sibling_guard.py"}
# what reaching the sibling folder looks like in a test's text: a relative path to it, the
# variable that used to point at it, a path built above the repository root
FORBIDDEN = [
    re.compile(r"\.\.[/\\]+shared\b"),
    re.compile(r"MMLU_FLAVORS_" + "SHARED"),
    re.compile(r"\b(?:ROOT|REPO)\.parent\b"),
    re.compile(r"\bparents\[(?:[2-9]|\d\d)\]"),
    re.compile(r"\bshared[/\\]+(?:golden|mmlu|blog|spec)\b"),
]


def test_no_test_file_names_the_sibling_folder() -> None:
    found = []
    for path in sorted(TESTS.rglob("*")):
        if path in GUARDS or not path.is_file() or "__pycache__" in path.parts:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                      for rx in FORBIDDEN if rx.search(line)]
    assert not found, "tests reach outside the repository:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for() -> None:
    """The scan above can fail: each pattern matches the line it is meant to catch."""
    lines = ['GOLDEN = Path("../shared/golden")',
             'os.environ.get("MMLU_FLAVORS_' + 'SHARED")',
             'SHARED = ROOT.parent / "shared"',
             'Path(__file__).resolve().parents[2] / "x"',
             'open("/somewhere/shared/mmlu/test/x.csv")']
    for rx, line in zip(FORBIDDEN, lines):
        assert rx.search(line), (rx.pattern, line)
    assert not any(rx.search('ROOT / "tests" / "golden" / "helm.jsonl"') for rx in FORBIDDEN)


def test_reading_the_sibling_folder_fails_the_test(tmp_path) -> None:
    """sibling_guard's audit hook (installed by conftest) stops a read of ../shared, even
    where that folder exists."""
    with pytest.raises(OutsideReadError, match="never the folder beside it"):
        open(Path(SIBLING) / "golden" / "original.jsonl")
    with pytest.raises(OutsideReadError):
        list(Path(SIBLING).iterdir())
    (tmp_path / "shared").mkdir()  # a folder of that name elsewhere is fine
    assert list((tmp_path / "shared").iterdir()) == []


def test_test_data_is_inside_the_repository() -> None:
    for path in (MMLU_DIR, BLOG_CSV, GOLDEN):
        assert path.exists() and path.resolve().is_relative_to(ROOT), path


def test_golden_files_are_the_reference_outputs_unchanged() -> None:
    """tests/golden/SHA256SUMS: the reference code's prompts, byte for byte as produced."""
    sums = [line.split() for line in (GOLDEN / "SHA256SUMS").read_text().splitlines() if line]
    assert {name for _, name in sums} == {"original.jsonl", "helm.jsonl",
                                          "harness_e47e01b.jsonl", "harness_current.jsonl"}
    for digest, name in sums:
        assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == digest, name
