"""`mmlu-flavors` command line: one subcommand per workflow stage (Snakemake calls these)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import polars as pl

from .data import MMLUDataError, Source, load_questions, resolve_source, table_checksum
from .io import atomic_write_parquet, atomic_write_text

log = logging.getLogger("mmlu_flavors")


def _questions_from_args(a: argparse.Namespace) -> tuple[pl.DataFrame, Source]:
    if getattr(a, "questions", None):
        df = pl.read_parquet(a.questions)
        return df, Source("parquet", str(a.questions))
    src = resolve_source(a.source, a.mmlu or None, a.hub, a.revision or None)
    return load_questions(src), src


def _register_flavors(a: argparse.Namespace) -> None:
    """Custom flavor definitions (config.yaml `custom_flavors`, resolved) given as JSON."""
    from .flavors import register_all

    defs = json.loads(getattr(a, "flavor_defs", None) or "{}")
    if not isinstance(defs, dict):
        raise ValueError("--flavor-defs: expected a JSON object of flavor name -> definition")
    register_all(defs)


def cmd_questions(a: argparse.Namespace) -> None:
    df, src = _questions_from_args(a)
    checksum = table_checksum(df)
    info = {"source": src.kind, "location": src.location, "revision": src.revision,
            "checksum_sha256": checksum,
            "rows": {s: int(n) for s, n in df.group_by("split").len().iter_rows()}}
    atomic_write_parquet(df, a.out, info)
    atomic_write_text(Path(a.out).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    log.info("questions from %s %s: %s", src.kind, src.location, info["rows"])


def cmd_prompts(a: argparse.Namespace) -> None:
    from .flavors import get_flavor
    from .prompts import build_prompts

    _register_flavors(a)
    df, _ = _questions_from_args(a)
    table = build_prompts(df, a.flavor, num_fewshot=a.num_fewshot)
    atomic_write_parquet(table, a.out, {"flavor": a.flavor, "num_fewshot": a.num_fewshot,
                                        "definition": dict(get_flavor(a.flavor).spec)})
    log.info("%s: %d prompts for %d subjects", a.flavor, table.height,
             table["subject"].n_unique())


def cmd_convert(a: argparse.Namespace) -> None:
    from .models import convert_gguf

    convert_gguf(json.loads(a.entry), Path(a.out))


def cmd_logits(a: argparse.Namespace) -> None:
    from .cache import compute_shard
    from .flavors import get_flavor
    from .models import load_model
    from .tokenize import has_chat_template

    _register_flavors(a)
    fl = get_flavor(a.flavor)
    entry = json.loads(a.entry)
    loaded = load_model(entry, Path(a.model_dir) if a.model_dir else None, name=a.model_name)
    if fl.chat != "none" and not has_chat_template(loaded.tokenizer):
        raise ValueError(f"flavor {a.flavor!r} renders prompts with the tokenizer's chat "
                         f"template, but model {a.model_name!r} has none (a base model): leave "
                         "the flavor out for this model")
    prompts = pl.read_parquet(a.prompts)
    subjects = [s for s in a.subjects.split(",") if s]
    n = None if a.questions_per_subject in (None, 0) else a.questions_per_subject
    shard = compute_shard(prompts, a.model_name, loaded, a.flavor, subjects, n, Path(a.out),
                          batch_size=int(entry.get("batch_size", 8)),
                          progress=not a.no_progress)
    log.info("%s: %d questions cached", a.out, shard.height)


def cmd_predictions(a: argparse.Namespace) -> None:
    from .reduce import write_predictions

    _register_flavors(a)
    write_predictions(a.shards, a.out)


def cmd_report(a: argparse.Namespace) -> None:
    from .report import write_all

    _register_flavors(a)
    write_all(Path(a.predictions), Path(a.out_dir), Path(a.blog_csv) if a.blog_csv else None,
              json.loads(a.hub_ids), seed=a.seed, n_boot=a.samples)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmlu-flavors", description=__doc__)
    p.add_argument("--log", help="also write the log to this file")
    sub = p.add_subparsers(dest="cmd", required=True)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--source", default="auto", choices=["auto", "local", "hub"])
        sp.add_argument("--mmlu", help="local directory in the Berkeley layout")
        sp.add_argument("--hub", default="cais/mmlu", help="Hub dataset id (or a local copy of it)")
        sp.add_argument("--revision")
        sp.add_argument("--questions", help="a questions.parquet built by `questions`")

    def flavor_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--flavor-defs", default="{}",
                        help="JSON: custom flavor name -> definition (config custom_flavors)")

    q = sub.add_parser("questions", help="read and validate MMLU into one Parquet table")
    data_args(q)
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cmd_questions)

    pr = sub.add_parser("prompts", help="build one flavor's prompts for all 57 subjects")
    data_args(pr)
    pr.add_argument("--flavor", required=True)
    pr.add_argument("--num-fewshot", type=int, default=5)
    pr.add_argument("--out", required=True)
    flavor_args(pr)
    pr.set_defaults(fn=cmd_prompts)

    c = sub.add_parser("convert", help="convert a GGUF model entry to a safetensors directory")
    c.add_argument("--entry", required=True, help="the model entry as JSON")
    c.add_argument("--out", required=True)
    c.set_defaults(fn=cmd_convert)

    lg = sub.add_parser("logits", help="compute one cache shard (model x flavor x subjects)")
    lg.add_argument("--prompts", required=True)
    lg.add_argument("--flavor", required=True)
    lg.add_argument("--model-name", required=True)
    lg.add_argument("--entry", required=True, help="the model entry as JSON")
    lg.add_argument("--model-dir", help="converted model directory (GGUF entries)")
    lg.add_argument("--subjects", required=True, help="comma-separated subjects of the shard")
    lg.add_argument("--questions-per-subject", type=int)
    lg.add_argument("--no-progress", action="store_true")
    lg.add_argument("--out", required=True)
    flavor_args(lg)
    lg.set_defaults(fn=cmd_logits)

    pd_ = sub.add_parser("predictions", help="every prompt x scorer reduction of cache shards")
    pd_.add_argument("--out", required=True)
    pd_.add_argument("shards", nargs="+")
    flavor_args(pd_)
    pd_.set_defaults(fn=cmd_predictions)

    r = sub.add_parser("report", help="scores, CIs, ranks, tables and plots")
    r.add_argument("--predictions", required=True)
    r.add_argument("--out-dir", required=True)
    r.add_argument("--blog-csv")
    r.add_argument("--hub-ids", default="{}", help="JSON: model name -> Hub id")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--samples", type=int, default=1000)
    flavor_args(r)
    r.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except (MMLUDataError, ValueError, FileNotFoundError) as e:  # FlavorError is a ValueError
        log.error("%s", e)
        print(f"mmlu-flavors {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
