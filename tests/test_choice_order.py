"""Choice order (issue 20): the factor reorders a test question's choices, the gold letter and
every continuation follow the texts, identity changes nothing, and the reductions find a
model's letter preference."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mmlu_flavors import choice_order as co
from mmlu_flavors import flavors as F
from mmlu_flavors.data import LETTERS
from mmlu_flavors.prompts import build_prompts

SUBJECTS = ["abstract_algebra", "us_foreign_policy"]
N = 6
ORDERS = ["rotate_1", "rotate_2", "rotate_3", "reverse", "shuffle_3"]


def _table(questions, flavor: str) -> pl.DataFrame:
    return build_prompts(questions, flavor, subjects=SUBJECTS, questions_per_subject=N)


_BASE: dict[str, pl.DataFrame] = {}


def _base(questions, flavor: str) -> pl.DataFrame:
    if flavor not in _BASE:
        _BASE[flavor] = _table(questions, flavor)
    return _BASE[flavor]


def test_permutations() -> None:
    assert co.permutation("identity") == [0, 1, 2, 3]
    assert co.permutation("rotate_1") == [3, 0, 1, 2]  # original A is shown at B
    assert co.permutation("rotate_3") == [1, 2, 3, 0]
    assert co.permutation("reverse") == [3, 2, 1, 0]
    a = co.permutation("shuffle_3", "anatomy", 4)
    assert sorted(a) == [0, 1, 2, 3] and a == co.permutation("shuffle_3", "anatomy", 4)
    drawn = {tuple(co.permutation("shuffle_3", "anatomy", i)) for i in range(40)}
    assert len(drawn) > 5  # per question, not one permutation for all
    assert co.apply([3, 0, 1, 2], ["a", "b", "c", "d"], 0) == (["d", "a", "b", "c"], 1)
    for bad in ("rotate_4", "rotate_0", "shuffle", "Reverse", 3):
        with pytest.raises(ValueError, match="choice_order"):
            co.check_order(bad)  # type: ignore[arg-type]


def test_bad_value_in_config_names_the_key(registry) -> None:
    with pytest.raises(F.FlavorError, match="choice_order"):
        F.register("bad_order", {"base": "original", "choice_order": "rotate_7"})


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("flavor", list(F.BUILTIN))
def test_gold_and_continuations_follow_the_text(questions, registry, flavor, order) -> None:
    """Every built-in flavor (letter, answer-text and generative scorers): the shown gold is
    the original gold text, the test block lists the shown choices, own continuations and
    the cache's two families are built from the shown order; shots are unchanged."""
    base = _base(questions, flavor)
    name = f"t_{flavor}_{order}"
    F.register(name, {"base": flavor, "choice_order": order})
    fl = F.get_flavor(name)
    moved = _table(questions, name)
    assert moved["choice_perm"].dtype == pl.List(pl.Int8)
    for b, m in zip(base.iter_rows(named=True), moved.iter_rows(named=True)):
        perm = co.permutation(order, m["subject"], m["index"])
        assert m["choice_perm"] == perm
        assert m["choices"] == [b["choices"][i] for i in perm]
        assert m["choices"][m["gold"]] == b["choices"][b["gold"]]  # gold follows its text
        assert perm[m["gold"]] == b["gold"]
        assert m["shots"] == b["shots"] and m["header"] == b["header"]
        q = F.Q("", tuple(m["choices"]), m["gold"], m["index"])
        assert m["continuations"] == fl.continuations(q)
        # the answer-text continuation of the shown gold is the original gold's
        assert fl.cache_continuations(m["choices"])[4 + m["gold"]] == \
            F.get_flavor(flavor).cache_continuations(b["choices"])[4 + b["gold"]]
        # letters stay in place (A..D), texts move: the letter family is the base's own
        assert fl.cache_continuations(m["choices"])[:4] == \
            F.get_flavor(flavor).cache_continuations(b["choices"])[:4]
        if perm != [0, 1, 2, 3] and "{A" in fl.spec["example"]:
            assert m["prompt"] != b["prompt"]
        # each shown letter's line holds its shown text (lighteval_mcf capitalizes; the cloze
        # flavor shows no choices)
        for j, letter in enumerate(LETTERS):
            # the example template's own line for this letter ("A. {A}", "A) {A}", ...),
            # filled with the shown question
            tmpl = [ln for ln in fl.spec["example"].split("\n") if "{" + letter in ln]
            if tmpl:
                line = tmpl[0].format_map(F.example_vars(q))
                assert line in m["test_block"]
    if fl.generate or fl.scorer in ("greedy_token", "greedy_em"):
        # generative scorers compare the generated letter with the shown gold's letter
        assert (moved["gold"] != base["gold"]).any() or order.startswith("shuffle")


