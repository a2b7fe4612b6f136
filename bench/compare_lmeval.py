"""Per-question agreement of an lm-eval flavor of mmlu-flavors with the real lm-eval 0.4.13.

Flavors and how lm-eval runs them (``lmeval_local.FLAVOR_RUNS``): ``harness_current`` = task
``mmlu``; ``lmeval_continuation`` = ``mmlu_continuation``; ``lmeval_chat`` = ``mmlu`` with
``--apply_chat_template --fewshot_as_multiturn``. Runs lm-evaluation-harness
(``bench/lmeval_local.run_lmeval``: its own task yamls, 5-shot, on the local MMLU CSVs and a
local model directory) and our pipeline in the same process on the same questions and the
same weights (float32, CPU), and joins them per (subject, index):

* ``lm_loglik`` / ``our_loglik``: lm-eval's summed log-prob of each of its 4 continuations and
  the cache family the flavor's own scorer reads (``letter_cont_sum`` for ``loglik_letter``,
  ``text_cont_sum`` for ``loglik_acc``);
* ``lm_pred`` / ``our_pred``: argmax of each (``reduce.PRED_FUNCS`` of the scorer for ours);
* ``max_abs_diff``: max over the 4 choices of |Δ loglik|; ``tie``: our top two within 1e-4;
* ``same_context``: lm-eval's context string equals our prompt byte for byte (for the chat
  flavor: the string the tokenizer's chat template rendered);
* ``lm_acc_norm`` / ``our_acc_norm`` where the task reports acc_norm.

    .venv/bin/python bench/compare_lmeval.py data/models/smollm2-135m-instruct \\
        --flavor lmeval_continuation --mmlu resources/mmlu --subjects abstract_algebra --limit 20

prints n questions, n same prediction, max |Δ loglik|, and writes the disagreeing rows
(different prediction or |Δ| > --tol) to a CSV (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "workflow"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench import lmeval_local  # noqa: E402  (sets the offline flags before HF imports)

import polars as pl  # noqa: E402

TOL = 1e-3
TIE = 1e-4
FLAVOR = "harness_current"
# scorer -> the cache family it reads
SUM_COLUMN = {"loglik_letter": "letter_cont_sum", "loglik_acc": "text_cont_sum"}


def ours(model_dir: str | Path, mmlu_dir: str | Path, subjects: list[str],
         limit: int | None, num_fewshot: int = 5, loaded: Any = None,
         timings: dict | None = None, flavor: str = FLAVOR) -> pl.DataFrame:
    """Our flavor per question: subject, index, our_loglik (4), our_pred, our_acc_norm, gold,
    prompt, context_tokens."""
    from mmlu_flavors.cache import rows_from_results
    from mmlu_flavors.data import read_local
    from mmlu_flavors.engine import EngineStats, run_fast
    from mmlu_flavors.flavors import get_flavor
    from mmlu_flavors.models import load_model
    from mmlu_flavors.prompts import build_prompts
    from mmlu_flavors.reduce import PRED_FUNCS, pred_loglik_acc_norm
    from mmlu_flavors.tokenize import letter_ids, tokenize_row

    t0 = time.perf_counter()
    scorer = get_flavor(flavor).scorer
    lm = loaded if loaded is not None else load_model(
        {"source": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu"})
    qs = read_local(mmlu_dir, subjects)
    prompts = build_prompts(qs, flavor, num_fewshot=num_fewshot, subjects=subjects,
                            questions_per_subject=limit)
    rows = prompts.to_dicts()
    tokenized = [tokenize_row(r, lm.tokenizer, lm.max_length) for r in rows]
    letters = letter_ids(lm.tokenizer)
    stats = EngineStats()
    results = run_fast(lm.model, [t.request for t in tokenized], letters, progress=False,
                       stats=stats)
    cache = rows_from_results(lm.name, rows, tokenized, results, letters, lm.tokenizer)
    if timings is not None:
        timings.update(ours_s=time.perf_counter() - t0, ours_tokens=stats.tokens)
    norm = pred_loglik_acc_norm(cache).cast(pl.Int64)
    return cache.select(
        "subject", "index",
        pl.col(SUM_COLUMN[scorer]).alias("our_loglik"),
        PRED_FUNCS[scorer](cache).cast(pl.Int64).alias("our_pred"),
        (norm == pl.col("gold").cast(pl.Int64)).cast(pl.Float64).alias("our_acc_norm"),
        pl.col("gold").cast(pl.Int64).alias("our_gold"),
        pl.Series("prompt", [t.prompt for t in tokenized]),
        "context_tokens", "truncated",
    )


def compare(model_dir: str | Path, mmlu_dir: str | Path, subjects: list[str],
            limit: int | None, num_fewshot: int = 5, batch_size: int = 1,
            timings: dict | None = None, flavor: str = FLAVOR) -> pl.DataFrame:
    """One row per question: lm-eval's and our 4 log-likelihoods and predictions, the
    largest |Δ loglik|, whether the predictions and the context strings agree."""
    variant, chat, multiturn = lmeval_local.FLAVOR_RUNS[flavor]
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    lm = lmeval_local.run_lmeval(model_dir, mmlu_dir, subjects, limit, num_fewshot,
                                 batch_size, with_prompts=True, variant=variant,
                                 apply_chat_template=chat, fewshot_as_multiturn=multiturn)
    timings["lmeval_s"] = time.perf_counter() - t0
    our = ours(model_dir, mmlu_dir, subjects, limit, num_fewshot, timings=timings,
               flavor=flavor)
    lm = lm.select("subject", "index", pl.col("loglik").alias("lm_loglik"),
                   pl.col("pred").alias("lm_pred"), pl.col("gold").alias("lm_gold"),
                   pl.col("acc_norm").alias("lm_acc_norm"), "context")
    df = lm.join(our, on=["subject", "index"], how="full", coalesce=True)
    missing = df.filter(pl.col("lm_loglik").is_null() | pl.col("our_loglik").is_null())
    if missing.height:
        raise AssertionError(f"questions present on one side only: "
                             f"{missing.select('subject', 'index').to_dicts()[:5]}")
    d = [max(abs(a - b) for a, b in zip(x, y))
         for x, y in zip(df["lm_loglik"].to_list(), df["our_loglik"].to_list())]
    tie = [sorted(x)[-1] - sorted(x)[-2] < TIE for x in df["our_loglik"].to_list()]
    return (df.with_columns(
        pl.Series("max_abs_diff", d, dtype=pl.Float64),
        pl.Series("tie", tie, dtype=pl.Boolean),
        same_pred=pl.col("lm_pred") == pl.col("our_pred"),
        same_context=pl.col("context") == pl.col("prompt"),
        same_gold=pl.col("lm_gold") == pl.col("our_gold"),
    ).drop("prompt").sort("subject", "index"))


def summary(df: pl.DataFrame, tol: float = TOL) -> dict[str, Any]:
    return {
        "questions": df.height,
        "same_prediction": int(df["same_pred"].sum()),
        "ties": int(df["tie"].sum()),
        "differ_not_tie": int((~df["same_pred"] & ~df["tie"]).sum()),
        "same_acc_norm": (int((df["lm_acc_norm"] == df["our_acc_norm"]).sum())
                          if df["lm_acc_norm"].null_count() < df.height else None),
        "same_context": int(df["same_context"].sum()),
        "max_abs_diff": float(df["max_abs_diff"].max()) if df.height else 0.0,
        "over_tol": int((df["max_abs_diff"] > tol).sum()),
        "lm_acc": float((df["lm_pred"] == df["lm_gold"]).mean()) if df.height else 0.0,
        "our_acc": float((df["our_pred"] == df["our_gold"]).mean()) if df.height else 0.0,
    }


def disagreements(df: pl.DataFrame, tol: float = TOL) -> pl.DataFrame:
    return df.filter(~pl.col("same_pred") | (pl.col("max_abs_diff") > tol)
                     | ~pl.col("same_context"))


def _csv_safe(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        pl.col("lm_loglik").list.eval(pl.element().cast(pl.String)).list.join(" "),
        pl.col("our_loglik").list.eval(pl.element().cast(pl.String)).list.join(" "),
    ).drop("context")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--quick", action="store_true",
                    help="CI: a tiny random model (bench/quick.py), abstract_algebra x 2, 1 shot")
    ap.add_argument("--flavor", default=FLAVOR, choices=sorted(lmeval_local.FLAVOR_RUNS))
    ap.add_argument("--mmlu", default=str(ROOT / "resources" / "mmlu"))
    ap.add_argument("--subjects", default="abstract_algebra,us_foreign_policy")
    ap.add_argument("--limit", type=int, default=5, help="questions per subject (first N)")
    ap.add_argument("--num-fewshot", type=int, default=5)
    ap.add_argument("--tol", type=float, default=TOL)
    ap.add_argument("--batch-size", type=int, default=1, help="lm-eval's batch size")
    ap.add_argument("--out", default="lmeval_disagreements.csv",
                    help="CSV of disagreeing questions")
    ap.add_argument("--all-out", help="also write every question (parquet)")
    a = ap.parse_args(argv)
    if a.quick:
        import tempfile

        from bench import quick

        a.model_dir = str(quick.tiny_model_dir(Path(tempfile.mkdtemp()) / "tiny"))
        a.subjects, a.limit, a.num_fewshot = "abstract_algebra", 2, 1
    if not a.model_dir:
        ap.error("give a model directory, or --quick")
    subjects = [s for s in a.subjects.split(",") if s]
    timings: dict = {}
    df = compare(a.model_dir, a.mmlu, subjects, a.limit, a.num_fewshot, a.batch_size,
                 timings=timings, flavor=a.flavor)
    s = summary(df, a.tol)
    bad = disagreements(df, a.tol)
    per_subject = (df.group_by("subject", maintain_order=True)
                   .agg(n=pl.len(), same_pred=pl.col("same_pred").sum(),
                        same_context=pl.col("same_context").sum(),
                        max_abs_diff=pl.col("max_abs_diff").max(),
                        mean_context_tokens=pl.col("context_tokens").mean().round(0)))
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_hide_dataframe_shape=True,
                   float_precision=None):
        print(per_subject)
    print(f"flavor {a.flavor}; model {a.model_dir}; subjects {','.join(subjects)}; "
          f"limit {a.limit}; {a.num_fewshot}-shot")
    print(f"questions {s['questions']}, same prediction {s['same_prediction']}, "
          f"same context string {s['same_context']}, max |Δ loglik| {s['max_abs_diff']:.3g} "
          f"({s['over_tol']} over {a.tol:g}); acc lm-eval {s['lm_acc']:.4f} ours "
          f"{s['our_acc']:.4f}; ties within {TIE:g} {s['ties']}, different prediction "
          f"outside a tie {s['differ_not_tie']}"
          + (f"; same acc_norm {s['same_acc_norm']}" if s["same_acc_norm"] is not None else ""))
    print(f"timings: lm-eval {timings['lmeval_s']:.1f}s, ours {timings['ours_s']:.1f}s "
          "(each includes model load)")
    _csv_safe(bad).write_csv(a.out)
    print(f"{bad.height} disagreeing questions written to {a.out}")
    if a.all_out:
        df.write_parquet(a.all_out)
    return 0 if bad.height == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
