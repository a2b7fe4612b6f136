"""Choice order (issue 20): how much an MMLU score moves when the answer choices are reordered.

A flavor's `choice_order` factor permutes the four choices of each TEST question before it is
rendered (shots keep their order unless `choice_order_shots: true`):

* `identity` (the default, also when the key is absent): nothing changes, byte for byte;
* `rotate_k` (k = 1..3): a cyclic rotation, original choice i is shown at position (i + k) % 4;
* `reverse`: shown in reverse order;
* `shuffle_<seed>`: a permutation drawn per question from Python's `random.Random` seeded with
  the string "<seed>:<subject>:<index>" (deterministic, independent of the other questions).

A permutation is written `perm` with `perm[j]` = the ORIGINAL index of the choice shown at
position j (the prompt table's `choice_perm`). The gold letter follows its text: the shown gold
is `perm.index(original gold)`; every continuation (letters and answer texts) is built from the
shown choices, so every scorer reads the shown order and the reductions below map predictions
back to original choices through `perm`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

IDENTITY = "identity"
CYCLIC: tuple[str, ...] = ("identity", "rotate_1", "rotate_2", "rotate_3")
PATTERN = r"^(identity|rotate_[1-3]|reverse|shuffle_[0-9]{1,9})$"
_N = 4


def check_order(order: str) -> str:
    """The order itself, or a ValueError naming the value and the accepted forms."""
    if not isinstance(order, str) or not re.fullmatch(PATTERN, order):
        raise ValueError(f"choice_order {order!r}: expected identity, rotate_1, rotate_2, "
                         "rotate_3, reverse or shuffle_<seed> (e.g. shuffle_0)")
    return order


def permutation(order: str, subject: str = "", index: int = 0) -> list[int]:
    """`perm[j]` = original index of the choice shown at position j, for one question."""
    check_order(order)
    if order == IDENTITY:
        return list(range(_N))
    if order.startswith("rotate_"):
        k = int(order.removeprefix("rotate_"))
        return [(j - k) % _N for j in range(_N)]
    if order == "reverse":
        return list(range(_N))[::-1]
    seed = order.removeprefix("shuffle_")
    perm = list(range(_N))
    random.Random(f"{seed}:{subject}:{index}").shuffle(perm)
    return perm


def apply(perm: Sequence[int], choices: Sequence[str], gold: int) -> tuple[list[str], int]:
    """The shown choices and the shown position of the gold choice."""
    return [choices[i] for i in perm], list(perm).index(gold)


def rotation_of(order: str) -> int | None:
    """k of a cyclic order (identity: 0), None for any other order."""
    return CYCLIC.index(order) if order in CYCLIC else None


# ---------------------------------------------------------------- the cyclic study

def rotated_name(flavor: str, k: int) -> str:
    """The study's flavor for rotation k of `flavor` (k = 0 is the flavor itself)."""
    return flavor if k == 0 else f"{flavor}_rot{k}"


def study_flavors(flavors: Sequence[str], mode: str | None) -> dict[str, dict]:
    """`choice_permutations` (none | cyclic): the extra custom flavors to register, name ->
    definition (`{base, choice_order}`); rotation 0 is each selected flavor's own run."""
    if mode in (None, "none"):
        return {}
    if mode != "cyclic":
        raise ValueError(f"choice_permutations: {mode!r}: expected none or cyclic")
    return {rotated_name(f, k): {"base": f, "choice_order": f"rotate_{k}"}
            for f in flavors for k in (1, 2, 3)}


# ---------------------------------------------------------------- reductions (Parquet -> Parquet)

# scorer -> how a cache row gives a score per shown choice (None: no scores, a vote)
_SCORE_COLUMNS: dict[str, str | None] = {
    "letter_argmax": "letter_logprobs", "loglik_letter": "letter_cont_sum",
    "loglik_acc": "text_cont_sum", "loglik_acc_norm": "text_cont_sum/choice_chars",
    "greedy_token": None, "greedy_em": None, "inspect_choice": None,
}



