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


@pytest.fixture
def registry():
    """Restore the registry after a test registers flavors."""
    saved = dict(F.FLAVORS)
    yield F.FLAVORS
    F.FLAVORS.clear()
    F.FLAVORS.update(saved)


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
            line = f"{letter}. {F.capitalized(m['choices'][j])}" if "capitalized" in \
                fl.spec["example"] else f"{letter}. {m['choices'][j]}"
            if "{A" in fl.spec["example"]:
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