def test_shots_permuted_on_request(questions, registry) -> None:
    F.register("orig_rev_all", {"base": "original", "choice_order": "reverse",
                                "choice_order_shots": True})
    F.register("orig_rev", {"base": "original", "choice_order": "reverse"})
    a, b = _table(questions, "orig_rev_all"), _table(questions, "orig_rev")
    assert a["test_block"].to_list() == b["test_block"].to_list()
    assert a["shot_rows"].to_list() == b["shot_rows"].to_list()  # same shots drawn
    for sa, sb in zip(a["shots"].to_list(), b["shots"].to_list()):
        assert sa != sb and sorted(sa[0].splitlines()[1:5]) != sb[0].splitlines()[1:5]


@pytest.mark.parametrize("flavor", list(F.BUILTIN))
def test_identity_is_every_byte_unchanged(questions, registry, flavor) -> None:
    """Written explicitly, identity is the same definition for caching and the same table."""
    base = _table(questions, flavor)
    spec = F.merge_mappings(F.BUILTIN[flavor].spec, {"choice_order": "identity",
                                                     "choice_order_shots": False})
    assert F.prompt_spec(spec) == F.prompt_spec(F.BUILTIN[flavor].spec)
    F.FLAVORS[flavor] = F.Flavor(flavor, spec)
    again = _table(questions, flavor)
    assert again.schema == base.schema and "choice_perm" not in again.columns
    assert again.equals(base)


@pytest.mark.slow
def test_identity_is_a_cache_hit_with_zero_forwards(questions, registry, tmp_path) -> None:
    """The cache's own counts: a run of `original`, then the same flavor with `choice_order:
    identity` written out computes nothing (same input keys); rotate_1 computes every
    question again."""
    from mmlu_flavors.cache import JobStats, compute_view
    from workflow_fixture import make_tiny_model

    model_dir = make_tiny_model(questions, tmp_path / "tiny")
    entry = {"source": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu"}

    def view(flavor: str, name: str, loader=None) -> tuple[pl.DataFrame, JobStats]:
        st = JobStats()
        prompts = _table(questions, flavor)
        out = compute_view(prompts, "tiny", entry, None, flavor, SUBJECTS, 3,
                           tmp_path / f"{name}.parquet", tmp_path / "store", progress=False,
                           stats=st, **({"loader": loader} if loader else {}))
        return out, st

    first, st = view("original", "first")
    assert (st.computed, st.reused) == (6, 0)
    F.FLAVORS["original"] = F.Flavor("original", F.merge_mappings(
        F.BUILTIN["original"].spec, {"choice_order": "identity"}))
    again, st = view("original", "again", loader=lambda *a: pytest.fail("model loaded"))
    assert (st.computed, st.reused) == (0, 6)
    assert again.equals(first)


# ---------------------------------------------------------------- reductions

def _biased_cache(bias: float, n: int = 40, seed: int = 0, flavors=("original", "helm")):
    """A synthetic cache of one model under the four cyclic rotations: each question's
    knowledge is a logit per ORIGINAL choice (the gold boosted), plus `bias` on whatever is
    shown at letter A; every score family and the greedy token follow these logits."""
    import numpy as np

    from synthetic_cache import cache_row, make_cache

    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 4, n)
    know = rng.normal(0, 1, (n, 4))
    know[np.arange(n), gold] += 1.0
    rows = []
    for base in flavors:
        for k in range(4):
            name = co.rotated_name(base, k)
            perm = co.permutation(f"rotate_{k}" if k else "identity")
            for i in range(n):
                shown = know[i, perm] + np.array([bias, 0, 0, 0])
                lp = shown - np.log(np.exp(shown).sum())
                choices = [f"q{i} choice {perm[j]}" for j in range(4)]
                rows.append(cache_row(
                    model="biased", flavor=name, subject=["anatomy", "virology"][i % 2],
                    index=i, gold=perm.index(int(gold[i])), letter_logprobs=lp.tolist(),
                    greedy_text=" " + "ABCD"[int(np.argmax(shown))],
                    letter_cont_sum=lp.tolist(), text_cont_sum=(lp * 2).tolist(),
                    choices=choices))
    return make_cache(rows), gold


