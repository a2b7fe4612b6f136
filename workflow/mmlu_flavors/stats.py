"""Aggregation as each reference does it, paired bootstrap CIs, ranks, Kendall tau, flips.

Averaging: micro = mean over questions; macro = unweighted mean of the subject means. Both are
always computed; `own_averaging()` (from the flavor definitions) gives each implementation's own convention (original and
harness_current micro, HELM and harness e47e01b macro). Categories follow the original repo:
micro within a category (macro within a category is given too).

Bootstrap: questions are resampled with replacement within each subject (subject sizes fixed),
with ONE set of resamples (a seeded numpy Generator, depending only on the seed and the subject
sizes) applied to every model x implementation, so differences and ranks are paired.
CIs are percentile intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import polars as pl

from mmlu_flavors.categories import category_of
from mmlu_flavors.flavors import implementations


def own_averaging() -> dict[str, str]:
    """Implementation name -> its own averaging (micro | macro), from the flavor definitions."""
    return {n: i.averaging for n, i in implementations().items()}


def impl_order() -> tuple[str, ...]:
    """Implementation names in table order (registry order, then each flavor's scorers)."""
    return tuple(implementations())


# ---------------------------------------------------------------- point estimates

def implementation_table() -> pl.DataFrame:
    """implementation, prompt, scorer, averaging (its own convention)."""
    impls = implementations()
    return pl.DataFrame(
        {
            "implementation": list(impls),
            "prompt": [i.flavor for i in impls.values()],
            "scorer": [i.scorer for i in impls.values()],
            "averaging": [i.averaging for i in impls.values()],
        },
        schema={"implementation": pl.String, "prompt": pl.String, "scorer": pl.String,
                "averaging": pl.String},
    )


def diagonal(pred: pl.DataFrame) -> pl.DataFrame:
    """Predictions of the published implementations, with an `implementation` column."""
    return pred.join(implementation_table().drop("averaging"), on=["prompt", "scorer"],
                     how="inner")


def with_category(df: pl.DataFrame) -> pl.DataFrame:
    """Add the original repo's category of `subject`."""
    subjects = df.get_column("subject").unique().to_list()
    mapping = {s: category_of(s) for s in subjects}
    return df.with_columns(category=pl.col("subject").replace_strict(mapping, return_dtype=pl.String))


def subject_accuracy(pred: pl.DataFrame, by: tuple[str, ...] = ("model", "prompt", "scorer")
                     ) -> pl.DataFrame:
    """by + subject: n, n_correct, accuracy."""
    return (pred.group_by([*by, "subject"])
            .agg(n=pl.len().cast(pl.Int64), n_correct=pl.col("correct").sum().cast(pl.Int64))
            .with_columns(accuracy=pl.col("n_correct") / pl.col("n"))
            .sort([*by, "subject"]))


def micro_macro(pred: pl.DataFrame, by: tuple[str, ...] = ("model", "prompt", "scorer")
                ) -> pl.DataFrame:
    """by: n_questions, n_subjects, micro (mean over questions), macro (mean of subject means)."""
    return (subject_accuracy(pred, by)
            .group_by(list(by))
            .agg(n_questions=pl.col("n").sum(), n_subjects=pl.len().cast(pl.Int64),
                 micro=pl.col("n_correct").sum() / pl.col("n").sum(),
                 macro=pl.col("accuracy").mean())
            .sort(list(by)))


def category_accuracy(pred: pl.DataFrame, by: tuple[str, ...] = ("model", "prompt", "scorer")
                      ) -> pl.DataFrame:
    """Per category (original's map): micro (the original's own) and macro."""
    return micro_macro(with_category(pred), (*by, "category"))


# ---------------------------------------------------------------- bootstrap core

@dataclass(frozen=True)
class SubjectBootstrap:
    """Bootstrap of per-subject means for K columns (e.g. model x implementation)."""

    columns: pl.DataFrame   # K rows, the column keys, in axis order
    subjects: list[str]     # S subjects, sorted
    n: np.ndarray           # (S,) questions per subject
    point: np.ndarray       # (S, K) subject means
    boot: np.ndarray        # (S, B, K) bootstrap subject means

    def _mask(self, subjects: list[str] | None) -> np.ndarray:
        if subjects is None:
            return np.ones(len(self.subjects), dtype=bool)
        return np.isin(self.subjects, subjects)

    def micro(self, subjects: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(point (K,), boot (B, K)) of the question-weighted mean over `subjects`."""
        m = self._mask(subjects)
        w = self.n[m] / self.n[m].sum()
        return w @ self.point[m], np.tensordot(w, self.boot[m], axes=1)

    def macro(self, subjects: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(point (K,), boot (B, K)) of the unweighted mean of subject means."""
        m = self._mask(subjects)
        return self.point[m].mean(axis=0), self.boot[m].mean(axis=0)

    def average(self, how: str, subjects: list[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        return self.micro(subjects) if how == "micro" else self.macro(subjects)


def subject_resample_counts(n_subject: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_subject) times each question is drawn when resampling n_subject with replacement."""
    draws = rng.integers(0, n_subject, size=(n_boot, n_subject))
    flat = (np.arange(n_boot)[:, None] * n_subject + draws).ravel()
    return np.bincount(flat, minlength=n_boot * n_subject).reshape(n_boot, n_subject).astype(
        np.float64)


def bootstrap_subject_means(pred: pl.DataFrame, keys: tuple[str, ...], n_boot: int, seed: int
                            ) -> SubjectBootstrap:
    """Paired bootstrap of subject means for every combination of `keys` in `pred`.

    Every combination must cover the same questions (else ValueError): the same resample is
    applied to all of them.
    """
    questions = pred.select("subject", "index").unique().sort("subject", "index")
    cols = pred.select(list(keys)).unique().sort(list(keys))
    counts = pred.group_by(list(keys)).len()
    bad = counts.filter(pl.col("len") != questions.height)
    if bad.height:
        raise ValueError(
            f"paired bootstrap needs the same {questions.height} questions for every "
            f"{'/'.join(keys)}; these differ: {bad.rows()[:5]}")
    wide = pred.sort([*keys, "subject", "index"])
    corr = wide.get_column("correct").cast(pl.Float64).to_numpy().reshape(cols.height, -1)
    subj = questions.get_column("subject").to_numpy()
    subjects = sorted(set(subj.tolist()))
    rng = np.random.default_rng(seed)
    n = np.array([(subj == s).sum() for s in subjects])
    point = np.empty((len(subjects), cols.height))
    boot = np.empty((len(subjects), n_boot, cols.height))
    start = 0
    for i, (s, n_s) in enumerate(zip(subjects, n)):
        c_s = corr[:, start:start + n_s]          # (K, n_s); questions sorted by subject
        start += n_s
        point[i] = c_s.mean(axis=1)
        boot[i] = subject_resample_counts(int(n_s), n_boot, rng) @ c_s.T / n_s
    return SubjectBootstrap(cols, subjects, n, point, boot)


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap samples (NaNs ignored)."""
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(samples, [a, 1.0 - a], axis=axis)
    return lo, hi


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank along the last axis, 1 = highest score, ties get the average rank."""
    s = scores[..., :, None]
    t = scores[..., None, :]
    higher = (t > s).sum(axis=-1)
    ties = (t == s).sum(axis=-1) - 1
    return 1.0 + higher + 0.5 * ties


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b along the last axis (batched); NaN when a ranking is all ties.

    tau_b = (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[-1]
    iu = np.triu_indices(n, k=1)
    sx = np.sign(x[..., :, None] - x[..., None, :])[..., iu[0], iu[1]]
    sy = np.sign(y[..., :, None] - y[..., None, :])[..., iu[0], iu[1]]
    num = (sx * sy).sum(axis=-1)
    den = np.sqrt((sx != 0).sum(axis=-1).astype(np.float64) * (sy != 0).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ---------------------------------------------------------------- flips

def flips(pred: pl.DataFrame) -> pl.DataFrame:
    """Questions whose verdict differs between two published implementations, per model."""
    d = diagonal(pred).select("model", "implementation", "subject", "index", "gold", "pred",
                              "correct")
    out = []
    present = [i for i in impl_order() if i in set(d.get_column("implementation").to_list())]
    for a, b in combinations(present, 2):
        da = d.filter(pl.col("implementation") == a).drop("implementation")
        db = d.filter(pl.col("implementation") == b).drop("implementation", "gold")
        j = (da.join(db, on=["model", "subject", "index"], suffix="_b")
             .rename({"pred": "pred_a", "correct": "correct_a"})
             .filter(pl.col("correct_a") != pl.col("correct_b"))
             .select("model", pl.lit(a).alias("implementation_a"),
                     pl.lit(b).alias("implementation_b"), "subject", "index", "gold",
                     "pred_a", "pred_b", "correct_a", "correct_b"))
        out.append(j)
    schema = {"model": pl.String, "implementation_a": pl.String, "implementation_b": pl.String,
              "subject": pl.String, "index": pl.Int64, "gold": pl.Int8, "pred_a": pl.Int8,
              "pred_b": pl.Int8, "correct_a": pl.Boolean, "correct_b": pl.Boolean}
    if not out:
        return pl.DataFrame(schema=schema)
    return pl.concat(out).cast(schema).sort("model", "implementation_a", "implementation_b",
                                            "subject", "index")


def flip_summary(pred: pl.DataFrame, flip_rows: pl.DataFrame) -> pl.DataFrame:
    """Per model x implementation pair: n_questions, n_flips, only_a, only_b, flip_rate."""
    nq = diagonal(pred).group_by("model", "implementation").len()
    pairs = pl.DataFrame(
        [(a, b) for a, b in combinations(impl_order(), 2)],
        schema=["implementation_a", "implementation_b"], orient="row")
    base = (nq.rename({"implementation": "implementation_a", "len": "n_questions"})
            .join(pairs, on="implementation_a")
            .join(nq.rename({"implementation": "implementation_b", "len": "n_b"}),
                  on=["model", "implementation_b"])
            .drop("n_b"))
    counts = flip_rows.group_by("model", "implementation_a", "implementation_b").agg(
        n_flips=pl.len(), only_a=pl.col("correct_a").sum(), only_b=pl.col("correct_b").sum())
    return (base.join(counts, on=["model", "implementation_a", "implementation_b"], how="left")
            .with_columns(pl.col("n_flips", "only_a", "only_b").fill_null(0).cast(pl.Int64))
            .with_columns(pl.col("n_questions").cast(pl.Int64),
                          flip_rate=pl.col("n_flips") / pl.col("n_questions"))
            .select("model", "implementation_a", "implementation_b", "n_questions", "n_flips",
                    "only_a", "only_b", "flip_rate")
            .sort("model", "implementation_a", "implementation_b"))


# ---------------------------------------------------------------- everything

@dataclass(frozen=True)
class Stats:
    scores: pl.DataFrame       # model x implementation: own score + CI, micro, macro, rank
    subjects: pl.DataFrame     # model x implementation x subject: accuracy + CI
    categories: pl.DataFrame   # model x implementation x category: micro, macro + CIs
    matrix: pl.DataFrame       # model x prompt x scorer (all 20 cells): micro, macro
    differences: pl.DataFrame  # model x (impl a, impl b) x averaging: a - b + CI
    ranks: pl.DataFrame        # implementation x model: rank + CI, p_best
    kendall: pl.DataFrame      # implementation pair: tau_b + CI
    flips: pl.DataFrame        # per question
    flip_summary: pl.DataFrame


def _ci_cols(name: str, point: np.ndarray, boot: np.ndarray, level: float) -> dict:
    lo, hi = percentile_ci(boot, level)
    return {name: point, f"{name}_lo": lo, f"{name}_hi": hi}


def compute(pred: pl.DataFrame, seed: int = 0, n_boot: int = 1000, level: float = 0.95) -> Stats:
    """All statistics of a predictions table (see reduce.predictions)."""
    diag = diagonal(pred)
    if diag.height == 0:
        raise ValueError("no published implementation (diagonal prompt x scorer) in predictions")
    models = sorted(diag.get_column("model").unique().to_list())
    present = set(diag.get_column("implementation").unique().to_list())
    order_all = impl_order()
    impls = [i for i in order_all if i in present]
    # a model may lack an implementation (a chat flavor left out for a model without a chat
    # template, chat_without_template: skip): its ranks, differences and Kendall taus are
    # taken over the models that have both sides
    have = set(diag.select("model", "implementation").unique().iter_rows())

    bs = bootstrap_subject_means(diag, ("model", "implementation"), n_boot, seed)
    cols = bs.columns
    col_of = {(m, i): k for k, (m, i) in enumerate(cols.iter_rows())}
    K = cols.height
    own_avg = own_averaging()
    own = np.array([own_avg[i] for _, i in cols.iter_rows()])
    mi_p, mi_b = bs.micro()
    ma_p, ma_b = bs.macro()
    own_p = np.where(own == "micro", mi_p, ma_p)
    own_b = np.where(own == "micro", mi_b, ma_b)

    # ranks per implementation among models (own averaging)
    rank_p = np.empty(K)
    rank_b = np.empty((n_boot, K))
    for i in impls:
        ks = [col_of[(m, i)] for m in models if (m, i) in have]
        rank_p[ks] = average_ranks(own_p[ks])
        rank_b[:, ks] = average_ranks(own_b[:, ks])
    r_lo, r_hi = percentile_ci(rank_b, level)
    p_best = (rank_b == 1.0).mean(axis=0)

    meta = cols.join(implementation_table(), on="implementation", how="left")
    n_total = int(bs.n.sum())
    scores = pl.concat([
        meta.select("model", "implementation", "prompt", "scorer", "averaging"),
        pl.DataFrame({
            "n_questions": np.full(K, n_total), "n_subjects": np.full(K, len(bs.subjects)),
            **_ci_cols("score", own_p, own_b, level),
            "se": own_b.std(axis=0, ddof=1) if n_boot > 1 else np.full(K, np.nan),
            **_ci_cols("micro", mi_p, mi_b, level),
            **_ci_cols("macro", ma_p, ma_b, level),
            "rank": rank_p, "rank_lo": r_lo, "rank_hi": r_hi, "p_best": p_best,
        }),
    ], how="horizontal")
    order = {i: k for k, i in enumerate(order_all)}
    scores = (scores.with_columns(_o=pl.col("implementation").replace_strict(order))
              .sort("model", "_o").drop("_o"))
    ranks = (scores.select("implementation", "model", "rank", "rank_lo", "rank_hi", "p_best",
                           "score")
             .with_columns(_o=pl.col("implementation").replace_strict(order))
             .sort("_o", "rank").drop("_o"))

    # per subject
    s_lo, s_hi = percentile_ci(bs.boot, level, axis=1)  # (S, K)
    subj_rows = {
        "model": np.repeat(cols.get_column("model").to_numpy(), len(bs.subjects)),
        "implementation": np.repeat(cols.get_column("implementation").to_numpy(), len(bs.subjects)),
        "subject": np.tile(bs.subjects, K),
        "n": np.tile(bs.n, K),
        "accuracy": bs.point.T.ravel(), "ci_lo": s_lo.T.ravel(), "ci_hi": s_hi.T.ravel(),
    }
    subjects = with_category(pl.DataFrame(subj_rows).cast({"n": pl.Int64})).sort(
        "model", "implementation", "subject")

    # per category (original's map)
    cat_of = {s: category_of(s) for s in bs.subjects}
    cat_frames = []
    for cat in sorted(set(cat_of.values())):
        ss = [s for s in bs.subjects if cat_of[s] == cat]
        cmi_p, cmi_b = bs.micro(ss)
        cma_p, cma_b = bs.macro(ss)
        cat_frames.append(pl.concat([
            cols, pl.DataFrame({
                "category": [cat] * K,
                "n_questions": np.full(K, int(bs.n[np.isin(bs.subjects, ss)].sum())),
                "n_subjects": np.full(K, len(ss)),
                **_ci_cols("micro", cmi_p, cmi_b, level),
                **_ci_cols("macro", cma_p, cma_b, level)})], how="horizontal"))
    categories = pl.concat(cat_frames).sort("model", "implementation", "category")

    # differences a - b per model (paired)
    diff_rows = []
    for m in models:
        for a, b in combinations(impls, 2):
            if (m, a) not in have or (m, b) not in have:
                continue
            ka, kb = col_of[(m, a)], col_of[(m, b)]
            for how, p, bt in (("own", own_p, own_b), ("micro", mi_p, mi_b), ("macro", ma_p, ma_b)):
                d_b = bt[:, ka] - bt[:, kb]
                lo, hi = percentile_ci(d_b, level)
                diff_rows.append((m, a, b, how, float(p[ka] - p[kb]), float(lo), float(hi)))
    differences = pl.DataFrame(
        diff_rows, orient="row",
        schema={"model": pl.String, "implementation_a": pl.String, "implementation_b": pl.String,
                "averaging": pl.String, "diff": pl.Float64, "ci_lo": pl.Float64,
                "ci_hi": pl.Float64})

    # Kendall tau-b between model rankings of implementation pairs
    tau_rows = []
    for a, b in combinations(impls, 2):
        both = [m for m in models if (m, a) in have and (m, b) in have]
        if len(both) < 2:
            tau_rows.append((a, b, len(both), float("nan"), float("nan"), float("nan")))
            continue
        ka = [col_of[(m, a)] for m in both]
        kb = [col_of[(m, b)] for m in both]
        t_p = float(kendall_tau_b(own_p[ka], own_p[kb]))
        t_b = kendall_tau_b(own_b[:, ka], own_b[:, kb])
        lo, hi = (percentile_ci(t_b, level) if np.isfinite(t_b).any()
                  else (np.nan, np.nan))
        tau_rows.append((a, b, len(both), t_p, float(lo), float(hi)))
    kendall = pl.DataFrame(
        tau_rows, orient="row",
        schema={"implementation_a": pl.String, "implementation_b": pl.String,
                "n_models": pl.Int64, "tau_b": pl.Float64, "ci_lo": pl.Float64,
                "ci_hi": pl.Float64})

    # prompt x scorer matrix (point estimates)
    mm = micro_macro(pred)
    matrix = mm.join(implementation_table().drop("averaging"), on=["prompt", "scorer"],
                     how="left").with_columns(diagonal=pl.col("implementation").is_not_null())

    fl = flips(pred)
    return Stats(scores=scores, subjects=subjects, categories=categories, matrix=matrix,
                 differences=differences, ranks=ranks, kendall=kendall, flips=fl,
                 flip_summary=flip_summary(pred, fl))