def question_schema():
    """Columns of the per-question table (reports/choice_order_questions.parquet)."""
    import polars as pl

    return {"model": pl.String, "implementation": pl.String, "scorer": pl.String,
            "subject": pl.String, "index": pl.Int64, "rotation": pl.Int8, "pred": pl.Int8,
            "gold": pl.Int8, "pred_shown": pl.Int8, "gold_shown": pl.Int8,
            "correct": pl.Boolean, "probs": pl.List(pl.Float64)}


def _softmax_rows(x):
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        m = np.nanmax(np.where(np.isnan(x), -np.inf, x), axis=1, keepdims=True)
        e = np.exp(np.where(np.isnan(x), -np.inf, x) - m)
        return e / e.sum(axis=1, keepdims=True)


def choice_probs(cache, scorer: str):
    """(n, 4) probability per SHOWN choice for a scorer: the softmax over the four choices of
    its own score (letter log-probs, letter or text log-likelihoods, acc_norm's per-character
    log-likelihood); for the generative scorers (no scores) a one-hot vote of the prediction
    (a row without a parsable letter votes nothing: zeros)."""
    import numpy as np

    from . import reduce as R

    col = _SCORE_COLUMNS[scorer]
    if col is None:
        pred = R.PRED_FUNCS[scorer](cache).to_numpy()
        out = np.zeros((cache.height, 4))
        ok = ~np.isnan(pred.astype(np.float64))
        out[np.flatnonzero(ok), pred[ok].astype(int)] = 1.0
        return out
    if "/" in col:
        sums = R._float_matrix(cache, "text_cont_sum", np.nan)
        chars = R._float_matrix(cache, "choice_chars", np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = sums / chars
    else:
        x = R._float_matrix(cache, col, -np.inf if col == "letter_logprobs" else np.nan)
    return _softmax_rows(x)


def _flavor_rotation(flavor: str) -> tuple[str, int] | None:
    """(base flavor, k) of a cyclic flavor: its own run is (flavor, 0); None otherwise."""
    from .flavors import get_flavor

    fl = get_flavor(flavor)
    k = rotation_of(fl.choice_order)
    if k is None:
        return None
    return (fl.spec.get("derived_from", flavor) if k else flavor), k


def question_table(cache, base_flavors: Sequence[str] | None = None):
    """One row per model x implementation x question x rotation: the prediction and gold
    mapped back to ORIGINAL choice indices (`pred`, `gold`), as shown (`pred_shown`,
    `gold_shown`), the scorer's verdict (`correct`) and the probability of each ORIGINAL
    choice (`probs`, `choice_probs`). Rows of flavors that are no cyclic rotation of a
    `base_flavors` flavor are left out."""
    import numpy as np
    import polars as pl

    from . import reduce as R
    from .flavors import get_flavor

    frames = []
    for (flavor,), part in cache.group_by(["flavor"], maintain_order=True):
        rot = _flavor_rotation(flavor)
        if rot is None or (base_flavors is not None and rot[0] not in base_flavors):
            continue
        base, k = rot
        perm = np.array([permutation(f"rotate_{k}" if k else IDENTITY)] * part.height)
        rows = np.arange(part.height)
        pred = R.predictions(part, [i.scorer for i in get_flavor(base).implementations()])
        part_sorted = part.sort("model", "subject", "index")
        for impl in get_flavor(base).implementations():
            p = pred.filter(pl.col("scorer") == impl.scorer).sort("model", "subject", "index")
            shown = choice_probs(part_sorted, impl.scorer)
            orig = np.empty_like(shown)
            orig[rows[:, None], perm] = shown  # original index perm[j] <- shown j
            ps = p.get_column("pred").to_numpy(allow_copy=True).astype(np.float64)
            gs = p.get_column("gold").to_numpy().astype(int)
            pred_orig = np.where(np.isnan(ps), np.nan,
                                 perm[rows, np.nan_to_num(ps).astype(int)])
            frames.append(pl.DataFrame({
                "model": p["model"], "implementation": impl.name, "scorer": impl.scorer,
                "subject": p["subject"], "index": p["index"], "rotation": k,
                "pred": pl.Series(pred_orig).cast(pl.Int8, strict=False),
                "gold": perm[rows, gs], "pred_shown": p["pred"], "gold_shown": p["gold"],
                "correct": p["correct"], "probs": orig.tolist()}))
    schema = question_schema()
    if not frames:
        return pl.DataFrame(schema=schema)
    return (pl.concat([f.select([pl.col(c).cast(t) for c, t in schema.items()]) for f in frames])
            .sort("model", "implementation", "subject", "index", "rotation"))


def complete(questions):
    """Only the (model, implementation) cells that have all four rotations of every question."""
    import polars as pl

    n = questions.group_by("model", "implementation", "subject", "index").agg(
        pl.col("rotation").n_unique().alias("_r"))
    full = n.filter(pl.col("_r") == len(CYCLIC)).drop("_r")
    return questions.join(full, on=["model", "implementation", "subject", "index"])


def debiased(questions):
    """PriDe-style estimate per model x implementation x question: the probability of each
    ORIGINAL choice averaged over the four cyclic rotations, argmax (first maximum; a question
    with no probability mass at all, i.e. no parsable vote, gets pred null, counted wrong).
    For the generative scorers the probabilities are one-hot votes: a majority vote."""
    import numpy as np
    import polars as pl

    q = complete(questions)
    g = (q.group_by("model", "implementation", "scorer", "subject", "index", maintain_order=True)
         .agg(pl.col("probs"), pl.col("gold").first()))
    probs = np.array([np.mean(np.array(p.to_list(), dtype=np.float64), axis=0)
                      for p in g["probs"]]).reshape(-1, 4)
    none = ~(np.nan_to_num(probs).sum(axis=1) > 0)
    pred = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1).astype(float)
    pred[none] = np.nan
    return g.drop("probs").with_columns(
        pred=pl.Series(pred).cast(pl.Int8, strict=False),
        probs=pl.Series(probs.tolist())).with_columns(
        correct=(pl.col("pred") == pl.col("gold")).fill_null(False))


