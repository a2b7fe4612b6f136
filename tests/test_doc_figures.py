"""The cluster figures written in README.md, docs/cluster.md and blog.yaml are what
`mmlu-flavors plan --configfile blog.yaml` prints, and what resources/token_counts.json holds.

`bench/doc_figures.py` writes those figures from the plan's output; the first test
regenerates them and compares, the others parse the files and the plan independently, so a
figure typed by hand, a stale block or a changed estimate fails here. To fix a failure:
`python bench/doc_figures.py` (after `python bench/token_counts.py` when the engine's schedule
changed) and commit the result.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import doc_figures as D  # noqa: E402
from mmlu_flavors import resources as R  # noqa: E402
from mmlu_flavors.data import SUBJECTS  # noqa: E402

README = (ROOT / "README.md").read_text()
CLUSTER = (ROOT / "docs" / "cluster.md").read_text()
BLOG = (ROOT / "blog.yaml").read_text()


@pytest.fixture(scope="module")
def plans() -> dict[str, D.Plan]:
    return D.plans()


def test_figure_blocks_are_regenerated_from_the_plan(plans: dict[str, D.Plan]) -> None:
    cfg = D.blog_config()
    new = D.blocks(plans, D.job_rows(cfg), cfg)
    stale = []
    for (kind, name), body in new.items():
        path = D.FILES[kind]
        text = path.read_text()
        begin, end = D._markers(kind, name)
        got = text[text.index(begin) + len(begin) + 1:text.index(end) - 1]
        if got != body:
            stale.append(f"{path.relative_to(ROOT)} block {name}:\n  file: {got[:300]}\n"
                         f"  plan: {body[:300]}")
    assert not stale, ("figures differ from `mmlu-flavors plan` (run python "
                       "bench/doc_figures.py):\n" + "\n".join(stale))


def test_the_plan_command_prints_what_the_docs_say(tmp_path: Path) -> None:
    """The real command as the README gives it, parsed; then the figures parsed from the
    three files."""
    plan = D.parse_plan(D.run_plan(directory=tmp_path))
    # README: jobs and GPU-hours of the default (blog.yaml as it is)
    m = re.search(r"\*\*(\d+) independent logits jobs\*\*.*?\*\*about (\d+) A100 GPU-hours\*\*",
                  README, re.S)
    assert m and (int(m[1]), int(m[2])) == (plan.jobs, round(plan.gpu_hours)), m and m.groups()
    # docs/cluster.md: the attribution paragraph and the totals of "Cost before and after"
    m = re.search(r"\*\*(\d+) logits jobs and about (\d+) GPU-hours\*\*", CLUSTER)
    assert m and (int(m[1]), int(m[2])) == (plan.jobs, round(plan.gpu_hours))
    m = re.search(r"all assumed: (\d+) jobs, ([\d.]+) GPU-hours with the\s+embedded default",
                  CLUSTER)
    assert m and (int(m[1]), float(m[2])) == (plan.jobs, round(plan.gpu_hours, 1))
    m = re.search(r"\| `logits` \|.*\*\*(\d+)\*\* \| SLURM", CLUSTER)
    assert m and int(m[1]) == plan.jobs
    # blog.yaml's comment
    m = re.search(r"logits jobs for the four flavors, (\d+) with the attribution", BLOG)
    assert m and int(m[1]) == plan.jobs
    # per-model jobs of the resource table = the plan's per-model jobs
    table = D._tables(CLUSTER[CLUSTER.index("figures:resources"):])[0]
    assert {r["model"]: int(r["jobs"]) for r in table} == \
        {r["model"]: int(r["jobs"]) for r in plan.models}


def test_estimate_table_is_the_plan_without_variants(plans: dict[str, D.Plan]) -> None:
    none = plans["none"]
    table = D._tables(CLUSTER[CLUSTER.index("figures:estimate"):])[0]
    got = {r["model"]: float(r["GPU-hours"]) for r in table if not r["model"].startswith("*")}
    assert got == {r["model"]: float(r["gpu_hours"]) for r in none.models}
    total = next(r for r in table if r["model"].startswith("**"))
    assert float(total["GPU-hours"].strip("*")) == round(none.gpu_hours, 1)
    assert none.jobs == 8 * 4 * 8
    assert plans["default"].jobs > none.jobs and plans["walk"].jobs > plans["default"].jobs


def test_resource_table_is_what_the_jobs_request() -> None:
    cfg = D.blog_config()
    jobs = D.job_rows(cfg)
    table = D._tables(CLUSTER[CLUSTER.index("figures:resources"):])[0]
    for row in table:
        js = [j for j in jobs if j["model"] == row["model"]]
        lo, hi = (int(x) for x in row["`runtime` (min)"].split("-"))
        assert (lo, hi) == (min(j["runtime"] for j in js), max(j["runtime"] for j in js))
        assert int(row["`mem_mb`"]) == js[0]["mem_mb"] and int(row["`gpu`"]) == js[0]["gpu"]


def test_token_counts_file_has_its_provenance() -> None:
    doc = R.load_token_counts()
    for key in ("generated_by", "tokenizer", "max_length", "mode", "device",
                "max_batch_tokens", "machine"):
        assert doc.get(key) is not None, key
    assert doc["machine"]["git_commit"] and doc["machine"]["date"]
    for flavor in R.COUNTED_FLAVORS:
        table = doc["flavors"][flavor]
        assert list(table) == list(SUBJECTS)
        assert sum(r["questions"] for r in table.values()) == 14042
        assert all(0 < r["forwards"] <= r["engine_tokens"] for r in table.values())
    # the weight-streaming term uses the schedule's forwards, not a constant
    fwd = sum(R.FORWARDS["helm"].values())
    assert R.shard_forwards("helm", SUBJECTS, None) == pytest.approx(fwd * R.TOKENIZER_FACTOR)
    assert 0 < R.FORWARDS_PER_QUESTION < 2


def test_token_counts_file_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "tc.json"
    bad.write_text('{"flavors": {"helm": {"anatomy": {"questions": 3, "engine_tokens": -1, '
                   '"forwards": 1}}}}')
    with pytest.raises(ValueError, match=r"tc.json: flavors.helm.anatomy: 'engine_tokens'"):
        R.load_token_counts(bad)
    with pytest.raises(ValueError, match="token_counts.py"):
        R.load_token_counts(tmp_path / "missing.json")


def test_config_comment_names_every_built_in_flavor() -> None:
    builtins = [k for k in yaml.safe_load(
        (ROOT / "workflow" / "mmlu_flavors" / "flavors.yaml").read_text())]
    config = (ROOT / "config.yaml").read_text()
    comment = config[config.index("# built-in flavors"):config.index("\nflavors:")]
    named = re.findall(r"\b([a-z][a-z0-9_]+)\b(?=,|\s|$)", comment.split(":", 1)[1])
    assert [f for f in builtins if f not in named] == []
    readme_table = {m for m in re.findall(r"^\| `([a-z0-9_]+)` \|", README, re.M)}
    assert set(builtins) <= readme_table
