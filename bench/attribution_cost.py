"""What the attribution's prompt variants add to a run, in model tokens.

For a config (default: config.yaml: its subjects, questions per subject, models, pairs, walk
order and variant mode) this builds the prompts of the run's flavors and of the
attribution's prompt variants, applies each flavor's token rule with each model's tokenizer
and counts the tokens the fast engine runs (`engine.planned_tokens`, the quantity the
logits jobs' time is proportional to). Prints tokens per flavor and model, and the variants'
total relative to the run's flavors, for every walk order given.

    PYTHONPATH=workflow .venv/bin/python bench/attribution_cost.py \
        --order header,template,shots,answer_delimiter,tokens,scoring,averaging \
        --order shots,header,template,answer_delimiter,tokens,scoring,averaging \
        --json bench/results/attribution_cost.json

`--quick` (CI, seconds): two small tokenizers trained on MMLU (tests/tiny_tokenizers.py) in
place of the converted models, 2 subjects x 3 questions; `--json` writes the counts with the
machine's description (bench/machine.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402

import polars as pl  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

from mmlu_flavors import attribution as at  # noqa: E402
from mmlu_flavors import flavors as fl  # noqa: E402
from mmlu_flavors.data import SHIPPED_MMLU_DIR, Source, load_questions  # noqa: E402
from mmlu_flavors.engine import planned_tokens  # noqa: E402
from mmlu_flavors.models import context_length, slugify  # noqa: E402
from mmlu_flavors.prompts import build_prompts  # noqa: E402
from mmlu_flavors.tokenize import tokenize_row  # noqa: E402


def tokens(prompts: pl.DataFrame, tokenizer, max_length: int, batch_size: int) -> int:
    total = 0
    for _, df in prompts.group_by("subject", maintain_order=True):
        reqs = [tokenize_row(r, tokenizer, max_length).request for r in df.iter_rows(named=True)]
        total += planned_tokens(reqs, batch_size)[0]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--order", action="append", help="comma-separated walk order (repeatable)")
    ap.add_argument("--mode", default=None, help="walk | shapley (default: the config's)")
    ap.add_argument("--json", type=Path, help="write the counts and the machine here")
    ap.add_argument("--quick", action="store_true",
                    help="CI: small trained tokenizers, 2 subjects x 3 questions (seconds)")
    a = ap.parse_args()
    load0 = machine.load_now()
    cfg = yaml.safe_load(a.config.read_text())
    mmlu = ((a.config.parent / cfg["mmlu_dir"]).resolve() if cfg.get("mmlu_dir")
            else SHIPPED_MMLU_DIR)
    questions = load_questions(Source("local", str(mmlu)))
    subjects = None if cfg["subjects"] == "all" else list(cfg["subjects"])
    n = cfg.get("questions_per_subject")
    if a.quick:
        subjects, n = subjects[:2] if subjects else ["abstract_algebra", "anatomy"], 3
    pairs = cfg.get("attribution_pairs", at.DEFAULT_PAIRS)
    mode = a.mode or cfg.get("attribution_variants", "walk")
    orders = [o.split(",") for o in (a.order or [",".join(cfg.get("attribution_order", at.FACTORS))])]
    toks, max_len = {}, {}
    for m in cfg["models"] if not a.quick else []:
        path = a.models_dir / slugify(m)
        toks[m] = AutoTokenizer.from_pretrained(path)
        model = type("ConfigOnly", (), {"config": AutoConfig.from_pretrained(path)})()
        max_len[m] = context_length(model, toks[m], cfg["model_registry"][m].get("max_length"))

    if a.quick:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_tokenizers import bytelevel_no_bos, sentencepiece_bos

        toks = {"tiny-bpe": bytelevel_no_bos(questions), "tiny-sp-bos": sentencepiece_bos(questions)}
        max_len = {m: 1024 for m in toks}
        cfg["model_registry"] = {m: {} for m in toks}
    record: dict = {"config": str(a.config), "subjects": subjects, "questions_per_subject": n,
                    "models": list(toks), "orders": {}}

    def count(flavor: str) -> dict[str, int]:
        p = build_prompts(questions, flavor, cfg.get("num_fewshot", 5), subjects, n)
        return {m: tokens(p, t, max_len[m], cfg["model_registry"][m].get("batch_size", 8))
                for m, t in toks.items()}

    base = {f: count(f) for f in cfg["flavors"]}
    base_total = sum(sum(v.values()) for v in base.values())
    print(f"{len(cfg['flavors'])} flavors x {len(toks)} models: {base_total:,} tokens")
    record["flavors"] = base
    for f, v in base.items():
        print(f"  {f:<20} " + "  ".join(f"{m}: {t:>9,}" for m, t in v.items()))
    for order in orders:
        variants = at.variant_definitions(pairs, order, mode, cfg["flavors"])
        extra = {}
        for name, defn in variants.items():
            if name not in fl.FLAVORS:  # the same prompt spec under another order
                fl.register(name, defn)
            extra[name] = count(name)
        total = sum(sum(v.values()) for v in extra.values())
        print(f"\norder {','.join(order)}, mode {mode}: {len(variants)} variants, "
              f"{total:,} tokens = {total / base_total:.2f} x the run's flavors")
        record["orders"][",".join(order)] = {"mode": mode, "variants": extra, "tokens": total,
                                            "ratio_to_flavors": total / base_total}
        for name, v in extra.items():
            print(f"  {name} {variants[name]['display'][30:]:<55} "
                  + "  ".join(f"{t:>9,}" for t in v.values()))
    if a.json:
        machine.write_results(a.json, record, quick=a.quick, load_start=load0)


if __name__ == "__main__":
    main()