def _value_rows(questions, dq):
    """model, implementation, measure, subject, index, value: every measure as a per-question
    value in [0, 1] (so one paired bootstrap serves accuracy, 'correct under all rotations',
    debiased and the shares of each predicted and gold letter over the four rotations)."""
    import polars as pl

    q = complete(questions)
    keys = ["model", "implementation", "subject", "index"]
    ok = pl.col("correct").fill_null(False)
    parts = [q.select(*keys, measure=pl.format("accuracy_rot{}", "rotation"), value=ok),
             q.group_by(keys).agg(value=ok.all()).with_columns(measure=pl.lit("all_rotations")),
             dq.select(*keys, measure=pl.lit("debiased"), value="correct")]
    for j, L in enumerate("ABCD"):
        for what in ("pred", "gold"):
            parts.append(q.group_by(keys)
                         .agg(value=(pl.col(f"{what}_shown") == j).fill_null(False).mean())
                         .with_columns(measure=pl.lit(f"{what}_share_{L}")))
    return pl.concat([p.select(*keys[:2], "measure", *keys[2:], pl.col("value").cast(pl.Float64))
                      for p in parts])


SUMMARY_MEASURES: tuple[str, ...] = (
    "accuracy_rot0", "accuracy_rot1", "accuracy_rot2", "accuracy_rot3", "spread", "std",
    "all_rotations", "debiased", "debiased_minus_rot0",
    *(f"pred_share_{L}" for L in "ABCD"), *(f"gold_share_{L}" for L in "ABCD"), "rstd")


def _summary_schema():
    import polars as pl

    return {"model": pl.String, "implementation": pl.String, "measure": pl.String,
            "value": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64}