def _register_study(flavors=("original", "helm")) -> None:
    for name, defn in co.study_flavors(list(flavors), "cyclic").items():
        F.register(name, defn)


def test_study_flavors_are_the_three_rotations(registry) -> None:
    assert co.study_flavors(["original"], "none") == {}
    got = co.study_flavors(["original", "helm"], "cyclic")
    assert list(got) == ["original_rot1", "original_rot2", "original_rot3", "helm_rot1",
                         "helm_rot2", "helm_rot3"]
    assert got["helm_rot2"] == {"base": "helm", "choice_order": "rotate_2"}
    with pytest.raises(ValueError, match="choice_permutations"):
        co.study_flavors(["original"], "all")


def test_question_table_maps_back_to_original_choices(registry) -> None:
    _register_study()
    cache, gold = _biased_cache(bias=0.0)
    q = co.question_table(cache, ["original", "helm"])
    assert q.height == 2 * 4 * 40  # 2 implementations x 4 rotations x 40 questions
    assert set(q["implementation"]) == {"original", "helm"}
    for (impl,), part in q.group_by(["implementation"]):
        # the original gold, whatever rotation showed it
        by_q = part.group_by("index").agg(pl.col("gold").unique())
        assert all(len(g) == 1 for g in by_q["gold"])
        assert sorted(part.filter(pl.col("rotation") == 2).sort("index")["gold"].to_list()) == \
            sorted(gold.tolist())
        # no bias: the model picks the same ORIGINAL choice under every rotation
        assert part.group_by("index").agg(pl.col("pred").n_unique())["pred"].max() == 1


def test_letter_bias_is_found_and_debiased(registry) -> None:
    _register_study()
    fair = co.summary(co.question_table(_biased_cache(0.0)[0]), seed=0, n_boot=200)
    biased = co.summary(co.question_table(_biased_cache(2.5)[0]), seed=0, n_boot=200)

    def val(t, impl, measure):
        return t.filter((pl.col("implementation") == impl) & (pl.col("measure") == measure)
                        ).row(0, named=True)

    for impl in ("original", "helm"):
        assert val(fair, impl, "spread")["value"] == 0.0  # same verdict under every rotation
        b = val(biased, impl, "pred_share_A")
        assert b["value"] > 0.6 and b["ci_lo"] > 0.25  # A is preferred, CI excludes 25%
        assert val(biased, impl, "gold_share_A")["value"] == 0.25  # cyclic: gold uniform
        assert val(biased, impl, "spread")["value"] > 0.0
        # the golds sit at every letter in turn, so the bias costs accuracy at each rotation
        for k in range(4):
            assert val(biased, impl, f"accuracy_rot{k}")["value"] < \
                val(fair, impl, f"accuracy_rot{k}")["value"]
        assert val(biased, impl, "rstd")["value"] > val(fair, impl, "rstd")["value"]
        acc = [val(biased, impl, f"accuracy_rot{k}")["value"] for k in range(4)]
        assert val(biased, impl, "all_rotations")["value"] <= min(acc)
        # averaging over the rotations undoes much of a bias that is the same at every
        # rotation: all of it here for the letter probabilities (original), part of it for
        # the one-hot votes of a generative scorer (helm)
        assert val(biased, impl, "debiased")["value"] > max(acc)
        assert val(biased, impl, "debiased_minus_rot0")["ci_lo"] > 0.0
    assert val(biased, "original", "debiased")["value"] == \
        val(fair, "original", "debiased")["value"]
    ranks = co.rank_stability(biased)
    assert set(ranks["n_models"]) == {1} and ranks["kendall_tau"].is_nan().all()


