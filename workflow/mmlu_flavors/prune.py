"""`mmlu-flavors cache prune` and `cache purge`: remove only stores provably unconfigured.

A store directory `{store}/{model_key}` is removed by `prune` only when all of this holds:

* its `identity.json` is readable and its fingerprint hashes to the directory's name (else it
  is kept, with a warning: an identity that cannot be read proves nothing);
* no configured entry's `models.FingerprintPattern` matches it. The configured entries are
  those of every run the given config files describe: the working directory's `config.yaml`
  (the Snakefile's `configfile:`) alone, each given file merged over it, and all of them
  merged in order (Snakemake's `--configfile a.yaml b.yaml`; `plan.merge_config`). A pattern
  never depends on the host that prunes (`models.fingerprint_pattern`).

Nothing is deleted by `prune`: with `--yes` the stores are renamed (atomically, same
filesystem) into `{store}/.pruned/{batch}/{model_key}`, beside a `pruned.json` that lists
them; moving a directory back restores it. `purge --yes` deletes `.pruned/`. Without `--yes`
both only print what they would do. Directories at the store root that are not model keys,
files (`file_hashes.json`), and `*.bad` segments of kept stores are never touched; converted
models (`data/models`) and views (`data/cache/{model}/...`) are not in the store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import yaml

from .io import atomic_write_text

QUARANTINE = ".pruned"
MANIFEST = "pruned.json"
_KEY = re.compile(r"[0-9a-f]{16}")
_SKIP_DIRS = {"data", "reports", "logs", "node_modules", "resources", "workflow", "tests",
              "envs", "bench"}


# ---------------------------------------------------------------- what is configured

@dataclass(frozen=True)
class Configured:
    """The patterns to keep, and what they were read from."""

    patterns: list[Any]  # models.FingerprintPattern
    files: list[Path]  # every config file read
    store: Path  # the merged config's cache_store, relative to the working directory
    notes: list[str] = field(default_factory=list)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ValueError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping at the top level")
    return data


def _runs(configfiles: list[Path], directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """(description, merged config) of every run the files describe."""
    from .plan import merge_config

    base = directory / "config.yaml"
    base_cfg = _read_yaml(base) if base.is_file() else None
    given = [(f, _read_yaml(f)) for f in configfiles]
    runs: list[tuple[str, dict[str, Any]]] = []
    if base_cfg is not None:
        runs.append((str(base), base_cfg))
    for f, cfg in given:
        runs.append((f"{base} + {f}" if base_cfg is not None else str(f),
                     merge_config(base_cfg or {}, cfg)))
    if len(given) > 1:
        merged = dict(base_cfg or {})
        for _, cfg in given:
            merged = merge_config(merged, cfg)
        runs.append((" + ".join([str(base)] * (base_cfg is not None) + [str(f) for f in
                                                                         configfiles]), merged))
    return runs


def configured_patterns(configfiles: Iterable[str | Path], directory: str | Path = ".",
                        memo: dict[str, Any] | None = None) -> Configured:
    """The fingerprint patterns of every model_registry entry of every run the files
    describe (module docstring). Raises ValueError naming the file when one cannot be read,
    or when no file has a model_registry (everything would go)."""
    from .models import fingerprint_pattern, slugify

    directory = Path(directory)
    files = [Path(f) for f in configfiles]
    runs = _runs(files, directory)
    patterns: list[Any] = []
    seen: set[str] = set()
    notes: list[str] = []
    registries = 0
    for where, cfg in runs:
        registry = cfg.get("model_registry")
        if registry is None:
            continue
        if not isinstance(registry, dict):
            raise ValueError(f"config {where}: model_registry is not a mapping of model "
                             "name -> entry")
        registries += 1
        for name, entry in registry.items():
            sig = json.dumps([name, entry], sort_keys=True, default=str)
            if sig in seen:
                continue
            seen.add(sig)
            try:
                model_dir = (directory / "data" / "models" / slugify(name)
                             if isinstance(entry, dict) and entry.get("source") == "gguf"
                             else None)
            except ValueError:
                model_dir = None
            if (isinstance(entry, dict) and entry.get("source") == "local"
                    and isinstance(entry.get("path"), str)
                    and not Path(entry["path"]).expanduser().is_absolute()):
                # jobs run in the working directory: a relative path is relative to it
                entry = {**entry, "path": str(directory / entry["path"])}
            pattern = fingerprint_pattern(entry, model_dir, memo, name=str(name))
            if pattern.fields is None:
                notes.append(f"{name}: {'; '.join(pattern.wider)}: keeping every store "
                             f"recorded as {name!r}")
            patterns.append(pattern)
    read: list[Path] = []
    for f in ([directory / "config.yaml"] if (directory / "config.yaml").is_file() else []) + files:
        if f.resolve() not in {r.resolve() for r in read}:
            read.append(f)
    if not registries:
        raise ValueError("no model_registry in " + (", ".join(map(str, read)) or
                                                    "any config file") +
                         ": refusing to prune (no store could be proven unconfigured)")
    return Configured(patterns, read, _store_of(runs[-1][1], directory), notes)


def _store_of(config: dict[str, Any], directory: Path) -> Path:
    store = Path(str(config.get("cache_store") or "data/cache/store"))
    return store if store.is_absolute() else directory / store


def configured_store(configfiles: Iterable[str | Path], directory: str | Path = ".") -> Path:
    """The store the config files name (`cache_store`, merged), or the default."""
    runs = _runs([Path(f) for f in configfiles], Path(directory))
    return _store_of(runs[-1][1] if runs else {}, Path(directory))


def other_config_files(directory: str | Path, read: Iterable[Path]) -> list[Path]:
    """YAML files of the working directory (and one level below, e.g. `studies/`) that have
    a `model_registry` but were not read: the models only they configure are not kept."""
    directory = Path(directory)
    done = {p.resolve() for p in read}
    found = []
    for pattern in ("*.yaml", "*.yml", "*/*.yaml", "*/*.yml"):
        for p in sorted(directory.glob(pattern)):
            rel = p.relative_to(directory).parts
            if len(rel) > 1 and (rel[0].startswith(".") or rel[0] in _SKIP_DIRS):
                continue
            if p.resolve() in done or not p.is_file():
                continue
            try:
                data = yaml.safe_load(p.read_text())
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and "model_registry" in data:
                found.append(p)
    return found


# ---------------------------------------------------------------- what is stored

@dataclass
class StoreDir:
    """One directory at the store root, as read (never changed) by `read_store_dir`."""

    path: Path
    fingerprint: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why its identity cannot be read (then it is kept)
    flavors: int = 0
    questions: int = 0
    bytes: int = 0
    bad_segments: int = 0
    bad_bytes: int = 0

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return str(self.details.get("name", "?"))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_store_dir(path: Path, count: bool = True) -> StoreDir:
    """Identity, questions (distinct inputs per flavor and subject), bytes and `*.bad`
    segments of one model store directory."""
    from .models import model_key

    d = StoreDir(path, bytes=_size(path))
    if not _KEY.fullmatch(path.name):
        d.problem = "not a model store (its name is not a model key)"
        return d
    try:
        info = json.loads((path / "identity.json").read_text())
        fp = info["fingerprint"]
        if not isinstance(fp, dict):
            raise TypeError("fingerprint is not a mapping")
        if model_key(fp) != path.name or info.get("model_key", path.name) != path.name:
            d.problem = "identity.json names another model key"
        else:
            d.fingerprint = fp
            d.details = info.get("details") if isinstance(info.get("details"), dict) else {}
    except FileNotFoundError:
        d.problem = "no identity.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        d.problem = f"identity.json unreadable ({type(e).__name__})"
    flavors = set()
    for subj in path.glob("*/*"):
        if not subj.is_dir():
            continue
        flavors.add(subj.parent.name)
        bad = list(subj.glob("*.bad"))
        d.bad_segments += len(bad)
        d.bad_bytes += sum(p.stat().st_size for p in bad)
        if count:
            keys: set[str] = set()
            for seg in subj.glob("*.parquet"):
                try:
                    keys.update(pl.read_parquet(seg, columns=["input_key"])["input_key"])
                except Exception:  # a damaged segment: its rows are not counted
                    pass
            d.questions += len(keys)
    d.flavors = len(flavors)
    return d


def store_dirs(store_root: Path, count: bool = True) -> list[StoreDir]:
    """Every directory at the store root except the quarantine."""
    if not store_root.is_dir():
        return []
    return [read_store_dir(p, count) for p in sorted(store_root.iterdir())
            if p.is_dir() and p.name != QUARANTINE]


# ---------------------------------------------------------------- the plan

@dataclass
class PrunePlan:
    store: Path
    remove: list[StoreDir]
    keep: list[tuple[StoreDir, str]]  # (store, why it is kept)


def plan_prune(store_root: str | Path, patterns: list[Any], count: bool = True) -> PrunePlan:
    """Which store directories go (no pattern matches a readable identity) and which stay."""
    root = Path(store_root)
    remove, keep = [], []
    for d in store_dirs(root, count):
        if d.fingerprint is None:
            keep.append((d, f"kept: {d.problem}; never removed"))
            continue
        hits = [p for p in patterns if p.matches(d.fingerprint, d.details)]
        if hits:
            why = "; ".join(f"{p.name}" + (f" ({', '.join(p.wider)})" if p.wider else "")
                            for p in hits)
            keep.append((d, f"configured: {why}"))
        else:
            remove.append(d)
    return PrunePlan(root, remove, keep)


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def _line(d: StoreDir) -> str:
    return (f"{d.key}  {d.name}  {d.flavors} flavor(s), {d.questions} questions, "
            f"{human_bytes(d.bytes)}")


def format_plan(plan: PrunePlan) -> list[str]:
    lines = [f"store {plan.store}: {len(plan.keep) + len(plan.remove)} model store(s), "
             f"{len(plan.keep)} kept, {len(plan.remove)} to remove"]
    for d, why in plan.keep:
        lines.append(f"  keep    {_line(d)}  [{why}]")
    for d in plan.remove:
        lines.append(f"  remove  {_line(d)}  identity {json.dumps(d.fingerprint, sort_keys=True)}")
    bad = [d for d, _ in plan.keep if d.bad_segments]
    if bad:
        lines.append(f"  note: {sum(d.bad_segments for d in bad)} segment(s) set aside as *.bad "
                     f"in kept stores ({human_bytes(sum(d.bad_bytes for d in bad))}) are left "
                     "as they are (prune never touches them)")
    if plan.remove:
        lines.append(f"  to remove: {len(plan.remove)} store(s), "
                     f"{sum(d.questions for d in plan.remove)} questions, "
                     f"{human_bytes(sum(d.bytes for d in plan.remove))}")
    return lines


# ---------------------------------------------------------------- quarantine and purge

def quarantine(plan: PrunePlan, context: dict[str, Any]) -> Path:
    """Rename every store of `plan.remove` into a new `{store}/.pruned/{batch}/` (same
    filesystem: an atomic rename, nothing copied or deleted) and list them in its
    `pruned.json`. Returns the batch directory."""
    qroot = plan.store / QUARANTINE
    batch = qroot / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    batch.mkdir(parents=True)
    if os.stat(batch).st_dev != os.stat(plan.store).st_dev:
        batch.rmdir()
        raise ValueError(f"{qroot} is on another filesystem than {plan.store}: refusing to "
                         "move stores across filesystems (nothing was moved)")
    moved = []
    try:
        for d in plan.remove:
            os.rename(d.path, batch / d.key)
            moved.append({"model_key": d.key, "name": d.details.get("name"),
                          "fingerprint": d.fingerprint, "questions": d.questions,
                          "bytes": d.bytes})
    finally:
        atomic_write_text(batch / MANIFEST, json.dumps(
            {**context, "pruned": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "store": str(plan.store),
             "restore": f"mv {batch}/<model_key> {plan.store}/", "stores": moved},
            indent=2, sort_keys=True) + "\n")
    return batch


@dataclass
class Quarantined:
    batch: Path
    stores: list[StoreDir]
    bytes: int


def quarantined(store_root: str | Path) -> list[Quarantined]:
    """Every batch under `{store}/.pruned/` with what it holds (read from the directories
    themselves, not only from the manifest)."""
    qroot = Path(store_root) / QUARANTINE
    if not qroot.is_dir():
        return []
    return [Quarantined(b, [read_store_dir(p, count=True) for p in sorted(b.iterdir())
                            if p.is_dir()], _size(b))
            for b in sorted(qroot.iterdir()) if b.is_dir()]


def format_quarantine(batches: list[Quarantined]) -> list[str]:
    lines = []
    for q in batches:
        lines.append(f"  {q.batch.name}: {len(q.stores)} store(s), {human_bytes(q.bytes)}")
        lines += [f"    {_line(d)}" for d in q.stores]
    return lines


def purge(batches: list[Quarantined]) -> int:
    """Delete the quarantined batches; returns the bytes freed."""
    freed = 0
    for q in batches:
        shutil.rmtree(q.batch)
        freed += q.bytes
    return freed
