"""What `choice_permutations: cyclic` adds to a run, in model tokens (issue 20).

For each flavor of a config (default config.yaml: its subjects, questions per subject,
flavors and models) this builds the prompts of the identity run and of the rotations 1..3,
applies the flavor's token rule with each model's tokenizer and counts

* `tokens`: what the fast engine runs for the flavor's job (`engine.planned_tokens`: within
  a job the questions of a subject share their few-shot prefix, which runs once per batch);
* `new`: per question, the context tokens after the longest common prefix with the SAME
  question's identity context, plus its continuation tokens: what a rotation would cost if the
  engine shared prefixes across flavors (a rotated question shares its subject's header and
  shots with the identity run; only its own block and continuations differ).

Both are printed per flavor and model, relative to the identity run.

    PYTHONPATH=workflow .venv/bin/python bench/choice_cost.py            # config.yaml's models
    PYTHONPATH=workflow .venv/bin/python bench/choice_cost.py --quick    # a tiny byte-level
        # tokenizer built here, 2 subjects x 4 questions (no converted model needed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import machine as bench_machine  # noqa: E402
import polars as pl  # noqa: E402

from mmlu_flavors import choice_order as co  # noqa: E402
from mmlu_flavors import flavors as fl  # noqa: E402
from mmlu_flavors.data import Source, load_questions  # noqa: E402
from mmlu_flavors.engine import planned_tokens  # noqa: E402
from mmlu_flavors.prompts import build_prompts  # noqa: E402
from mmlu_flavors.tokenize import tokenize_row  # noqa: E402


def requests(prompts: pl.DataFrame, tokenizer, max_length: int) -> dict[tuple, object]:
    return {(r["subject"], r["index"]): tokenize_row(r, tokenizer, max_length).request
            for r in prompts.iter_rows(named=True)}


def engine_tokens(reqs: dict, batch_size: int) -> int:
    by_subject: dict[str, list] = {}
    for (s, _), r in reqs.items():
        by_subject.setdefault(s, []).append(r)
    return sum(planned_tokens(v, batch_size)[0] for v in by_subject.values())


def new_tokens(reqs: dict, ident: dict) -> int:
    total = 0
    for key, r in reqs.items():
        a, b = r.context, ident[key].context
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += len(a) - common + sum(len(c) for c in r.continuations)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--quick", action="store_true",
                    help="tiny tokenizer, 2 subjects x 4 questions, the config's flavors")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    cfg = yaml.safe_load(a.config.read_text())
    mmlu = ROOT / "resources" / "mmlu"
    if cfg.get("mmlu_dir") and (a.config.parent / cfg["mmlu_dir"]).exists():
        mmlu = (a.config.parent / cfg["mmlu_dir"]).resolve()
    questions = load_questions(Source("local", str(mmlu)))
    subjects = None if cfg["subjects"] == "all" else list(cfg["subjects"])
    n = cfg.get("questions_per_subject")
    toks, max_len, batch = {}, {}, {}
    if a.quick:
        from tiny_tokenizers import bytelevel_no_bos

        subjects, n = (subjects or ["abstract_algebra", "anatomy"])[:2], 4
        toks["tiny-bytelevel"], max_len["tiny-bytelevel"] = bytelevel_no_bos(questions), 2048
        batch["tiny-bytelevel"] = 8
    else:
        from transformers import AutoConfig, AutoTokenizer

        from mmlu_flavors.models import context_length, slugify

        for m in cfg["models"]:
            path = a.models_dir / slugify(m)
            toks[m] = AutoTokenizer.from_pretrained(path)
            model = type("ConfigOnly", (), {"config": AutoConfig.from_pretrained(path)})()
            max_len[m] = context_length(model, toks[m], cfg["model_registry"][m].get("max_length"))
            batch[m] = cfg["model_registry"][m].get("batch_size", 8)
    for name, defn in co.study_flavors(cfg["flavors"], "cyclic").items():
        fl.register(name, defn)
    out = []
    for f in cfg["flavors"]:
        for m, t in toks.items():
            if fl.get_flavor(f).chat != "none" and not getattr(t, "chat_template", None):
                continue
            ident = requests(build_prompts(questions, f, cfg.get("num_fewshot", 5), subjects, n),
                             t, max_len[m])
            base = engine_tokens(ident, batch[m])
            for k in (1, 2, 3):
                rot = co.rotated_name(f, k)
                reqs = requests(build_prompts(questions, rot, cfg.get("num_fewshot", 5),
                                              subjects, n), t, max_len[m])
                out.append({"flavor": f, "model": m, "rotation": k, "questions": len(reqs),
                            "identity_tokens": base, "tokens": engine_tokens(reqs, batch[m]),
                            "new_tokens": new_tokens(reqs, ident)})
    table = pl.DataFrame(out).with_columns(
        tokens_vs_identity=pl.col("tokens") / pl.col("identity_tokens"),
        new_vs_identity=pl.col("new_tokens") / pl.col("identity_tokens"))
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200):
        print(table)
    tot = table.select(pl.col("identity_tokens").sum() / 3, pl.col("tokens").sum(),
                       pl.col("new_tokens").sum()).row(0)
    print(f"three rotations: {tot[1]:,.0f} engine tokens = {tot[1] / tot[0]:.2f} x the identity "
          f"run ({tot[0]:,.0f}); with prefixes shared across flavors {tot[2]:,.0f} = "
          f"{tot[2] / tot[0]:.2f} x")
    if a.json:
        bench_machine.write_results(a.json, {"rows": table.to_dicts(), "identity_tokens": tot[0],
                                             "rotation_tokens": tot[1], "new_tokens": tot[2]},
                                    quick=a.quick)


if __name__ == "__main__":
    main()
