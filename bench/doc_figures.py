"""The cluster figures of README.md, docs/cluster.md and blog.yaml, regenerated from what
`mmlu-flavors plan --configfile blog.yaml` prints and from `resources/token_counts.json`.

Each figure lives in a marked block of its file,

    <!-- BEGIN figures:NAME (bench/doc_figures.py) -->  ...  <!-- END figures:NAME -->
    # BEGIN figures:NAME (bench/doc_figures.py)  ...  # END figures:NAME          (YAML)

and this script rewrites every block; nothing else in those files is touched.

    .venv/bin/python bench/doc_figures.py           # rewrite the blocks
    .venv/bin/python bench/doc_figures.py --check   # exit 1 naming each stale block (CI test)

Sources: the plan of blog.yaml as it is (the embedded default's attribution: harness (acc) ->
HELM walked, harness (acc) -> original grouped), the same with both pairs walked
(`attribution_variants: walk`) and with no variants (the published table alone), each run in
an empty working directory (no metrics files: every figure is the assumed one), and the
per-job resources of `mmlu_flavors.resources.model_resources`, the function `snakemake -n`
calls for every logits job. After regenerating the token counts (`bench/token_counts.py`) or
changing resources.py, run this and commit the result.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

import yaml  # noqa: E402

from mmlu_flavors import plan as P  # noqa: E402
from mmlu_flavors import resources as R  # noqa: E402

BLOG = ROOT / "blog.yaml"
PLAN_VARIANTS = {
    # name -> config laid over config.yaml + blog.yaml
    "default": None,
    "walk": {"attribution_pairs": [["harness (acc)", "helm"], ["harness (acc)", "original"]],
             "attribution_variants": "walk"},
    "none": {"attribution_pairs": [["harness (acc)", "helm"], ["harness (acc)", "original"]],
             "attribution_variants": "none"},
}
FILES = {"readme": ROOT / "README.md", "cluster": ROOT / "docs" / "cluster.md",
         "blog": BLOG}


# ---------------------------------------------------------------- the plan, as printed

@dataclass(frozen=True)
class Plan:
    """What `mmlu-flavors plan` printed: per-flavor rows, per-model rows, the total line."""

    rows: list[dict[str, str]]
    models: list[dict[str, str]]
    jobs: int
    job_hours: float
    gpu_hours: float

    def model(self, name: str) -> dict[str, str]:
        return next(m for m in self.models if m["model"] == name)

    def flavors(self) -> list[str]:
        return list(dict.fromkeys(r["flavor"] for r in self.rows))


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of a text, as rows of {header: cell}."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            head, body = cur[0], [r for r in cur[1:] if not set("".join(r)) <= set("-: ")]
            tables.append([dict(zip(head, r)) for r in body])
            cur = []
    return tables


def parse_plan(text: str) -> Plan:
    """Parse the output of `mmlu-flavors plan` (format_plan)."""
    tables = _tables(text)
    m = re.search(r"^Total: (\d+) jobs, ([\d.]+) job-hours, ([\d.]+) GPU-hours", text, re.M)
    if len(tables) < 2 or not m:
        raise ValueError(f"not the output of `mmlu-flavors plan`:\n{text[:2000]}")
    return Plan(tables[0], tables[1], int(m[1]), float(m[2]), float(m[3]))


def plan_command() -> list[str]:
    exe = Path(sys.executable).with_name("mmlu-flavors")
    return [str(exe)] if exe.exists() else [
        sys.executable, "-c", "import sys; from mmlu_flavors.cli import main; sys.exit(main())"]


def run_plan(extra: dict | None = None, directory: Path | None = None) -> str:
    """`mmlu-flavors plan --configfile blog.yaml [extra]` in an empty working directory with
    a copy of config.yaml (no metrics files, so every figure is the assumed one)."""
    with tempfile.TemporaryDirectory(prefix="doc_figures_") as tmp:
        work = Path(directory or tmp)
        shutil.copy(ROOT / "config.yaml", work / "config.yaml")
        files = [str(BLOG)]
        if extra:
            (work / "extra.yaml").write_text(yaml.safe_dump(extra))
            files.append(str(work / "extra.yaml"))
        r = subprocess.run(plan_command() + ["plan", "--directory", str(work), "--configfile",
                                             *files], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "workflow"),
                                "HF_HUB_OFFLINE": "1"}, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"mmlu-flavors plan failed:\n{r.stderr[-3000:]}")
    return r.stdout


def plans() -> dict[str, Plan]:
    return {name: parse_plan(run_plan(extra)) for name, extra in PLAN_VARIANTS.items()}


# ---------------------------------------------------------------- per-job resources

def blog_config(extra: dict | None = None) -> dict:
    cfg = P.load_config([BLOG], ROOT)
    return P.merge_config(cfg, extra) if extra else cfg


def job_rows(cfg: dict) -> list[dict]:
    """One row per logits job of a config: the resources `snakemake -n` prints for it
    (model_resources with no metrics), and the expected compute and load seconds."""
    cut, flavors, n = P.shards(cfg), P.run_flavors(cfg), cfg.get("questions_per_subject")
    out = []
    for model in cfg["models"]:
        entry = cfg["model_registry"][model]
        gpus = R.gpu_count(entry)
        for flavor in flavors:
            for shard, subjects in cut.items():
                res = R.model_resources(entry, flavor, subjects, n)
                compute = R.compute_seconds(entry, R.shard_tokens(flavor, subjects, n),
                                            R.shard_questions(subjects, n), gpus,
                                            R.shard_forwards(flavor, subjects, n))
                out.append({"model": model, "flavor": flavor, "shard": shard, **res,
                            "compute_s": compute, "load_s": R.load_seconds(entry)})
    return out


# ---------------------------------------------------------------- the blocks

def _min(seconds: float) -> str:
    m = seconds / 60
    return f"{m:.0f}" if m >= 10 else f"{m:.1f}"


def blocks(pl: dict[str, Plan], jobs: list[dict], cfg: dict) -> dict[tuple[str, str], str]:
    d, walk, none = pl["default"], pl["walk"], pl["none"]
    n_models = len(d.models)
    n_shards = len(P.shards(cfg))
    n_var = len(d.flavors()) - len(cfg["flavors"])
    n_var_walk = len(walk.flavors()) - len(cfg["flavors"])
    n_fl = len(cfg["flavors"])
    l65 = "llama-65b"
    var_add = d.gpu_hours - none.gpu_hours
    doc = R.TOKEN_COUNTS_DOC
    counted = {f: doc["flavors"][f] for f in R.COUNTED_FLAVORS}
    tok = {f: sum(r["engine_tokens"] for r in t.values()) for f, t in counted.items()}
    fwd = {f: sum(r["forwards"] for r in t.values()) for f, t in counted.items()}
    qs = {f: sum(r["questions"] for r in t.values()) for f, t in counted.items()}
    trunc = {f: (sum(r["truncated"] for r in t.values())
                 if all("truncated" in r for r in t.values()) else None)
             for f, t in counted.items()}
    variants = [f for f in d.flavors() if f.startswith("attr_")]
    var_tok = [sum(r["engine_tokens"] for r in doc["flavors"][v].values())
               for v in variants if v in doc["flavors"]]
    out: dict[tuple[str, str], str] = {}

    out["readme", "cluster"] = (
        f"That is **{d.jobs} independent logits jobs** ({n_models} models × ({n_fl} flavors + "
        f"{n_var} prompt variants of the default attribution) × {n_shards} shards of "
        f"subjects; {none.jobs} for the four flavors alone); each asks for GPUs, host memory and "
        "runtime derived from its model entry (parameters × bytes per parameter of its dtype, "
        "with headroom; `workflow/mmlu_flavors/resources.py`), and a model entry can override "
        "partition, account and constraint. Estimated by `mmlu-flavors plan --configfile "
        "blog.yaml` from the engine's planned tokens and forwards of the full prompt set "
        f"(`resources/token_counts.json`): **about {d.gpu_hours:.0f} A100 GPU-hours** with "
        f"the default attribution, of which the {n_var} variants take {var_add:.0f} "
        f"(**{none.gpu_hours:.0f}** for the published table alone, "
        f"{float(none.model(l65)['gpu_hours']):.0f} of them for LLaMA-65B; {walk.gpu_hours:.0f} walking both pairs), at an assumed "
        f"{R.ACHIEVED_FRACTION:.0%} of A100 peak: an estimate, not a measurement on a GPU.")

    walk_var = [v for v in doc.get("variants", {}) if v in doc["flavors"]]
    walk_tok = sum(sum(r["engine_tokens"] for r in doc["flavors"][v].values()) for v in walk_var)
    out["readme", "attribution-cost"] = (
        "Planned on all 14,042 questions with SmolLM2's tokenizer "
        f"(`resources/token_counts.json`), walking both default pairs costs {len(walk_var)} "
        f"variants at {walk_tok / sum(tok.values()):.2f} × the tokens of the four flavors; with "
        "the header first they cost 2.51 × on the default subset (`bench/attribution_cost.py`, "
        "commit 78fb63a; [docs/benchmarks.md](docs/benchmarks.md))."
        if walk_var else "Their cost: [docs/benchmarks.md](docs/benchmarks.md).")

    out["cluster", "jobs"] = (
        f"| `logits` | {n_models} models x {n_fl} flavors x {n_shards} shards = "
        f"**{n_models * n_fl * n_shards}**, plus {n_models} x {n_var} x {n_shards} = "
        f"{n_models * n_var * n_shards} for the default attribution's prompt variants "
        f"(`attr_*`, below): **{d.jobs}** | SLURM | from the model entry (below) |")

    tokens_line = (
        "Tokens the engine runs, all 57 subjects (SmolLM2 tokenizer, batched schedule at the "
        f"CUDA budget of {doc['max_batch_tokens']:,} tokens per forward): "
        + ", ".join(f"{f} {tok[f] / 1e6:.2f} M" for f in counted)
        + f"; total {sum(tok.values()) / 1e6:.2f} M, x{R.TOKENIZER_FACTOR} for the models' "
        f"tokenizers = {sum(tok.values()) * R.TOKENIZER_FACTOR / 1e6:.2f} M. Forward calls: "
        + ", ".join(f"{f} {fwd[f] / qs[f]:.2f}" for f in counted)
        + " per question (each reads all weights once: the weight-streaming term). "
        + (f"The {len(variants)} default variants: "
           + ", ".join(f"{t / 1e6:.2f} M" for t in var_tok) + " tokens."
           if len(var_tok) == len(variants) else
           f"The {len(variants)} default variants have no counts there and are sized as the "
           "mean of the four flavors (an overestimate)."))
    est = ["| model | params (B) | dtype | GPUs/job | jobs | tokens (M) | hours | GPU-hours |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for m in none.models:
        e = cfg["model_registry"][m["model"]]
        est.append(f"| {m['model']} | {e['params_b']} | {e.get('dtype')} | {m['gpus']} | "
                   f"{m['jobs']} | {m['tokens_m']} | {m['hours']} | {m['gpu_hours']} |")
    est.append(f"| **total** | | | | **{none.jobs}** | | {none.job_hours:.1f} | "
               f"**{none.gpu_hours:.1f}** |")
    out["cluster", "estimate"] = (
        tokens_line + "\n\nThe published table alone (four flavors, `attribution_variants: "
        "none`), as `mmlu-flavors plan` prints it per model:\n\n" + "\n".join(est))

    out["cluster", "attribution"] = (
        f"The run is then **{d.jobs} logits jobs and about {d.gpu_hours:.0f} GPU-hours** "
        f"(`mmlu-flavors plan --configfile blog.yaml`; "
        + ("the variants' tokens are counted in `resources/token_counts.json` like the "
           "flavors'" if len(var_tok) == len(variants) else "the variants are sized as the "
           "mean of the four flavors, an overestimate")
        + "). Walking both pairs "
        f"(`attribution_variants: walk`, {n_var_walk} variants per model) is {walk.jobs} jobs, "
        f"about {walk.gpu_hours:.0f} GPU-hours; for the table alone ({none.jobs} jobs, "
        f"~{none.gpu_hours:.0f} GPU-hours) set `attribution_pairs: [[\"harness (acc)\", helm], "
        "[\"harness (acc)\", original]]` with `attribution_variants: none`.")

    big = sorted(none.models, key=lambda m: -float(m["gpu_hours"]))[:2]
    out["cluster", "summary"] = (
        f"In short: **about {none.gpu_hours:.0f} A100-80GB GPU hours** for all eight models "
        f"and four implementations ({d.gpu_hours:.0f} with the default attribution), most of "
        f"it for {big[0]['model']} ({big[0]['gpu_hours']}) and {big[1]['model']} "
        f"({big[1]['gpu_hours']}). These are estimates from planned token counts and an "
        "assumed throughput, not measurements on a GPU. `harness_e47e01b` costs most: its "
        "few-shot examples differ per question (no shared prefix), and its prompts longer "
        f"than {doc['max_length']} tokens run as the reference's left-truncated sequences, one "
        "per continuation"
        + (f" ({trunc['harness_e47e01b']} such prompts; `harness_current` has "
           f"{trunc['harness_current']})." if None not in trunc.values() else "."))

    loads = {m: R.load_seconds(cfg["model_registry"][m]) for m in cfg["models"]}
    per_model_jobs = d.model(l65)["jobs"]
    out["cluster", "loading"] = (
        "* **Loading**: weights / 0.5 GB/s + 1 min per job (shared filesystem), i.e. "
        f"~{loads[l65] / 60:.0f} min for LLaMA-65B, paid by each of its {per_model_jobs} jobs.")

    res = ["| model | params (B) | dtype | jobs | `gpu` | `mem_mb` | `runtime` (min) | "
           "device_map |", "|---|---|---|---:|---|---|---|---|"]
    for m in cfg["models"]:
        js = [j for j in jobs if j["model"] == m]
        e = cfg["model_registry"][m]
        rt = sorted({j["runtime"] for j in js})
        res.append(f"| {m} | {e['params_b']} | {e.get('dtype')} | {len(js)} | "
                   f"{js[0].get('gpu', 0)} | {js[0]['mem_mb']} | {rt[0]}-{rt[-1]} | "
                   f"{e.get('device_map') or ''} |")
    out["cluster", "resources"] = "\n".join(res)

    out["cluster", "totals"] = (
        f"For `blog.yaml`, all assumed: {d.jobs} jobs, {d.gpu_hours:.1f} GPU-hours with the "
        f"embedded default's attribution; {walk.jobs} jobs, {walk.gpu_hours:.1f} GPU-hours "
        f"walking both pairs; {none.jobs} jobs, {none.gpu_hours:.1f} GPU-hours with no "
        "variants.")

    j65 = [j for j in jobs if j["model"] == l65]
    small = [j for j in jobs if j["model"] == "llama-7b"]
    worst = max(j65, key=lambda j: j["compute_s"])
    out["blog", "shards"] = "\n".join([
        f"# 57 subjects in shards of {cfg['subjects_per_shard']} -> {n_shards} shards per "
        f"model x flavor (the last holds one subject),",
        f"# {n_models} x {n_fl} x {n_shards} = {n_models * n_fl * n_shards} logits jobs for the "
        f"four flavors, {d.jobs} with the attribution variants of",
        "# config.yaml's default pairs (docs/cluster.md). Expected compute per 65B job",
        f"# (resources.compute_seconds, as mmlu-flavors plan): {_min(min(j['compute_s'] for j in j65))}"
        f" to {_min(worst['compute_s'])} min ({worst['flavor']},",
        f"# shard {worst['shard']}), plus ~{_min(loads[l65])} min loading "
        f"{R.weights_bytes(cfg['model_registry'][l65]) / R.GIB:.0f} GiB of weights; 7B jobs: "
        f"up to ~{_min(max(j['compute_s'] for j in small))} min",
        f"# compute + ~{_min(loads['llama-7b'])} min loading. Short enough that a killed or "
        "preempted job loses little",
        "# and the work spreads over many GPUs, long enough that loading stays a modest share.",
    ])
    return out


# ---------------------------------------------------------------- files

def _markers(kind: str, name: str) -> tuple[str, str]:
    if kind == "blog":
        return f"# BEGIN figures:{name} (bench/doc_figures.py)", f"# END figures:{name}"
    return (f"<!-- BEGIN figures:{name} (bench/doc_figures.py) -->",
            f"<!-- END figures:{name} -->")


def apply(text: str, kind: str, name: str, body: str, path: Path) -> str:
    begin, end = _markers(kind, name)
    pat = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if len(pat.findall(text)) != 1:
        raise SystemExit(f"{path}: expected one block {begin} ... {end}")
    return pat.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def regenerate() -> dict[Path, str]:
    """The new text of every file with figure blocks."""
    cfg = blog_config()
    new = blocks(plans(), job_rows(cfg), cfg)
    texts = {p: p.read_text() for p in FILES.values()}
    for (kind, name), body in new.items():
        path = FILES[kind]
        texts[path] = apply(texts[path], kind, name, body, path)
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 naming every file whose blocks are stale")
    ap.add_argument("--quick", action="store_true", help="the same as --check (CI)")
    a = ap.parse_args(argv)
    stale = []
    for path, text in regenerate().items():
        if text != path.read_text():
            stale.append(path)
            if not (a.check or a.quick):
                path.write_text(text)
    rel = ", ".join(str(p.relative_to(ROOT)) for p in stale)
    if a.check or a.quick:
        if stale:
            print(f"stale figures in {rel}: run python bench/doc_figures.py", file=sys.stderr)
            return 1
        print("every figure block is current")
        return 0
    print(f"rewrote {rel}" if stale else "every figure block was current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
