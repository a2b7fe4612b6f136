"""The machine a benchmark ran on, and one place that writes a results file with it.

Every bench script that measures something writes `bench/results/<name>.json` through
`write_results`, so each figure in README.md and docs/*.md names the command, the machine and
the load it came from:

    {"command": "...", "machine": {"cpu_model": ..., "cores": ..., "ram_gb": ...,
     "load_average_start": [...], "load_average_end": [...], "python": ..., "torch": ...,
     "transformers": ..., "gpu": ..., "date": ..., "git_commit": ...}, "results": {...}}

Standard library only (lighteval's and HELM's virtual environments import it too); torch and
transformers versions are read when importable.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _gpu() -> str | None:
    if "torch" not in sys.modules:  # never import torch just to describe the machine
        return None
    torch = sys.modules["torch"]
    try:
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a broken driver must not stop a benchmark
        return None
    return None


def describe(load_start: tuple[float, ...] | None = None) -> dict[str, Any]:
    """CPU model, cores, RAM, load average, Python/torch/transformers versions, GPU, date
    (UTC) and git commit of this checkout ("-dirty" with uncommitted changes)."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "load_average_start": list(load_start) if load_start else None,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "gpu": _gpu(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git_commit(),
    }


def load_now() -> tuple[float, ...]:
    return tuple(round(x, 2) for x in os.getloadavg())


def write_results(path: str | Path | None, results: Any, *, quick: bool = False,
                  load_start: tuple[float, ...] | None = None,
                  argv: list[str] | None = None) -> dict[str, Any]:
    """Write {command, quick, machine, results} to `path` atomically (None: only return it)."""
    doc = {"command": " ".join(["python"] + list(argv if argv is not None else sys.argv)),
           "quick": quick, "machine": describe(load_start), "results": results}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2, default=str) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    return doc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