def test_write_all_writes_every_output(registry, tmp_path) -> None:
    from synthetic_cache import write_shards

    _register_study()
    cache, _ = _biased_cache(1.0)
    two = pl.concat([cache, cache.with_columns(model=pl.lit("other"),
                                               greedy_text=pl.lit(" B"))])
    paths = write_shards(two, tmp_path / "cache")
    got = co.write_all([str(p) for p in paths], ["original", "helm"], str(tmp_path / "out"),
                       n_boot=100)
    table = pl.read_csv(got["csv"])
    assert set(table["measure"]) == set(co.SUMMARY_MEASURES)
    assert table.height == 2 * 2 * len(co.SUMMARY_MEASURES)
    ranks = pl.read_csv(got["ranks"])
    assert set(ranks["n_models"]) == {2}
    per_q = pl.read_parquet(got["questions"])
    assert sorted(per_q["rotation"].unique()) == [-1, 0, 1, 2, 3]
    assert Path(got["png"]).stat().st_size > 10_000


def test_explorer_shows_each_rotation(registry, tmp_path) -> None:
    """The explorer's subject data: each question's verdict and predicted original letter
    under rotations 0..3 and the debiased estimate, equal to the per-question table."""
    from mmlu_flavors.explorer import rotation_data
    from synthetic_cache import write_shards

    _register_study()
    cache, _ = _biased_cache(2.5)
    got = co.write_all([str(p) for p in write_shards(cache, tmp_path / "c")],
                       ["original", "helm"], str(tmp_path / "out"), n_boot=50)
    per_q = pl.read_parquet(got["questions"]).filter(pl.col("subject") == "anatomy")
    idx = sorted(set(per_q["index"].to_list()))
    data = rotation_data(per_q, {i: k for k, i in enumerate(idx)})
    cell = data["biased"]["original"]
    assert len(cell["v"]) == len(idx) and all(len(v) == 5 for v in cell["v"])
    for r in per_q.filter(pl.col("implementation") == "original").iter_rows(named=True):
        k, col = idx.index(r["index"]), (4 if r["rotation"] < 0 else r["rotation"])
        assert cell["v"][k][col] == ("1" if r["correct"] else "0")
        assert cell["p"][k][col] == ("-" if r["pred"] is None else "ABCD"[r["pred"]])
    # the bias shows: some question is right under one rotation and wrong under another
    assert any(set(v[:4]) == {"0", "1"} for v in cell["v"])
    page = (Path(F.__file__).parent / "explorer_page.html").read_text()
    assert "d.rotations" in page


# ---------------------------------------------------------------- workflow

def test_workflow_plans_rotations_only_when_asked(tmp_path) -> None:
    from workflow_fixture import snakemake, write_config

    write_config(tmp_path, tmp_path / "m", ["anatomy"], 2, flavors=["original", "helm"])
    out = snakemake(tmp_path, "-n", "--cores", "1").stdout
    assert "_rot1" not in out and "choice_order" not in out  # the default: nothing new
    write_config(tmp_path, tmp_path / "m", ["anatomy"], 2, flavors=["original", "helm"],
                 choice_permutations="cyclic")
    out = snakemake(tmp_path, "-n", "--cores", "1").stdout
    for f in ("original", "helm"):
        for k in (1, 2, 3):
            assert f"data/cache/tiny-llama/{f}_rot{k}/first2/part00.parquet" in out
    assert "reports/choice_order.csv" in out and "reports/choice_order.png" in out
    write_config(tmp_path, tmp_path / "m", ["anatomy"], 2, choice_permutations="all")
    res = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert res.returncode != 0 and "choice_permutations" in res.stdout + res.stderr


@pytest.mark.slow
def test_workflow_runs_the_cyclic_study(questions, tmp_path) -> None:
    """A tiny model, one subject: the four rotations run, the study's outputs and the
    explorer's rotation table come out."""
    import re

    from workflow_fixture import make_tiny_model, snakemake, write_config

    model = make_tiny_model(questions, tmp_path / "tiny")
    write_config(tmp_path, model, ["anatomy"], 3, flavors=["original"],
                 choice_permutations="cyclic", attribution_pairs=[])
    snakemake(tmp_path, "--cores", "2", "reports/choice_order.csv", "reports/explorer.html")
    table = pl.read_csv(tmp_path / "reports" / "choice_order.csv")
    assert set(table["implementation"]) == {"original"}
    assert set(table["measure"]) == set(co.SUMMARY_MEASURES)
    per_q = pl.read_parquet(tmp_path / "reports" / "choice_order_questions.parquet")
    assert per_q.height == 3 * 5  # 3 questions x (4 rotations + debiased)
    js = (tmp_path / "reports" / "explorer" / "anatomy.js").read_text()
    assert re.search(r'"rotations":\{"tiny-llama":\{"original":\{"v":\[', js)
