"""Tables and plots from predictions: scores, the blog comparison, ranks, matrices, flips.

Entry point for Snakemake: `write_all(predictions_path, out_dir, blog_csv, hub_ids, seed,
n_boot)`; `output_names(models)` lists what it writes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mmlu_flavors import stats as st  # noqa: E402
from mmlu_flavors.categories import CATEGORY_NAMES  # noqa: E402
from mmlu_flavors.checks import read_predictions  # noqa: E402
from mmlu_flavors.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from mmlu_flavors.models import slugify  # noqa: E402
from mmlu_flavors.flavors import FLAVORS, implementations  # noqa: E402
from mmlu_flavors.reduce import SCORERS  # noqa: E402

FULL_MMLU_TEST = 14042
_PALETTE = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78")
_MARKERS = ("P", "X", "*", "h", "<", ">", "p")


def blog_columns() -> dict[str, tuple[str, ...]]:
    """Blog column -> our implementations compared with it (the definitions' `blog_column`;
    the post does not say whether its harness column is acc or acc_norm)."""
    out: dict[str, list[str]] = {}
    for name, i in implementations().items():
        if i.blog_column:
            out.setdefault(i.blog_column, []).append(name)
    return {k: tuple(v) for k, v in out.items()}


def impl_style(name: str) -> tuple[str, str]:
    """(colour, marker) of an implementation: its definition's, else a stable fallback."""
    impls = implementations()
    i = impls.get(name)
    k = list(impls).index(name) if i else 0
    return ((i.color if i and i.color else _PALETTE[k % len(_PALETTE)]),
            (i.marker if i and i.marker else _MARKERS[k % len(_MARKERS)]))


def model_slug(model: str) -> str:
    """The model's path slug (as in the workflow's paths): `matrix_<slug>.png`, ..."""
    return slugify(model)


def output_names(models: Sequence[str]) -> list[str]:
    """File names (relative to out_dir) that `write_all` writes for these models."""
    fixed = ["scores.csv", "scores.md", "blog_comparison.md", "rank_comparison.png",
             "flips.csv", "flips_summary.csv", "subject_scores.csv", "category_scores.csv",
             "differences.csv", "kendall.csv", "matrix.csv"]
    per_model = [f"{kind}_{model_slug(m)}.png" for m in models for kind in ("matrix", "subjects")]
    return fixed + per_model


# ---------------------------------------------------------------- formatting helpers

