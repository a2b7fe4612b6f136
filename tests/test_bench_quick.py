"""Every bench script runs end to end in CI (`--quick`: tiny random models, small trained
tokenizers, a few questions), so a signature change that breaks a benchmark fails here.

A script that cannot run in this venv (it runs inside a peer's own virtual environment, or
needs the network) is listed in EXCLUDED with the reason and what covers it instead; a new
file in bench/ that is in neither list fails `test_every_bench_script_is_covered`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# script -> argv after it ({tmp}: a fresh directory); each should take seconds
QUICK: dict[str, list[str]] = {
    "token_counts.py": ["--quick", "--out", "{tmp}/token_counts.json"],
    "attribution_cost.py": ["--quick", "--json", "{tmp}/attribution_cost.json"],
    "bench_engine.py": ["--quick", "--json", "{tmp}/engine.json"],
    "bench_explorer.py": ["--quick", "--work", "{tmp}/explorer", "--json", "{tmp}/explorer.json"],
    "gpu_prompts.py": ["--quick", "--out", "{tmp}/prompts.json.gz"],
    "gpu_check.sh": ["{tmp}/gpu_check_sh.json", "--device", "cpu", "--quick"],
    "bench_vs_lmeval.py": ["--quick", "--json", "{tmp}/vs_lmeval.json"],
    "compare_lmeval_prompts.py": ["--quick"],
    "compare_lmeval.py": ["--quick", "--out", "{tmp}/disagreements.csv"],
    "compare_helm_prompts.py": ["--quick"],
    "compare_lighteval_prompts.py": ["--quick"],
    "bench_dryrun.py": ["--quick", "--out", "{tmp}/dryrun.json"],
    "bench_tokenize.py": ["--quick", "--json", "{tmp}/tokenize.json"],
    "choice_cost.py": ["--quick", "--json", "{tmp}/choice_cost.json"],
}
# what each quick run must write (a JSON file with the machine's description, where it has one)
WRITES_MACHINE = {"attribution_cost.py": "attribution_cost.json", "bench_engine.py": "engine.json",
                  "bench_explorer.py": "explorer.json", "gpu_check.sh": "gpu_check_sh.json",
                  "bench_vs_lmeval.py": "vs_lmeval.json", "bench_dryrun.py": "dryrun.json",
                  "bench_tokenize.py": "tokenize.json", "choice_cost.py": "choice_cost.json"}

EXCLUDED: dict[str, str] = {
    "gpu_check.py": "gpu_check.sh's quick run execs it (--device cpu --quick), so it runs "
                    "once, through the wrapper a GPU user starts",
    "helm_local.py": "runs in crfm-helm's own venv (bench/setup_helm.sh); the rows it writes are "
                     "compared by compare_helm_prompts.py, whose --quick runs here",
    "lighteval_local.py": "runs in lighteval's own venv (bench/setup_lighteval.sh); its rows are "
                          "compared by compare_lighteval*.py, tests/test_lighteval.py checks its "
                          "recorded rows",
    "lighteval_golden.py": "its `make` step runs in lighteval's venv; its `check` step is what "
                           "tests/test_lighteval.py runs on tests/golden/lighteval_*.jsonl",
    "compare_lighteval.py": "needs the converted real models and lighteval's recorded rows for "
                            "them; tests/test_lighteval.py (slow) runs the same comparison",
    "bench_cache.py": "four real Snakemake runs (minutes even on a tiny model); "
                      "tests/test_workflow.py and tests/test_cache_store.py assert the same "
                      "grow / hint-edit counts",
    "lighteval_agreement.sh": "drives lighteval's venv (the scripts above)",
    "setup_helm.sh": "creates a peer venv from PyPI (network, minutes)",
    "setup_lighteval.sh": "creates a peer venv from PyPI (network, minutes)",
    "doc_figures.py": "its --quick (= --check) is tests/test_doc_figures.py",
    "lmeval_local.py": "a library of compare_lmeval*.py and bench_vs_lmeval.py (their --quick "
                       "runs here); its own main needs a converted real model",
    "machine.py": "library: the machine description every results file carries (checked "
                  "below on each quick run's JSON)",
    "jsonl_out.py": "library of helm_local.py and lighteval_local.py",
    "quick.py": "library: the tiny model and tokenizers of the --quick modes",
    "helm_current_local.py": "runs in crfm-helm's own venv (bench/setup_helm.sh); its rows are "
                             "compared by compare_helm_current.py",
    "compare_helm_current.py": "needs a converted real model and HELM's recorded rows for it "
                               "(no golden rows for helm_current are shipped yet)",
    "inspect_local.py": "runs in inspect_evals' own venv (bench/setup_inspect.sh); its rows are "
                        "compared by compare_inspect.py and shipped as tests/golden/today_inspect_*",
    "compare_inspect.py": "needs a converted real model and inspect_evals' recorded rows for it "
                          "(tests/test_today_golden.py checks the shipped golden rows)",
    "setup_inspect.sh": "creates a peer venv from PyPI (network, minutes)",
    "today_agreement.sh": "drives the crfm-helm, lighteval and inspect_evals venvs (the scripts above)",
    "today_golden.py": "its input is what today_agreement.sh records in the peers' venvs",
    "full_scale.py": "a whole Snakemake run stage by stage (its --quick takes minutes: the "
                     "workflow's own tests, tests/test_workflow.py, run the same rules)",
    "bench_backends.py": "needs llama-cpp-python, which setup.sh builds only when asked "
                         "(MMLU_FLAVORS_LLAMA_CPP=1); tests/test_backends.py covers the seam",
}


def test_every_bench_script_is_covered() -> None:
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    new = sorted(scripts - set(QUICK) - set(EXCLUDED))
    assert not new, (f"bench scripts without a --quick run or a reason: {new}; add them to "
                     "QUICK or EXCLUDED in tests/test_bench_quick.py")
    gone = sorted((set(QUICK) | set(EXCLUDED)) - scripts)
    assert not gone, f"listed here but not in bench/: {gone}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(ROOT / "workflow"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", PATH=str(Path(sys.executable).parent) + ":"
               + env.get("PATH", "/usr/bin:/bin"))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick(script: str, tmp_path: Path) -> None:
    if script in ("bench_vs_lmeval.py", "compare_lmeval.py", "compare_lmeval_prompts.py"):
        pytest.importorskip("lm_eval", reason="lm-eval is a test extra (pyproject.toml)")
    if script == "compare_helm_prompts.py" and not (ROOT / "tests" / "golden" / "helm.jsonl"
                                                    ).exists():
        pytest.skip("tests/golden/helm.jsonl not shipped yet")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in QUICK[script]]
    runner = ["bash"] if script.endswith(".sh") else [sys.executable]
    t0 = time.perf_counter()
    r = subprocess.run(runner + [str(BENCH / script), *argv], capture_output=True, text=True,
                       cwd=tmp_path, env=_env(), timeout=1200)
    took = time.perf_counter() - t0
    assert r.returncode == 0, (f"{script} --quick failed ({took:.0f} s):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    if script in WRITES_MACHINE:
        doc = json.loads((tmp_path / WRITES_MACHINE[script]).read_text())
        m = doc.get("machine") or {}
        for key in ("cpu_model", "cores", "ram_gb", "load_average_end", "torch", "date",
                    "git_commit"):
            assert m.get(key) is not None, f"{script}: machine.{key} missing"
    if script == "token_counts.py":
        sys.path.insert(0, str(ROOT / "workflow"))
        from mmlu_flavors.resources import COUNTED_FLAVORS, load_token_counts

        doc = load_token_counts(tmp_path / "token_counts.json")
        assert set(COUNTED_FLAVORS) <= set(doc["flavors"])
        assert any(f.startswith("attr_") for f in doc["flavors"])  # the attribution variants
        helm = doc["flavors"]["helm"]["abstract_algebra"]
        assert helm["questions"] == 3 and 0 < helm["forwards"] < helm["engine_tokens"]
