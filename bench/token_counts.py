"""Token counts of the full MMLU test set (14,042 questions) per flavor and subject, and the
GPU-hour estimate for the blog's eight models that follows from them.

For every prompt flavor this applies the flavor's own token rule (`tokenize.tokenize_row`,
exactly what a logits job does) with a given tokenizer and counts, per subject:

* `questions`
* `context_tokens`: sum of the context lengths (the prompt as the model sees it)
* `continuation_tokens`: sum of the lengths of the 8 scored continuations
  (" A".." D" and " " + each choice text)
* `engine_tokens`: the tokens the fast engine (`engine.run_fast`) actually feeds through the
  model: a shared few-shot prefix once per run of consecutive questions
  (`engine.group_by_prefix`), then each context's own suffix once, then the continuations as
  right-padded batches of `batch_size` rows (padding included); a request that needs left
  truncation is counted as the naive path does (context + one forward per continuation).
  This is the sum of the unique prefix-tree tokens the engine runs, plus the padding.
* `naive_fallbacks`, `truncated`

Usage (defaults: the converted SmolLM2 tokenizer, LLaMA's 2048-token context):

    .venv/bin/python bench/token_counts.py                      # table + estimate
    .venv/bin/python bench/token_counts.py --csv reports/token_counts.csv
    .venv/bin/python bench/token_counts.py --update-resources   # rewrite the table in
                                                                # workflow/mmlu_flavors/resources.py

The blog's models use other tokenizers (LLaMA-1: 32k SentencePiece, Falcon, GPT-NeoX and
RedPajama: ~50-65k byte-level BPE); LLaMA's tokenizer is not available offline here. The
counts are made with SmolLM2's 49k byte-level BPE and multiplied by
`resources.TOKENIZER_FACTOR` (1.2, an assumption: SentencePiece with a 32k vocabulary
typically needs 10-20 % more tokens for English text than a ~50k BPE) for every model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

import polars as pl  # noqa: E402

from mmlu_flavors import resources  # noqa: E402
from mmlu_flavors.data import SUBJECTS  # noqa: E402
from mmlu_flavors.engine import MIN_SHARED_PREFIX, _needs_truncation, group_by_prefix  # noqa: E402
from mmlu_flavors.tokenize import tokenize_row  # noqa: E402

from mmlu_flavors.reduce import FLAVORS  # noqa: E402
BLOG_MODELS = ROOT / "blog.yaml"


def engine_tokens(requests, batch_size: int) -> tuple[int, int]:
    """Tokens run_fast feeds through the model for these requests (in this order), and the
    number of naive fallbacks. Mirrors engine.run_fast / _Fast.request / _naive_one."""
    total = fallbacks = 0
    for prefix_len, members in group_by_prefix(requests, MIN_SHARED_PREFIX):
        prefix_done = False
        for i in members:
            r = requests[i]
            if _needs_truncation(r):
                fallbacks += 1
                total += len(r.context[-r.max_length:])
                total += sum(len((list(r.context) + list(c))[-(r.max_length + 1):][:-1])
                             for c in r.continuations if c)
                continue
            if prefix_len and not prefix_done:
                total += prefix_len
                prefix_done = True
            total += len(r.context) - (prefix_len if prefix_done else 0)
            rows = [len(c) - 1 for c in r.continuations if len(c) > 1]
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                total += len(chunk) * max(chunk)
    return total, fallbacks


def count(prompts_dir: Path, tokenizer, max_length: int, batch_size: int) -> pl.DataFrame:
    out = []
    for flavor in FLAVORS:
        t0 = time.perf_counter()
        df = pl.read_parquet(prompts_dir / f"{flavor}.parquet").sort("subject", "index")
        for subject in SUBJECTS:
            rows = df.filter(pl.col("subject") == subject).to_dicts()
            tok = [tokenize_row(r, tokenizer, max_length) for r in rows]
            reqs = [t.request for t in tok]
            eng, naive = engine_tokens(reqs, batch_size)
            out.append(dict(
                flavor=flavor, subject=subject, questions=len(reqs),
                context_tokens=sum(len(r.context) for r in reqs),
                continuation_tokens=sum(len(c) for r in reqs for c in r.continuations),
                engine_tokens=eng, naive_fallbacks=naive,
                truncated=sum(t.truncated for t in tok)))
        print(f"  {flavor}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return pl.DataFrame(out)


def python_table(counts: pl.DataFrame) -> str:
    """The TOKEN_COUNTS literal of resources.py: flavor -> subject -> (questions, engine_tokens)."""
    lines = ["TOKEN_COUNTS = {"]
    for flavor in FLAVORS:
        lines.append(f"    {flavor!r}: {{")
        for r in counts.filter(pl.col("flavor") == flavor).iter_rows(named=True):
            lines.append(f"        {r['subject']!r}: ({r['questions']}, {r['engine_tokens']}),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


def update_resources(counts: pl.DataFrame, tokenizer_name: str) -> None:
    path = ROOT / "workflow" / "mmlu_flavors" / "resources.py"
    text = path.read_text()
    begin, end = "# BEGIN TOKEN_COUNTS", "# END TOKEN_COUNTS"
    block = (f"{begin} (generated by bench/token_counts.py, tokenizer {tokenizer_name})\n"
             f"{python_table(counts)}\n{end}")
    new, n = re.subn(rf"{re.escape(begin)}.*?{re.escape(end)}", lambda _: block, text,
                     flags=re.S)
    if n != 1:
        raise SystemExit(f"{path}: no {begin} ... {end} block")
    path.write_text(new)
    print(f"updated {path}", file=sys.stderr)


def estimate(counts: pl.DataFrame, models: dict[str, dict]) -> str:
    """Markdown table: GPU hours per model for all four flavors on the full test set."""
    per_flavor = {f: int(counts.filter(pl.col("flavor") == f)["engine_tokens"].sum())
                  for f in FLAVORS}
    tokens = sum(per_flavor.values()) * resources.TOKENIZER_FACTOR
    x = resources.ACHIEVED_FLOPS
    lines = [
        "Tokens run by the engine, all 57 subjects (SmolLM2 tokenizer): "
        + ", ".join(f"{f} {per_flavor[f] / 1e6:.2f} M" for f in FLAVORS)
        + f"; total {sum(per_flavor.values()) / 1e6:.2f} M, x{resources.TOKENIZER_FACTOR} "
        f"for the models' tokenizers = {tokens / 1e6:.2f} M.",
        f"Achieved throughput assumed: {x / 1e12:.0f} TFLOP/s "
        f"({resources.ACHIEVED_FRACTION:.0%} of an A100's 312 TFLOP/s bf16/fp16 peak); "
        "with device_map=auto the GPUs of a job run one after another (pipeline without "
        "overlap), so wall time does not shrink with more GPUs but GPU hours grow. "
        f"Plus weight streaming: {resources.FORWARDS_PER_QUESTION} forwards per question, each "
        f"reading all weights at {resources.HBM_BYTES_PER_S / 1e12:.1f} TB/s.",
        "",
        "| model | params (B) | dtype | GPUs/job | compute h (wall) | GPU h (compute) | "
        "GPU h incl. loading per job (shards x flavors) |",
        "|---|---|---|---|---|---|---|",
    ]
    total_gpu_h = 0.0
    for name, e in models.items():
        n_q = int(counts.filter(pl.col("flavor") == FLAVORS[0])["questions"].sum()) * len(FLAVORS)
        wall_h = resources.compute_seconds(e, tokens, n_q, 1) / 3600
        g = max(1, resources.gpu_count(e))
        n_jobs = e.get("_jobs", 4)
        load_h = n_jobs * resources.load_seconds(e) / 3600
        total_gpu_h += g * (wall_h + load_h)
        lines.append(f"| {name} | {e['params_b']} | {e.get('dtype')} | {g} | {wall_h:.1f} | "
                     f"{g * wall_h:.1f} | {g * (wall_h + load_h):.1f} |")
    lines.append(f"| **total** | | | | | | **{total_gpu_h:.0f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", default=str(ROOT / "data/models/smollm2-135m-instruct"),
                    help="a tokenizer directory (default: the converted SmolLM2)")
    ap.add_argument("--prompts", default=str(ROOT / "data/prompts"),
                    help="directory with {flavor}.parquet of all 14,042 questions "
                         "(`snakemake --cores 2 data/prompts/{original,helm,...}.parquet`)")
    ap.add_argument("--max-length", type=int, default=2048, help="model context (LLaMA: 2048)")
    ap.add_argument("--batch-size", type=int, default=8, help="continuation batch rows")
    ap.add_argument("--csv", help="write the per flavor x subject table here")
    ap.add_argument("--from-csv", help="read the table written by --csv instead of counting")
    ap.add_argument("--update-resources", action="store_true",
                    help="rewrite TOKEN_COUNTS in workflow/mmlu_flavors/resources.py")
    ap.add_argument("--blog", default=str(BLOG_MODELS), help="config with the blog's models")
    a = ap.parse_args()

    from transformers import AutoTokenizer
    import yaml

    if a.from_csv:
        counts = pl.read_csv(a.from_csv)
    else:
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
        counts = count(Path(a.prompts), tokenizer, a.max_length, a.batch_size)
    if a.csv:
        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        counts.write_csv(a.csv)
    if a.update_resources:
        update_resources(counts, Path(a.tokenizer).name)
    summary = counts.group_by("flavor", maintain_order=True).agg(
        pl.col("questions", "context_tokens", "continuation_tokens", "engine_tokens",
               "naive_fallbacks", "truncated").sum())
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(summary)
    cfg = yaml.safe_load(Path(a.blog).read_text())
    reg = cfg["model_registry"]
    n_shards = -(-57 // int(cfg.get("subjects_per_shard", 57)))
    models = {m: {**reg[m], "_jobs": 4 * n_shards} for m in cfg["models"]}
    print()
    print(estimate(counts, models))
    print(json.dumps({"tokenizer": a.tokenizer, "max_length": a.max_length}))


if __name__ == "__main__":
    main()