def summary(questions, seed: int = 0, n_boot: int = 1000, level: float = 0.95):
    """Per model x implementation x measure: value and its paired bootstrap CI (questions
    resampled within each subject, ONE resample for every cell and measure; each
    implementation's own averaging, micro or macro). Measures (`SUMMARY_MEASURES`):
    accuracy_rot0..3; spread (max - min over the rotations) and std (population std over
    them); all_rotations (correct under all four); debiased (PriDe-style, `debiased`) and
    debiased_minus_rot0; pred_share_A..D and gold_share_A..D (share of the 4 x n answers
    predicted as / gold at each shown letter: selection bias); rstd (std over the four letters
    of the accuracy on the answers whose shown gold is that letter, Zheng et al.'s RStd)."""
    import numpy as np
    import polars as pl

    from . import stats as st
    from .flavors import implementations

    rows = _value_rows(questions, debiased(questions)).rename({"value": "correct"})
    if rows.height == 0:
        return pl.DataFrame(schema=_summary_schema())
    boot = st.bootstrap_subject_means(rows, ("model", "implementation", "measure"), n_boot, seed)
    avg = {n: i.averaging for n, i in implementations().items()}
    cols = boot.columns
    point_m, boot_m = boot.micro()
    point_M, boot_M = boot.macro()
    how = np.array([avg.get(i, "micro") for i in cols["implementation"]])
    point = np.where(how == "macro", point_M, point_m)
    samples = np.where(how[None, :] == "macro", boot_M, boot_m)
    key = {tuple(r): j for j, r in enumerate(cols.iter_rows())}
    rstd = _recall_std(questions, boot)
    out = []
    for m, i in cols.select("model", "implementation").unique(maintain_order=True).iter_rows():
        def get(name: str, m=m, i=i):
            j = key[(m, i, name)]
            return point[j], samples[:, j]
        acc = [get(f"accuracy_rot{k}") for k in range(4)]
        pa = np.array([a[0] for a in acc])
        ba = np.stack([a[1] for a in acc], axis=1)
        derived = {"spread": (pa.max() - pa.min(), ba.max(axis=1) - ba.min(axis=1)),
                   "std": (pa.std(), ba.std(axis=1)),
                   "debiased_minus_rot0": (get("debiased")[0] - acc[0][0],
                                           get("debiased")[1] - acc[0][1]),
                   "rstd": rstd[(m, i)]}
        for name in SUMMARY_MEASURES:
            v, b = derived[name] if name in derived else get(name)
            lo, hi = st.percentile_ci(b, level)
            out.append((m, i, name, float(v), float(lo), float(hi)))
    return pl.DataFrame(out, schema=_summary_schema(), orient="row")


