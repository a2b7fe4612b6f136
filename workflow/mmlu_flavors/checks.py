"""Generated tables checked before use, and a damaged one healed before a run.

Each reader returns the table or raises `io.DamagedFileError` (one line: the file, what is
wrong, the command that rebuilds it); `heal` removes damaged or foreign outputs before
Snakemake plans a run, so the rule that owns each one recomputes it when it is needed (at once
for anything downstream of it that is out of date or missing).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl

from .data import SCHEMA as QUESTIONS_SCHEMA
from .data import table_checksum
from .io import DamagedFileError, check_parquet, read_parquet_checked

log = logging.getLogger(__name__)

# what every consumer of a prompt table needs (docs/ARCHITECTURE.md); more columns may follow
PROMPTS_SCHEMA: dict[str, Any] = {
    "flavor": pl.String, "subject": pl.String, "index": pl.Int64, "prompt": pl.String,
    "header": pl.String, "shots": pl.List(pl.String), "test_block": pl.String,
    "continuations": pl.List(pl.String), "gold": pl.Int8, "choices": pl.List(pl.String),
}


def _prediction_schema() -> dict[str, Any]:
    from .reduce import PREDICTION_SCHEMA

    return dict(PREDICTION_SCHEMA)


def check_questions(path: Path | str) -> None:
    check_parquet(path, QUESTIONS_SCHEMA, {"checksum_sha256": None})


def read_questions(path: Path | str) -> pl.DataFrame:
    """The questions table, its content equal to the checksum recorded when it was written."""
    df = read_parquet_checked(path, QUESTIONS_SCHEMA, {"checksum_sha256": None})
    want = check_parquet(path)["checksum_sha256"]
    if table_checksum(df) != want:
        raise DamagedFileError(path, "damaged: its content differs from the checksum "
                               "recorded when it was written")
    return df


def check_prompts(path: Path | str, flavor: str | None = None) -> None:
    check_parquet(path, PROMPTS_SCHEMA, {"flavor": flavor})


def read_prompts(path: Path | str, flavor: str | None = None,
                 columns: list[str] | None = None) -> pl.DataFrame:
    """One flavor's prompt table (`flavor` None: any flavor, as recorded in its metadata);
    `columns`: only these (their pages alone are read and checked)."""
    if columns is not None and "flavor" not in columns:
        columns = ["flavor", *columns]
    df = read_parquet_checked(path, PROMPTS_SCHEMA, {"flavor": flavor}, only=columns)
    want = flavor or check_parquet(path)["flavor"]
    if df.height and (df["flavor"] != want).any():
        raise DamagedFileError(path, f"foreign: rows of another flavor than {want!r}")
    return df


def check_predictions(path: Path | str) -> None:
    check_parquet(path, _prediction_schema())


def read_predictions(path: Path | str) -> pl.DataFrame:
    df = read_parquet_checked(path, _prediction_schema())
    if df.height == 0:
        raise DamagedFileError(path, "empty: no predictions")
    return df


def check_readable(path: Path | str) -> None:
    """Any Parquet output (e.g. a cache view): the footer opens."""
    check_parquet(path)


def heal(targets: Iterable[tuple[Path | str, Callable[[Path], Any]]], dry_run: bool = False
         ) -> list[str]:
    """Run each existing target's check; remove the damaged ones (files or directories) so
    their rules recompute them. Returns one line per damaged target (also logged)."""
    lines = []
    for path, check in targets:
        path = Path(path)
        if not path.exists():
            continue
        try:
            check(path)
        except DamagedFileError as e:
            action = "would be removed" if dry_run else "removed; its rule recomputes it when needed"
            lines.append(f"{path}: {e.problem}; {action}")
            log.warning("%s", lines[-1])
            if dry_run:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return lines
