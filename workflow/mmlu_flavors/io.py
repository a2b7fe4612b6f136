"""Atomic writes, content hashes and checked reads: nothing half-written ever carries a final
name, and a damaged or foreign file is named with the command that rebuilds it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"mmlu_flavors"


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_beside(path: Path) -> Path:
    """A new empty file beside `path`, created with mode 0666 minus the process umask (what
    any other tool's files get: 0644 under umask 022), never an existing file's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_failed(path: Path, e: OSError) -> OSError:
    """An OSError that names the final path (a full disk, a lost mount: Arrow's own message
    names neither): `path: could not be written (No space left on device)`."""
    code = e.errno or next((n for n, text in ((errno.ENOSPC, "No space left"),
                                               (errno.EDQUOT, "Disk quota"))
                            if text in str(e)), None)
    why = os.strerror(code) if code else _short(e)
    return OSError(code or 0, f"could not be written ({why}); nothing was replaced", str(path))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tmp = _tmp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        _commit(tmp, path)
    except OSError as e:
        raise _write_failed(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(df: pl.DataFrame | pa.Table, path: Path | str,
                         meta: dict[str, Any] | None = None) -> None:
    """Write a table as Parquet atomically, with `meta` as JSON schema metadata and a CRC
    per page (so `read_parquet_checked` detects a changed byte, not only a truncation)."""
    path = Path(path)
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    if meta is not None:
        existing = dict(table.schema.metadata or {})
        existing[META_KEY] = json.dumps(meta, sort_keys=True).encode()
        table = table.replace_schema_metadata(existing)
    tmp = _tmp_beside(path)
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        _commit(tmp, path)
    except OSError as e:
        raise _write_failed(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_dir(path: Path | str) -> Path:
    """A new empty directory beside `path` (umask-derived mode, like `mkdir`) to fill and
    then `replace_dir` into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:  # pragma: no cover
            continue


def replace_dir(tmp: Path, path: Path) -> None:
    """Move a filled directory `tmp` to `path`, replacing what was there; every file in it
    is made readable as the umask allows (some writers create files with mode 0600)."""
    mask = umask()
    for p in [tmp, *tmp.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
    old = path.parent / f".{path.name}.{secrets.token_hex(6)}.old"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    """The process umask, read without changing it where the OS shows it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def read_meta(path: Path | str) -> dict[str, Any]:
    """The `mmlu_flavors` JSON metadata of a Parquet file ({} when absent)."""
    md = pq.read_schema(path).metadata or {}
    raw = md.get(META_KEY)
    return json.loads(raw) if raw else {}


# ---------------------------------------------------------------- damaged files

class DamagedFileError(ValueError):
    """A generated file that is damaged (truncated, changed bytes, unreadable) or foreign
    (another table, flavor or model): one line naming it and the command that rebuilds it."""

    def __init__(self, path: Path | str, problem: str, fix: str | None = None) -> None:
        self.path, self.problem = Path(path), " ".join(str(problem).split())
        self.fix = fix or forcerun_fix(path)
        super().__init__(f"{self.path}: {self.problem}; fix: {self.fix}")


def forcerun_fix(path: Path | str) -> str:
    """The command that makes Snakemake rebuild one output (and what depends on it)."""
    return f"snakemake --cores all --forcerun {shlex.quote(str(path))}"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def _check_schema(path: Path, schema: pa.Schema, columns: Mapping[str, Any] | None,
                  meta: Mapping[str, Any] | None, fix: str | None) -> dict[str, Any]:
    if columns:
        have = pl.from_arrow(schema.empty_table()).schema
        missing = [c for c in columns if c not in have]
        if missing:
            raise DamagedFileError(path, f"not the expected table: column(s) {missing} "
                                   "missing", fix)
        wrong = [f"{c} is {have[c]}, expected {t}" for c, t in columns.items()
                 if t is not None and have[c] != t]
        if wrong:
            raise DamagedFileError(path, "not the expected table: " + "; ".join(wrong), fix)
    raw = (schema.metadata or {}).get(META_KEY)
    try:
        got = json.loads(raw) if raw else {}
    except ValueError:
        raise DamagedFileError(path, "its mmlu_flavors metadata is not JSON", fix) from None
    for key, want in (meta or {}).items():
        if key not in got:
            raise DamagedFileError(path, f"not written by this step: metadata {key!r} "
                                   "missing", fix)
        if want is not None and got[key] != want:
            raise DamagedFileError(path, f"foreign: metadata {key} is {got[key]!r}, "
                                   f"expected {want!r}", fix)
    return got


def check_parquet(path: Path | str, columns: Mapping[str, Any] | None = None,
                  meta: Mapping[str, Any] | None = None, fix: str | None = None
                  ) -> dict[str, Any]:
    """Cheap check (footer only, no data pages): the file opens as Parquet, has `columns`
    (name -> polars dtype, or None for any type) and metadata `meta` (key -> required value,
    or None for present). Returns the mmlu_flavors metadata; DamagedFileError otherwise."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise DamagedFileError(path, "missing", fix) from None
    except Exception as e:  # noqa: BLE001 - truncated, not Parquet, unreadable
        raise DamagedFileError(path, f"damaged: not a readable Parquet file ({_short(e)})",
                               fix) from None
    return _check_schema(path, schema, columns, meta, fix)


def read_parquet_checked(path: Path | str, columns: Mapping[str, Any] | None = None,
                         meta: Mapping[str, Any] | None = None, fix: str | None = None,
                         only: list[str] | None = None) -> pl.DataFrame:
    """Read a whole Parquet file (`only`: just these columns' pages), verifying every page's
    CRC where it has one (all files written by `atomic_write_parquet` do), after
    `check_parquet`'s column and metadata rules. Any failure is a DamagedFileError naming the
    file and `fix` (default: --forcerun it)."""
    path = Path(path)
    check_parquet(path, columns, meta, fix)
    try:
        table = pq.read_table(path, columns=only, page_checksum_verification=True)
        df = pl.from_arrow(table)
    except Exception as e:  # noqa: BLE001 - a damaged page, a bad CRC, a broken encoding
        raise DamagedFileError(path, f"damaged: its data cannot be read ({_short(e)})",
                               fix) from None
    assert isinstance(df, pl.DataFrame)
    return df