def _recall_std(questions, boot):
    """(model, implementation) -> (RStd point, bootstrap samples) with the summary's own
    resample: per shown gold letter L, the micro accuracy over the (question, rotation) pairs
    whose shown gold is L; the std over the four letters."""
    import numpy as np
    import polars as pl

    q = complete(questions).sort("model", "implementation", "subject", "index", "rotation")
    subjects = boot.subjects
    rng = np.random.default_rng(12345)  # weights drawn per subject, one set for every cell
    n = dict(zip(subjects, boot.n.tolist()))
    B = boot.boot.shape[1]
    from . import stats as st

    weights = {s: st.subject_resample_counts(int(n[s]), B, rng) for s in subjects}
    out = {}
    for (m, i), part in q.group_by(["model", "implementation"], maintain_order=True):
        ok = part.get_column("correct").fill_null(False).cast(pl.Float64).to_numpy().reshape(-1, 4)
        gs = part.get_column("gold_shown").to_numpy().reshape(-1, 4)
        subj = part.get_column("subject").to_numpy().reshape(-1, 4)[:, 0]
        W = np.concatenate([weights[s] for s in subjects], axis=1)  # (B, n_questions)
        order = np.argsort(np.array([subjects.index(s) for s in subj]), kind="stable")
        ok, gs = ok[order], gs[order]
        pts, bs = [], []
        for j in range(4):
            hit = (gs == j).astype(float)
            num, den = (ok * hit).sum(axis=1), hit.sum(axis=1)
            pts.append(num.sum() / max(den.sum(), 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                bs.append((W @ num) / (W @ den))
        out[(m, i)] = (float(np.std(pts)), np.nanstd(np.stack(bs, axis=1), axis=1))
    return out


def rank_stability(table):
    """Kendall tau-b between the models' rankings under two orders, per implementation: every
    pair of rotations and each rotation against the debiased estimate (NaN with fewer than
    two models or all tied). Columns: implementation, a, b, n_models, kendall_tau."""
    import numpy as np
    import polars as pl

    from . import stats as st

    out = []
    names = [f"accuracy_rot{k}" for k in range(4)] + ["debiased"]
    for (impl,), part in table.group_by(["implementation"], maintain_order=True):
        wide = (part.filter(pl.col("measure").is_in(names))
                .pivot(on="measure", index="model", values="value").sort("model"))
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                a, b = names[x], names[y]
                if a not in wide.columns or b not in wide.columns:
                    continue
                tau = st.kendall_tau_b(wide[a].to_numpy(), wide[b].to_numpy()) \
                    if wide.height >= 2 else np.nan
                out.append((impl, a, b, wide.height, float(tau)))
    return pl.DataFrame(out, orient="row", schema={
        "implementation": pl.String, "a": pl.String, "b": pl.String, "n_models": pl.Int64,
        "kendall_tau": pl.Float64})


def plot(table, path) -> None:
    """One figure: per model x implementation, accuracy under each rotation (dots, CIs) and
    the debiased estimate (a star); beside it the share of each predicted letter against the
    gold share (selection bias)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    from .io import atomic_write_bytes

    cells = table.select("model", "implementation").unique(maintain_order=True).rows()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 0.45 * max(4, len(cells)) + 1.5))
    get = {(m, i, s): (v, lo, hi) for m, i, s, v, lo, hi in table.iter_rows()}
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for y, (m, i) in enumerate(cells):
        for k in range(4):
            v, lo, hi = get[(m, i, f"accuracy_rot{k}")]
            ax.errorbar(v, y + (k - 1.5) * 0.12, xerr=[[v - lo], [hi - v]], fmt="o",
                        color=colors[k], ms=4, lw=1, label=f"rotation {k}" if y == 0 else None)
        v, lo, hi = get[(m, i, "debiased")]
        ax.plot(v, y, "k*", ms=10, label="debiased (mean over rotations)" if y == 0 else None)
        left = 0.0
        for j, L in enumerate("ABCD"):
            share = get[(m, i, f"pred_share_{L}")][0]
            bx.barh(y, share, left=left, color=colors[j], label=f"predicted {L}" if y == 0 else None)
            left += share
        bx.plot([0.25, 0.5, 0.75], [y] * 3, "|", color="k", ms=12)
    labels = [f"{m}\n{i}" for m, i in cells]
    for a in (ax, bx):
        a.set_yticks(range(len(cells)), labels, fontsize=7)
        a.invert_yaxis()
    ax.set_xlabel("accuracy (95% paired bootstrap CI)")
    ax.set_title("accuracy under each cyclic rotation of the choices")
    bx.set_xlabel("share of predicted letters over the 4 rotations (ticks: gold, 25% each)")
    bx.set_title("selection bias")
    bx.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    bx.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def write_all(shard_paths: Sequence[str], flavors: Sequence[str], out_dir: str,
              seed: int = 0, n_boot: int = 1000) -> dict[str, str]:
    """Cache shards of the selected flavors and their rotations -> reports/choice_order.csv
    (summary), choice_order_ranks.csv (Kendall tau), choice_order_questions.parquet (every
    question's verdict under each rotation and the debiased one: rotation -1) and
    choice_order.png."""
    from pathlib import Path

    import polars as pl

    from .cache import read_shards
    from .io import atomic_write_parquet, atomic_write_text

    out = Path(out_dir)
    questions = question_table(read_shards(list(shard_paths)), list(flavors))
    if questions.height == 0:
        raise ValueError("choice order: no cyclic rotation of the selected flavors in the "
                         "given cache shards")
    table = summary(questions, seed, n_boot)
    ranks = rank_stability(table)
    dq = debiased(questions).with_columns(rotation=pl.lit(-1, pl.Int8),
                                          pred_shown=pl.col("pred"), gold_shown=pl.col("gold"))
    per_q = pl.concat([questions, dq.select(questions.columns)]).sort(
        "model", "implementation", "subject", "index", "rotation")
    paths = {"csv": out / "choice_order.csv", "ranks": out / "choice_order_ranks.csv",
             "questions": out / "choice_order_questions.parquet", "png": out / "choice_order.png"}
    atomic_write_text(paths["csv"], table.write_csv())
    atomic_write_text(paths["ranks"], ranks.write_csv())
    atomic_write_parquet(per_q, paths["questions"])
    plot(table, paths["png"])
    return {k: str(v) for k, v in paths.items()}
