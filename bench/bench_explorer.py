"""Explorer at full size: build time, file sizes and page timings in Chromium.

Input: all 14,042 test questions' real prompts (every flavor, from the MMLU CSVs via
mmlu_flavors.prompts) and a synthetic cache for two models (tests/synthetic_cache.py,
one row per model x flavor x question, the real cache schema), reduced by every scorer.
Measures: `build_explorer` wall time; explorer.html and data sizes (total, largest subject);
in Chromium (Debian's, driven by Playwright): time from navigation to a ready page, to the
"implementations disagree" filter over all questions, and to a question of the largest
subject rendered (its data script loaded on demand).

    PYTHONPATH=workflow .venv/bin/python bench/bench_explorer.py --mmlu resources/mmlu \
        --json bench/results/explorer.json
    .venv/bin/python bench/bench_explorer.py --quick --work /tmp/bx   # CI: 2 subjects, no browser
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402

from synthetic_cache import cache_for_prompts  # noqa: E402

from mmlu_flavors.data import Source, load_questions  # noqa: E402
from mmlu_flavors.explorer import build_explorer  # noqa: E402
from mmlu_flavors.prompts import build_prompts  # noqa: E402
from mmlu_flavors.reduce import FLAVORS, predictions  # noqa: E402


def _ms(t0: float) -> float:
    return round(1000 * (time.perf_counter() - t0), 1)


def prepare(mmlu: Path, work: Path, models: dict[str, float],
            subjects: list[str] | None = None) -> tuple:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    questions = load_questions(Source("local", str(mmlu)), subjects)
    qpath = work / "questions.parquet"
    questions.write_parquet(qpath)
    prompt_paths, frames = [], []
    for f in FLAVORS:
        p = build_prompts(questions, f)
        prompt_paths.append(work / "prompts" / f"{f}.parquet")
        prompt_paths[-1].parent.mkdir(exist_ok=True)
        p.write_parquet(prompt_paths[-1])
        frames.append(p)
    cache = cache_for_prompts(pl.concat(frames), models, seed=0)
    cache_paths = []
    for (m, f), part in cache.group_by("model", "flavor"):
        cache_paths.append(work / "cache" / m / f / "all" / "part00.parquet")
        cache_paths[-1].parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(cache_paths[-1])
    pred_path = work / "predictions.parquet"
    predictions(cache).write_parquet(pred_path)
    print(f"inputs: {cache.height:,} cache rows, {questions.filter(pl.col('split') == 'test').height:,}"
          f" questions, prepared in {_ms(t0) / 1000:.1f} s", flush=True)
    return pred_path, prompt_paths, cache_paths, qpath


def browser_timings(html: Path, chromium: str, largest: str, rounds: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    res: dict[str, list[float]] = {"ready_ms": [], "disagree_filter_ms": [], "question_ms": []}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(rounds):
            ctx = b.new_context(viewport={"width": 1500, "height": 1000})
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(html.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            res["ready_ms"].append(_ms(t0))
            t0 = time.perf_counter()
            page.select_option("#filter", "disagree")
            page.wait_for_function("document.getElementById('count').textContent.includes(' of ')")
            res["disagree_filter_ms"].append(_ms(t0))
            page.select_option("#filter", "all")
            page.select_option("#subject", largest)
            t0 = time.perf_counter()
            page.click(f"#qlist li[data-subject='{largest}'] >> nth=0")
            page.wait_for_selector("#impls")
            res["question_ms"].append(_ms(t0))
            ctx.close()
        b.close()
    return {k: sorted(v)[len(v) // 2] for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mmlu", type=Path, default=ROOT / "resources" / "mmlu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_explorer"))
    ap.add_argument("--rounds", type=int, default=3, help="browser rounds (median reported)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "")
    ap.add_argument("--json", type=Path, help="write the figures and the machine here")
    ap.add_argument("--quick", action="store_true",
                    help="CI: 2 subjects, no browser (seconds)")
    a = ap.parse_args()
    load0 = machine.load_now()
    subjects = ["abstract_algebra", "anatomy"] if a.quick else None
    if a.quick:
        a.chromium = ""
    inputs = prepare(a.mmlu, a.work, {"model-a": 0.3, "model-b": 1.5}, subjects)
    out = a.work / "reports"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    info = build_explorer(*inputs, out / "explorer.html", out / "explorer")
    build_s = _ms(t0) / 1000
    print(f"build_explorer: {build_s:.1f} s; explorer.html {info['html_bytes'] / 1e6:.2f} MB; "
          f"data {info['data_bytes'] / 1e6:.1f} MB in {info['subjects']} files; largest "
          f"{info['largest_subject']} {info['largest_bytes'] / 1e6:.2f} MB; inline={info['inline']}")
    record = {"build_s": build_s, **{k: v for k, v in info.items()
                                     if isinstance(v, (int, float, str, bool))}}
    if not a.chromium:
        print("no chromium: browser timings skipped")
    else:
        t = browser_timings(out / "explorer.html", a.chromium, info["largest_subject"],
                            a.rounds)
        record["chromium"] = t
        _print_browser(t, a.rounds, info)
    if a.json:
        machine.write_results(a.json, record, quick=a.quick, load_start=load0)


def _print_browser(t: dict, rounds: int, info: dict) -> None:
    print(f"chromium (median of {rounds}): page ready {t['ready_ms']:.0f} ms; 'implementations "
          f"disagree' over all questions {t['disagree_filter_ms']:.0f} ms; first question of "
          f"{info['largest_subject']} (loads its data) {t['question_ms']:.0f} ms")


if __name__ == "__main__":
    main()