def _f(x: float | None, nd: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _ci(x: float, lo: float, hi: float, nd: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "—"  # a model x implementation that was not run
    return f"{_f(x, nd)} [{_f(lo, nd)}, {_f(hi, nd)}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _impls(s: st.Stats) -> list[str]:
    have = set(s.scores.get_column("implementation").to_list())
    return [i for i in implementations() if i in have]


def _models(s: st.Stats) -> list[str]:
    """Models ordered by their score under the implementation compared with the published
    table's `original` column (else the first implementation)."""
    impls = _impls(s)
    ref = next((i for i in impls if i in blog_columns().get("original", ())), impls[0])
    return (s.scores.filter(pl.col("implementation") == ref)
            .sort("score", "model", descending=[True, False]).get_column("model").to_list())


class _Scores(dict):
    """(model, implementation) -> its scores row; a pair that was not run (a chat flavor left
    out for a model without a chat template) reads as NaN everywhere, shown as "—"."""

    def __missing__(self, key: tuple[str, str]) -> dict:
        return {"model": key[0], "implementation": key[1], "score": np.nan,
                "score_lo": np.nan, "score_hi": np.nan, "micro": np.nan, "micro_lo": np.nan,
                "micro_hi": np.nan, "macro": np.nan, "macro_lo": np.nan, "macro_hi": np.nan,
                "rank": np.nan, "rank_lo": np.nan, "rank_hi": np.nan, "p_best": np.nan}


def _score_lookup(s: st.Stats) -> dict[tuple[str, str], dict]:
    return _Scores({(r["model"], r["implementation"]): r for r in s.scores.iter_rows(named=True)})


# ---------------------------------------------------------------- markdown

def scores_markdown(s: st.Stats, seed: int, n_boot: int) -> str:
    """Blog-style table (own averaging + 95% CI) followed by the supporting tables."""
    impls, models, sc = _impls(s), _models(s), _score_lookup(s)
    r0 = s.scores.row(0, named=True)
    nq, ns = r0["n_questions"], r0["n_subjects"]
    out = ["# MMLU score by implementation\n",
           f"{nq:,} test questions in {ns} subjects"
           + ("" if nq == FULL_MMLU_TEST else f" (**not** the full {FULL_MMLU_TEST:,}-question test set)")
           + f". Each cell: score under that implementation's own averaging, with a 95% "
           f"percentile bootstrap CI ({n_boot} paired resamples of questions within subjects, "
           f"seed {seed}).\n",
           "Averaging: micro = mean over questions (original, harness_current); macro = mean "
           "of the subject means (HELM, harness e47e01b / Open LLM Leaderboard).\n"]
    header = ["model"] + [f"{i} ({st.own_averaging()[i]})" for i in impls]
    rows = [[m] + [_ci(sc[m, i]["score"], sc[m, i]["score_lo"], sc[m, i]["score_hi"])
                   for i in impls] for m in models]
    out.append(_md_table(header, rows))

    out.append("\n## Both averages\n")
    rows = [[m, i, _ci(sc[m, i]["micro"], sc[m, i]["micro_lo"], sc[m, i]["micro_hi"]),
             _ci(sc[m, i]["macro"], sc[m, i]["macro_lo"], sc[m, i]["macro_hi"])]
            for m in models for i in impls if (m, i) in sc]
    out.append(_md_table(["model", "implementation", "micro [95% CI]", "macro [95% CI]"], rows))

    out.append("\n## Rank of each model (1 = best, own averaging; 95% bootstrap interval)\n")
    rows = [[m] + [f"{sc[m, i]['rank']:g} [{sc[m, i]['rank_lo']:g}–{sc[m, i]['rank_hi']:g}]"
                   if (m, i) in sc else "—" for i in impls] for m in models]
    out.append(_md_table(["model"] + impls, rows))

    out.append("\n## Kendall's tau-b between the model rankings\n")
    rows = [[r["implementation_a"], r["implementation_b"], r["n_models"],
             _ci(r["tau_b"], r["ci_lo"], r["ci_hi"], 2)] for r in s.kendall.iter_rows(named=True)]
    out.append(_md_table(["implementation a", "implementation b", "models", "tau-b [95% CI]"], rows)
               if len(models) >= 2 else "Needs at least two models.\n")

    out.append("\n## Differences between implementations (a − b, own averaging, paired)\n")
    d = s.differences.filter(pl.col("averaging") == "own")
    rows = [[r["model"], r["implementation_a"], r["implementation_b"],
             _ci(r["diff"], r["ci_lo"], r["ci_hi"])] for r in d.iter_rows(named=True)]
    out.append(_md_table(["model", "a", "b", "a − b [95% CI]"], rows))

    out.append("\n## Categories (original repo's map; micro within category, as the original)\n")
    c = {(r["model"], r["implementation"], r["category"]): r for r in s.categories.iter_rows(named=True)}
    cats = [k for k in CATEGORY_NAMES if any(key[2] == k for key in c)]
    rows = [[m, i] + [_ci(c[m, i, k]["micro"], c[m, i, k]["micro_lo"], c[m, i, k]["micro_hi"])
                      if (m, i, k) in c else "—" for k in cats]
            for m in models for i in impls]
    out.append(_md_table(["model", "implementation"] + list(cats), rows))

    out.append("\n## Flips: questions whose verdict differs between two implementations\n")
    rows = [[r["model"], r["implementation_a"], r["implementation_b"], r["n_flips"],
             f"{r['flip_rate']:.1%}", r["only_a"], r["only_b"]]
            for r in s.flip_summary.iter_rows(named=True)]
    out.append(_md_table(["model", "a", "b", "flips", "of questions", "only a right",
                          "only b right"], rows))
    return "\n".join(out)


BLOG_SCHEMA = {"model": pl.String, "hub_id": pl.String, "helm": pl.Float64,
               "harness": pl.Float64, "original": pl.Float64}


def read_blog(blog_csv: Path | str) -> pl.DataFrame:
    """The published table: model, hub_id, helm, harness, original (a score in [0, 1] or
    empty); anything else is a ValueError naming the file."""
    where = f"published table {blog_csv}"
    try:
        df = pl.read_csv(blog_csv, schema_overrides=BLOG_SCHEMA)
    except Exception as e:  # noqa: BLE001 - polars' parse errors are multi-line
        raise ValueError(f"{where}: not a CSV with columns {', '.join(BLOG_SCHEMA)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    missing = [c for c in BLOG_SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} missing")
    bad = df.filter(pl.any_horizontal([~pl.col(c).is_between(0, 1) for c in BLOG_SCHEMA
                                       if BLOG_SCHEMA[c] == pl.Float64]))
    if bad.height:
        raise ValueError(f"{where}: scores must lie in [0, 1]; row {bad.row(0)}")
    return df


def match_blog(models: Sequence[str], blog: pl.DataFrame, hub_ids: Mapping[str, str]
               ) -> dict[str, str]:
    """Our model name -> blog model name, matched by name or hub id (case-insensitive)."""
    by_name = {m.lower(): m for m in blog.get_column("model").to_list()}
    by_hub = {h.lower(): m for m, h in blog.select("model", "hub_id").iter_rows()}
    out = {}
    for m in models:
        keys = [m.lower(), (hub_ids.get(m) or "").lower()]
        hit = next((by_name.get(k) or by_hub.get(k) for k in keys
                    if k and (by_name.get(k) or by_hub.get(k))), None)
        if hit:
            out[m] = hit
    return out


def blog_markdown(s: st.Stats, blog: pl.DataFrame, hub_ids: Mapping[str, str]) -> str:
    """Our numbers beside the published ones (or a clear note that none of ours is there)."""
    models, sc = _models(s), _score_lookup(s)
    matched = match_blog(models, blog, hub_ids)
    nq = s.scores.row(0, named=True)["n_questions"]
    out = ["# Comparison with the published table\n",
           "Published: Hugging Face blog \"What's going on with the Open LLM Leaderboard?\" "
           "(June 2023), 5-shot MMLU. Ours: the same implementation re-implemented over one "
           "logits cache, each under its own averaging, with a 95% bootstrap CI. The post does "
           "not say whether its harness column is `acc` or `acc_norm`; both are shown.\n"]
    if nq != FULL_MMLU_TEST:
        out.append(f"**Caution:** this run covers {nq:,} questions, not the full "
                   f"{FULL_MMLU_TEST:,}-question test set; differences include sampling error.\n")
    if not matched:
        out.append(f"**None of the models in this run ({', '.join(models)}) is in the published "
                   "table** (matched by model name or hub id), so there is nothing to compare "
                   "directly; the published table is shown for reference.\n")
    else:
        rows = []
        pub = {r["model"]: r for r in blog.iter_rows(named=True)}
        for m, bm in matched.items():
            for col, impls in blog_columns().items():
                for i in impls:
                    if (m, i) not in sc:
                        continue
                    r, p = sc[m, i], pub[bm][col]
                    rows.append([m, bm, i, _ci(r["score"], r["score_lo"], r["score_hi"]),
                                 _f(p), f"{r['score'] - p:+.3f}" if p is not None else "—"])
        out.append(_md_table(["our model", "published as", "implementation", "ours [95% CI]",
                              "published", "ours − published"], rows))
    out.append("\n## Published table\n")
    rows = [[r["model"], r["hub_id"], _f(r["helm"]), _f(r["harness"]), _f(r["original"])]
            for r in blog.iter_rows(named=True)]
    out.append(_md_table(["model", "hub_id", "helm", "harness", "original"], rows))
    return "\n".join(out)


# ---------------------------------------------------------------- plots

def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_rank_comparison(s: st.Stats, path: Path) -> None:
    """Blog figure 1: x = implementation, y = rank (1 on top), one line per model."""
    impls, models, sc = _impls(s), _models(s), _score_lookup(s)
    n_m = len(models)
    fig, ax = plt.subplots(figsize=(2.2 * len(impls) + 4.0, max(3.2, 0.55 * n_m + 2.2)))
    cmap = plt.get_cmap("tab10" if n_m <= 10 else "tab20")
    x = np.arange(len(impls))
    # end labels of tied models are stacked vertically instead of printed on top of each other
    stack: dict[tuple[int, float], int] = {}

    def end_label(m: str, xi: float, ri: float, side: int, color) -> None:
        k = stack.setdefault((side, ri), 0)
        stack[side, ri] = k + 1
        ax.annotate(m, (xi, ri), xytext=(12 * side, -11 * k), textcoords="offset points",
                    ha="left" if side > 0 else "right", va="center", color=color, fontsize=9,
                    fontweight="bold")

    spread = min(0.36, 0.06 * (n_m - 1))
    for k, m in enumerate(models):
        color = cmap(k % cmap.N)
        off = (k / (n_m - 1) - 0.5) * spread if n_m > 1 else 0.0
        r = np.array([sc[m, i]["rank"] for i in impls])
        lo = np.array([sc[m, i]["rank_lo"] for i in impls])
        hi = np.array([sc[m, i]["rank_hi"] for i in impls])
        ax.vlines(x + off, lo, hi, color=color, lw=2.5, alpha=0.3, zorder=2)
        ax.plot(x + off, r, "-o", color=color, lw=2, ms=7, zorder=3)
        for xi, ri, i in zip(x, r, impls):
            if not np.isfinite(ri):  # not run for this model
                continue
            ax.annotate(f"{sc[m, i]['score']:.3f}", (xi + off, ri), xytext=(4, 4),
                        textcoords="offset points", fontsize=7, color=color)
        end_label(m, x[0] - spread / 2 - 0.02, r[0], -1, color)
        end_label(m, x[-1] + spread / 2 + 0.02, r[-1], +1, color)
    ax.set_xticks(x, [f"{i}\n({st.own_averaging()[i]})" for i in impls])
    ax.set_yticks(np.arange(1, n_m + 1))
    ax.set_ylim(n_m + 0.5, 0.5)
    ax.set_xlim(-0.5 - 0.4 * len(impls) / 3, len(impls) - 0.5 + 0.4 * len(impls) / 3)
    ax.set_ylabel("rank (1 = best)")
    ax.set_xlabel("MMLU implementation (averaging)")
    nq = s.scores.row(0, named=True)["n_questions"]
    ax.set_title(f"Model ranking under each MMLU implementation\n{n_m} model(s), {nq:,} questions;"
                 " numbers = score; shaded bars = 95% bootstrap interval of the rank", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _save(fig, path)


def plot_matrix(s: st.Stats, model: str, path: Path) -> None:
    """Heatmap prompt flavor x scorer (micro accuracy), published pairs outlined."""
    mm = s.matrix.filter(pl.col("model") == model)
    flavors = [f for f in FLAVORS if f in set(mm.get_column("prompt").to_list())]
    scorers = [c for c in SCORERS if c in set(mm.get_column("scorer").to_list())]
    cell = {(r["prompt"], r["scorer"]): r for r in mm.iter_rows(named=True)}
    val = np.array([[cell[f, c]["micro"] if (f, c) in cell else np.nan for c in scorers]
                    for f in flavors])
    fig, ax = plt.subplots(figsize=(1.9 * len(scorers) + 2.5, 1.1 * len(flavors) + 2.0))
    im = ax.imshow(val, cmap="viridis", vmin=np.nanmin(val), vmax=np.nanmax(val), aspect="auto")
    span = np.nanmax(val) - np.nanmin(val)
    for a, f in enumerate(flavors):
        for b, c in enumerate(scorers):
            v = val[a, b]
            if not np.isfinite(v):
                continue
            dark = span == 0 or (v - np.nanmin(val)) / span < 0.6
            r = cell[f, c]
            label = f"{v:.3f}"
            if r["diagonal"]:
                label += f"\n{r['implementation']}"
            ax.text(b, a, label, ha="center", va="center", fontsize=9,
                    color="white" if dark else "black",
                    fontweight="bold" if r["diagonal"] else "normal")
            if r["diagonal"]:
                ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, ec="red", lw=3))
    ax.set_xticks(range(len(scorers)), scorers, rotation=20, ha="right")
    ax.set_yticks(range(len(flavors)), flavors)
    ax.set_xlabel("scorer (how the answer is read from the model)")
    ax.set_ylabel("prompt flavor")
    nq = int(mm.get_column("n_questions").max())
    ax.set_title(f"{model}: accuracy by prompt flavor × scorer\n"
                 f"micro average over {nq:,} questions; red outline = published implementation",
                 fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (micro)", shrink=0.85)
    _save(fig, path)


def plot_subjects(s: st.Stats, model: str, path: Path) -> None:
    """Per-subject accuracy under each implementation, subjects grouped by category."""
    impls = _impls(s)
    sub = s.subjects.filter(pl.col("model") == model)
    order = {c: k for k, c in enumerate(CATEGORY_NAMES)}
    subj = (sub.select("subject", "category", "n").unique()
            .with_columns(_o=pl.col("category").replace_strict(order, return_dtype=pl.Int64))
            .sort("_o", "subject"))
    names = subj.get_column("subject").to_list()
    y = {n: k for k, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 0.26 * len(names) + 2.2))
    for i in impls:
        d = sub.filter(pl.col("implementation") == i)
        ax.scatter(d.get_column("accuracy"), [y[n] for n in d.get_column("subject")],
                   label=f"{i} ({st.own_averaging()[i]} overall)", color=impl_style(i)[0],
                   marker=impl_style(i)[1], s=26, alpha=0.85, zorder=3)
    ax.set_yticks(range(len(names)),
                  [f"{n} ({c})" for n, c in subj.select("subject", "n").iter_rows()], fontsize=7.5)
    cats = subj.get_column("category").to_list()
    for k in range(1, len(cats)):
        if cats[k] != cats[k - 1]:
            ax.axhline(k - 0.5, color="gray", lw=0.8)
    for c in dict.fromkeys(cats):
        ks = [k for k, cc in enumerate(cats) if cc == c]
        ax.text(1.01, min(ks) - 0.45, c.split(" (")[0], transform=ax.get_yaxis_transform(),
                va="top", ha="left", fontsize=8.5, color="dimgray", fontweight="bold")
    ax.axvline(0.25, color="black", ls=":", lw=1, label="chance (0.25)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(len(names) - 0.3, -0.7)  # first category on top
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", alpha=0.12)
    ax.set_xlabel("accuracy within subject")
    ax.set_ylabel("subject (n questions)")
    med_ci = float(np.nanmedian(sub.get_column("ci_hi") - sub.get_column("ci_lo")))
    ax.set_title(f"{model}: per-subject MMLU accuracy under each implementation\n"
                 f"{int(subj.get_column('n').sum()):,} questions; median 95% CI width per "
                 f"subject ≈ {med_ci:.2f}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / (0.26 * len(names) + 2.2)),
              ncol=3, fontsize=8, frameon=False)
    _save(fig, path)


# ---------------------------------------------------------------- entry point

def write_all(predictions_path: Path | str, out_dir: Path | str, blog_csv: Path | str | None,
              hub_ids: Mapping[str, str], seed: int, n_boot: int) -> dict[str, Path]:
    """Compute statistics from predictions.parquet and write every report file into out_dir.

    `blog_csv` None or empty: blog_comparison.md says that no published table was given.
    Returns file name -> path (the names are `output_names(models)`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = read_predictions(predictions_path)  # a damaged file stops here, named
    s = st.compute(pred, seed=seed, n_boot=n_boot)
    blog = read_blog(blog_csv) if blog_csv else None
    written: dict[str, Path] = {}

    def text(name: str, content: str) -> None:
        atomic_write_text(out / name, content)
        written[name] = out / name

    def csv(name: str, df: pl.DataFrame) -> None:
        text(name, df.write_csv())

    csv("scores.csv", s.scores)
    csv("subject_scores.csv", s.subjects)
    csv("category_scores.csv", s.categories)
    csv("differences.csv", s.differences)
    csv("kendall.csv", s.kendall)
    csv("matrix.csv", s.matrix)
    csv("flips.csv", s.flips)
    csv("flips_summary.csv", s.flip_summary)
    text("scores.md", scores_markdown(s, seed, n_boot))
    text("blog_comparison.md", blog_markdown(s, blog, hub_ids) if blog is not None else
         "# Comparison with the published table\n\nNo published table (blog csv) was given.\n")
    plot_rank_comparison(s, out / "rank_comparison.png")
    written["rank_comparison.png"] = out / "rank_comparison.png"
    for m in _models(s):
        for kind, fn in (("matrix", plot_matrix), ("subjects", plot_subjects)):
            name = f"{kind}_{model_slug(m)}.png"
            fn(s, m, out / name)
            written[name] = out / name
    return written


# ---------------------------------------------------------------- attribution

def plot_attribution(table: pl.DataFrame, model: str, path: Path) -> None:
    """Per pair: a waterfall of the walk (one factor per step, paired 95% CI of each change)
    beside the Shapley share of each factor (order-independent)."""
    t = table.filter(pl.col("model") == model)
    pairs = t.select("implementation_a", "implementation_b").unique(maintain_order=True).rows()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 3.6 * len(pairs) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1]})
    for (a, b), (ax, axs) in zip(pairs, axes):
        tp = t.filter((pl.col("implementation_a") == a) & (pl.col("implementation_b") == b))
        steps = tp.filter(pl.col("kind") == "step").sort("step").to_dicts()
        scores = [r["score"] for r in steps]
        lo_y = max(0.0, min(scores) - 0.08)
        hi_y = min(1.0, max(r["score_hi"] for r in steps) + 0.05)
        x = np.arange(len(steps) + 1)
        labels = [f"{a}\n({steps[0]['averaging']})"]
        ax.bar(0, scores[0] - lo_y, bottom=lo_y, color="#8c8c8c")
        ax.text(0, scores[0], f"{scores[0]:.3f}", ha="center", va="bottom", fontsize=8)
        for k, r in enumerate(steps[1:], start=1):
            d = r["contribution"]
            ax.bar(k, d, bottom=scores[k - 1], color="#2ca02c" if d >= 0 else "#d62728")
            ax.errorbar(k, scores[k], yerr=[[d - r["contribution_lo"]], [r["contribution_hi"] - d]],
                        color="black", capsize=3, lw=1)
            ax.text(k + 0.05, max(scores[k - 1], scores[k]) + 0.004, f"{d:+.3f}", ha="left",
                    va="bottom", fontsize=8)
            ax.plot([k - 1.4, k + 0.4], [scores[k - 1]] * 2, color="gray", lw=0.6, ls=":")
            free = r["factor"] in ("scoring", "averaging")
            labels.append(r["factor"].replace("+", "+\n") + (f"\n→ {r['to_level']}" if free else ""))
        ax.bar(len(steps), scores[-1] - lo_y, bottom=lo_y, color="#1f77b4")
        ax.text(len(steps), scores[-1], f"{scores[-1]:.3f}", ha="center", va="bottom", fontsize=8)
        labels.append(f"{b}\n({steps[-1]['averaging']})")
        ax.set_xticks(x, labels, fontsize=7.5)
        ax.set_ylim(lo_y, hi_y)
        ax.set_ylabel("score")
        ax.set_title(f"{a} → {b}: one factor at a time (order shown; bars: change, "
                     "whiskers: paired 95% CI)", fontsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        sh = tp.filter(pl.col("kind") == "shapley").to_dicts()
        y = np.arange(len(sh))
        vals = np.array([r["contribution"] for r in sh])
        axs.barh(y, vals, color=["#2ca02c" if v >= 0 else "#d62728" for v in vals])
        axs.errorbar(vals, y, xerr=[vals - np.array([r["contribution_lo"] for r in sh]),
                                    np.array([r["contribution_hi"] for r in sh]) - vals],
                     fmt="none", color="black", capsize=3, lw=1)
        axs.set_yticks(y, [r["factor"].replace("+", "+\n") for r in sh], fontsize=7.5)
        axs.invert_yaxis()
        axs.axvline(0, color="black", lw=0.8)
        grouped = sh and not sh[0]["per_factor"]
        axs.set_title("Shapley share (order-independent)" + (
            "\nprompt factors one player: not all their combinations were run" if grouped else ""),
            fontsize=9)
        axs.set_xlabel(f"change in score ({a} → {b})")
    nq = int(t.get_column("n_questions").max())
    fig.suptitle(f"{model}: why implementations disagree ({nq:,} questions)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def write_attribution(predictions_paths: Sequence[Path | str], out_dir: Path | str,
                      pairs: Sequence[Sequence[str]], order: Sequence[str], seed: int,
                      n_boot: int) -> dict[str, Path]:
    """attribution_<model>.csv and .png for every model: the run's predictions plus those of
    the attribution's prompt variants (their flavors registered)."""
    from mmlu_flavors import attribution as at

    out = Path(out_dir)
    pred = pl.concat([pl.read_parquet(p) for p in predictions_paths], how="vertical_relaxed")
    table = at.attribution_table(pred, pairs, None, order, n_boot=n_boot, seed=seed)
    written: dict[str, Path] = {}
    for m in sorted(pred.get_column("model").unique().to_list()):
        base = f"attribution_{model_slug(m)}"
        atomic_write_text(out / f"{base}.csv", table.filter(pl.col("model") == m).write_csv())
        plot_attribution(table, m, out / f"{base}.png")
        written[f"{base}.csv"], written[f"{base}.png"] = out / f"{base}.csv", out / f"{base}.png"
    return written
