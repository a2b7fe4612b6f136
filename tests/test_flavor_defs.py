"""Flavors as data: definitions validate, customs derive from them, nothing branches on names."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
import pytest
import yaml

from mmlu_flavors import flavors as F
from mmlu_flavors.flavors import FlavorError, Q
from mmlu_flavors.prompts import build_prompts

PKG = Path(F.__file__).parent


def test_builtin_definitions_validate_and_name_their_reference() -> None:
    raw = yaml.safe_load(F.BUILTIN_FILE.read_text())
    assert list(raw) == list(F.BUILTIN)
    for name, defn in raw.items():
        F.validate_definition(name, defn)
        ref = defn["reference"]
        assert ref["package"] and ref["version"], name
    assert set(F.BUILTIN) >= {"original", "helm", "harness_e47e01b", "harness_current"}


def _flavor_name_comparisons(path: Path, names: set[str]) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Constant) and side.value in names:
                    hits.append(f"{path.name}:{node.lineno} compares with {side.value!r}")
        if isinstance(node, ast.Match):
            hits.append(f"{path.name}:{node.lineno} match statement")
    return hits


def test_no_code_branches_on_flavor_names() -> None:
    names = set(F.BUILTIN)
    hits = [h for p in sorted(PKG.glob("*.py")) for h in _flavor_name_comparisons(p, names)]
    rules = [p for p in (PKG.parent / "rules").glob("*.smk")
             if any(f'"{n}"' in p.read_text() for n in names)]
    assert hits == [] and rules == []


def test_custom_variant_original_with_val_shots(registry, questions) -> None:
    F.register("original_val_shots", {"base": "original", "shots": {"split": "val"}})
    fl = F.get_flavor("original_val_shots")
    assert fl.spec["shots"] == {"split": "val", "sampler": "first_k", "seed": 0}
    assert fl.spec["derived_from"] == "original"
    df = build_prompts(questions, "original_val_shots", subjects=["anatomy"],
                       questions_per_subject=3)
    orig = build_prompts(questions, "original", subjects=["anatomy"], questions_per_subject=3)
    val = questions.filter((pl.col("split") == "val") & (pl.col("subject") == "anatomy")).sort("index")
    for r, o in zip(df.iter_rows(named=True), orig.iter_rows(named=True)):
        assert r["shot_split"] == "val" and r["shot_rows"] == [0, 1, 2, 3, 4]
        assert r["header"] == o["header"] and r["test_block"] == o["test_block"]
        shots = [f"{q}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer: {'ABCD'[a]}\n\n"
                 for q, c, a in val.head(5).select("question", "choices", "answer").iter_rows()]
        assert r["prompt"] == o["header"] + "".join(shots) + o["test_block"]
    impl = F.implementations()["original_val_shots"]
    assert (impl.flavor, impl.scorer, impl.averaging) == ("original_val_shots", "letter_argmax", "micro")
    assert impl.blog_column is None  # a variant is not the published implementation
    # the resolved definition travels as JSON (CLI --flavor-defs) and registers again as is
    import json
    again = json.loads(F.definitions_json(["original_val_shots"]))["original_val_shots"]
    assert F.register("original_val_shots", again) is fl


@pytest.mark.parametrize("defn, needle", [
    ({"base": "helmet"}, "base 'helmet' is not a flavor"),
    ({"base": "original", "header": "about {topic}\n"}, "unknown variable {topic}"),
    ({"base": "original", "shots": {"split": "train"}}, "shots.split"),
    ({"base": "original", "scorers": [{"scorer": "vibes", "averaging": "micro"}]}, "scorers.0.scorer"),
    ({"base": "original", "colour": "red"}, "colour"),
    ({"base": "original", "chat": "multiturn", "too_long": {"then": "cut_right"}}, "cut_right"),
    ({"base": "original", "scorers": [{"scorer": "letter_argmax", "averaging": "micro",
                                       "implementation": "helm"}]}, "already used"),
])
def test_bad_custom_flavor_is_named(registry, defn, needle) -> None:
    with pytest.raises(FlavorError) as e:
        F.register("my_variant", defn)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert "my_variant" in msg or "helm" in msg


def test_names_are_checked(registry) -> None:
    with pytest.raises(FlavorError, match="built-in"):
        F.register("helm", {"base": "original"})
    with pytest.raises(FlavorError, match="lower-case"):
        F.register("Bad Name", {"base": "original"})


def test_with_factors_swaps_one_factor(registry) -> None:
    q = Q(" What? ", ("a", "b", "c", "d"), 2, 0)
    d = F.with_factors("original", "harness_current", ["header"])
    F.register("orig_hc_header", d)
    fl, orig, hc = (F.get_flavor(n) for n in ("orig_hc_header", "original", "harness_current"))
    assert fl.header("us_foreign_policy") == hc.header("us_foreign_policy")
    assert fl.example(q) == orig.example(q) != hc.example(q)
    assert fl.scorer == "letter_argmax"
    s = F.with_factors("original", "harness_current", ["scoring", "averaging"])
    assert s["scorers"] == [{"scorer": "loglik_letter", "averaging": "micro"}]
    assert F.prompt_spec(s) == F.prompt_spec(orig.spec)  # a scoring factor costs no prompt
    with pytest.raises(FlavorError, match="unknown factor"):
        F.with_factors("original", "helm", ["bos"])


def test_implementations_follow_definitions() -> None:
    impls = F.implementations(list(F.BUILTIN))
    assert list(impls)[:5] == ["helm", "harness (acc)", "original", "harness acc_norm",
                               "harness_current"]
    assert {n: i.averaging for n, i in impls.items() if n in
            ("helm", "harness (acc)", "original", "harness acc_norm", "harness_current")} == {
        "helm": "macro", "harness (acc)": "macro", "original": "micro",
        "harness acc_norm": "macro", "harness_current": "micro"}


@pytest.mark.slow  # runs Snakemake
def test_workflow_accepts_custom_flavors_and_names_bad_ones(tmp_path) -> None:
    from workflow_fixture import snakemake, write_config

    custom = {"original_val_shots": {"base": "original", "shots": {"split": "val"},
                                     "display": "original, val shots"}}
    write_config(tmp_path, tmp_path / "no-model-needed-for-a-dry-run", ["anatomy"], 2,
                 flavors=["original", "original_val_shots"], custom_flavors=custom)
    res = snakemake(tmp_path, "-n", "--cores", "1", "-p")
    out = res.stdout + res.stderr
    assert "data/cache/tiny-llama/original_val_shots/first2/part00.parquet" in out
    assert "--flavor-defs" in out and '"split": "val"' in out
    for cfg, needle in [
        ({"flavors": ["original", "nope"]}, "'nope' is neither a built-in flavor nor in custom_flavors"),
        ({"custom_flavors": {"v": {"base": "original", "header": "{topic}"}}}, "unknown variable {topic}"),
        ({"custom_flavors": {"v": {"base": "original", "shots": {"split": "train"}}}}, "train"),
        ({"custom_flavors": {"Bad": {"base": "original"}}}, "Bad"),
    ]:
        write_config(tmp_path, tmp_path / "m", ["anatomy"], 2, **cfg)
        res = snakemake(tmp_path, "-n", "--cores", "1", check=False)
        assert res.returncode != 0 and needle in res.stdout + res.stderr, (cfg, res.stderr[-1500:])


def test_chat_flavor_on_model_without_template_stops_with_one_line(questions, tmp_path,
                                                                   capsys) -> None:
    from workflow_fixture import make_tiny_model

    from mmlu_flavors import cli
    from mmlu_flavors.io import atomic_write_parquet

    model = make_tiny_model(questions, tmp_path / "tiny")  # byte-level BPE, no chat template
    prompts = tmp_path / "lmeval_chat.parquet"
    atomic_write_parquet(build_prompts(questions, "lmeval_chat", subjects=["anatomy"],
                                       questions_per_subject=1), prompts,
                         {"flavor": "lmeval_chat"})  # as the prompts step writes it
    entry = '{"source": "local", "path": "%s", "dtype": "float32", "device": "cpu"}' % model
    rc = cli.main(["logits", "--prompts", str(prompts), "--flavor", "lmeval_chat",
                   "--model-name", "tiny", "--entry", entry, "--subjects", "anatomy",
                   "--out", str(tmp_path / "out.parquet")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and not (tmp_path / "out.parquet").exists()
    assert "flavor 'lmeval_chat'" in err and "model 'tiny' has none" in err
