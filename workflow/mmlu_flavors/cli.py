"""`mmlu-flavors` command line: one subcommand per workflow stage (Snakemake calls these)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from .checks import read_prompts, read_questions
from .data import MMLUDataError, Source, load_questions, resolve_source, table_checksum
from .cache import DEFAULT_CHECKPOINT_QUESTIONS, DEFAULT_CHECKPOINT_SECONDS, DEFAULT_STORE
from .io import atomic_write_parquet, atomic_write_text

log = logging.getLogger("mmlu_flavors")


def _questions_from_args(a: argparse.Namespace) -> tuple[pl.DataFrame, Source]:
    if getattr(a, "questions", None):
        return read_questions(a.questions), Source("parquet", str(a.questions))
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
    from .cache import JobStats, Terminated, compute_view, job_metrics, on_sigterm

    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, on_sigterm)  # stop at once, keeping finished checkpoints
    entry = json.loads(a.entry)
    _register_flavors(a)
    prompts = read_prompts(a.prompts, a.flavor)
    subjects = [s for s in a.subjects.split(",") if s]
    n = None if a.questions_per_subject in (None, 0) else a.questions_per_subject
    stats = JobStats()
    out = Path(a.out)
    try:
        compute_view(prompts, a.model_name, entry, a.model_dir or None, a.flavor, subjects, n,
                     out, a.store, batch_size=a.batch_size,
                     max_batch_tokens=a.max_batch_tokens or None,
                     checkpoint_questions=a.checkpoint_questions,
                     checkpoint_seconds=a.checkpoint_seconds or None,
                     progress=not a.no_progress, stats=stats,
                     without_template=a.without_template, tokens_path=a.tokens or None)
    except Terminated:
        # the one line a killed try ends with (tests/test_slurm.py reads it): `computed` is
        # exactly what its checkpoints put in the store
        log.error("%s: terminated by SIGTERM after %d of %d questions were computed and "
                  "flushed; a rerun reuses them", out, stats.computed, stats.questions)
        raise SystemExit(143)
    metrics = job_metrics(stats, model=a.model_name, slug=out.parts[-4], flavor=a.flavor,
                          shard=out.stem, selection=out.parent.name, subjects=subjects,
                          dtype=str(entry.get("dtype", "float32")),
                          wall_seconds=time.perf_counter() - t0)
    atomic_write_text(a.metrics or out.with_suffix(".metrics.json"),
                      json.dumps(metrics, indent=2) + "\n")
    log.info("computed %d, reused %d questions (%s, %s)", stats.computed, stats.reused,
             a.model_name, a.flavor)


def cmd_tokens(a: argparse.Namespace) -> None:
    from .tokens import compute_tokens

    _register_flavors(a)
    n = None if a.questions_per_subject in (None, 0) else a.questions_per_subject
    compute_tokens(read_prompts(a.prompts, a.flavor), a.model_name, json.loads(a.entry),
                   a.model_dir or None, a.flavor, [s for s in a.subjects.split(",") if s], n,
                   Path(a.out), progress=not a.no_progress)


def cmd_cache(a: argparse.Namespace) -> None:
    from .cache import list_store, metrics_table

    if a.action == "summary":
        table = metrics_table(a.metrics)
        atomic_write_text(a.out, table.write_csv())
        log.info("%d jobs: computed %d, reused %d questions", table.height,
                 table["computed"].sum(), table["reused"].sum())
        return
    if a.action == "list":
        store = a.store or str(Path(a.directory) / DEFAULT_STORE)
        table = list_store(store)
        if table.is_empty():
            print(f"no cached questions under {store}")
            return
        with pl.Config(tbl_rows=-1, tbl_width_chars=200, fmt_str_lengths=60):
            print(table.drop("identity") if not a.identity else table)
            print(table.group_by("model_key", "model", "flavor").agg(
                pl.col("questions").sum(), pl.col("bytes").sum()).sort("model_key", "flavor"))
        return
    if a.action == "prune":
        _cache_prune(a)
    else:
        _cache_purge(a)


def _cache_prune(a: argparse.Namespace) -> None:
    """Move the stores no configured entry can have written to the quarantine (--yes)."""
    from . import prune

    configfiles = a.configfile or ["config.yaml"]
    store = Path(a.store) if a.store else prune.configured_store(configfiles, a.directory)
    try:  # the jobs' per-file hash memo: a local model directory is not hashed again
        memo = json.loads((store / "file_hashes.json").read_text())
    except (OSError, ValueError):
        memo = {}
    conf = prune.configured_patterns(configfiles, a.directory, memo if isinstance(memo, dict)
                                     else {})
    print("config files read: " + ", ".join(map(str, conf.files)))
    for f in prune.other_config_files(a.directory, conf.files):
        print(f"warning: {f} has a model_registry but was not given: stores only it "
              f"configures are not kept (add --configfile {f})", file=sys.stderr)
    plan = prune.plan_prune(store, conf.patterns)
    for note in conf.notes if plan.keep or plan.remove else []:
        print(f"warning: {note}", file=sys.stderr)
    for d, why in plan.keep:
        if d.fingerprint is None:
            print(f"warning: {d.path}: {why}", file=sys.stderr)
    print("\n".join(prune.format_plan(plan)))
    if not plan.remove:
        print("nothing to remove")
        return
    if a.dry_run:
        print("dry run: nothing was moved")
        return
    if not a.yes:
        print(f"nothing was moved: rerun with --yes to move these {len(plan.remove)} store(s) "
              f"to {store / prune.QUARANTINE}/ (restorable; `mmlu-flavors cache purge --yes` "
              "deletes them)")
        raise SystemExit(1)
    batch = prune.quarantine(plan, {"configfiles": [str(f) for f in conf.files],
                                    "directory": str(a.directory)})
    size = prune.human_bytes(sum(d.bytes for d in plan.remove))
    print(f"moved {len(plan.remove)} store(s) ({size}) to {batch}/; restore one with "
          f"`mv {batch}/<model_key> {store}/`; delete them for good with "
          "`mmlu-flavors cache purge --yes`")


def _cache_purge(a: argparse.Namespace) -> None:
    """Delete the quarantine that prune filled (--yes)."""
    from . import prune

    store = Path(a.store) if a.store else prune.configured_store(a.configfile or [],
                                                                  a.directory)
    batches = prune.quarantined(store)
    if not batches:
        print(f"nothing quarantined under {store / prune.QUARANTINE}")
        return
    total = sum(q.bytes for q in batches)
    print(f"{store / prune.QUARANTINE}: {len(batches)} prune batch(es), "
          f"{sum(len(q.stores) for q in batches)} store(s), {prune.human_bytes(total)}")
    print("\n".join(prune.format_quarantine(batches)))
    if a.dry_run:
        print("dry run: nothing was deleted")
        return
    if not a.yes:
        print("nothing was deleted: rerun with --yes to delete these for good")
        raise SystemExit(1)
    print(f"deleted {prune.human_bytes(prune.purge(batches))}")


def cmd_plan(a: argparse.Namespace) -> None:
    from . import plan

    if a.used is not None:
        table = plan.used_gpu_hours(a.used) if not a.out else plan.write_cost(a.used, a.out)
        print(plan.format_used(table))
        return
    config = plan.load_config(a.configfile, a.directory)
    print(plan.format_plan(plan.plan_table(config, a.directory)))
    used = plan.metrics_files(a.directory)
    if used:
        print("\n" + plan.format_used(plan.used_gpu_hours(used)))


def cmd_predictions(a: argparse.Namespace) -> None:
    from .reduce import write_predictions

    _register_flavors(a)
    write_predictions(a.shards, a.out)  # cache.read_shards checks every view (page CRCs)


def cmd_report(a: argparse.Namespace) -> None:
    from .report import write_all

    _register_flavors(a)
    write_all(Path(a.predictions), Path(a.out_dir), Path(a.blog_csv) if a.blog_csv else None,
              json.loads(a.hub_ids), seed=a.seed, n_boot=a.samples)


def cmd_attribution(a: argparse.Namespace) -> None:
    from .report import write_attribution

    _register_flavors(a)
    write_attribution(a.predictions, Path(a.out_dir), json.loads(a.pairs),
                      [f for f in a.order.split(",") if f], a.seed, a.samples)


def cmd_choice_order(a: argparse.Namespace) -> None:
    from .choice_order import write_all

    _register_flavors(a)
    paths = write_all(a.shards, [f for f in a.flavors.split(",") if f], a.out_dir,
                      seed=a.seed, n_boot=a.samples)
    log.info("choice order: %s", paths)


class _Tokenizers(Mapping):
    """Model name -> (tokenizer, max length), each loaded (tokenizer only) when first asked
    for; `models`: name -> {"entry": config entry, "model_dir": converted folder or null}."""

    def __init__(self, models: dict[str, dict]) -> None:
        self._models, self._loaded = models, {}

    def __getitem__(self, name: str):
        if name not in self._loaded:
            from .models import load_tokenizer

            m = self._models[name]
            self._loaded[name] = load_tokenizer(m["entry"], m.get("model_dir") or None, name)
        return self._loaded[name]

    def __iter__(self):
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)


def cmd_explorer(a: argparse.Namespace) -> None:
    from .explorer import build_explorer

    _register_flavors(a)
    info = build_explorer(a.predictions, a.prompts, a.cache, a.questions, Path(a.out),
                          Path(a.data_dir), inline_limit=a.inline_limit,
                          choice_order=a.choice_order,
                          tokenizers=_Tokenizers(json.loads(a.models)))
    log.info("explorer: %s", info)


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

    lg = sub.add_parser("logits", help="compute one cache view (model x flavor x subjects)")
    lg.add_argument("--prompts", required=True)
    lg.add_argument("--flavor", required=True)
    lg.add_argument("--model-name", required=True)
    lg.add_argument("--entry", required=True, help="the model entry as JSON")
    lg.add_argument("--model-dir", help="converted model directory (GGUF entries)")
    lg.add_argument("--subjects", required=True, help="comma-separated subjects of the shard")
    lg.add_argument("--questions-per-subject", type=int)
    lg.add_argument("--store", default=str(DEFAULT_STORE), help="the cache store directory")
    lg.add_argument("--batch-size", type=int, default=8)
    lg.add_argument("--max-batch-tokens", type=int, default=0, help="0: the engine default")
    lg.add_argument("--checkpoint-questions", type=int, default=DEFAULT_CHECKPOINT_QUESTIONS,
                    help="flush computed questions to the store every N at most")
    lg.add_argument("--checkpoint-seconds", type=float, default=DEFAULT_CHECKPOINT_SECONDS,
                    help="... and after about this much work (0: by count only)")
    lg.add_argument("--tokens", help="the shard's token table (the tokens stage); without "
                    "it the job tokenizes its questions itself")
    lg.add_argument("--metrics", help="metrics JSON (default: beside --out)")
    lg.add_argument("--no-progress", action="store_true")
    lg.add_argument("--without-template", choices=("stop", "skip"), default="stop",
                    help="a chat-template flavor on a tokenizer without one: stop (error) or "
                    "skip (empty view: not run for this model)")
    lg.add_argument("--out", required=True)
    flavor_args(lg)
    lg.set_defaults(fn=cmd_logits)

    tk = sub.add_parser("tokens", help="tokenize one shard (model x flavor x subjects): "
                        "the token ids its logits job reads")
    tk.add_argument("--prompts", required=True)
    tk.add_argument("--flavor", required=True)
    tk.add_argument("--model-name", required=True)
    tk.add_argument("--entry", required=True, help="the model entry as JSON")
    tk.add_argument("--model-dir", help="converted model directory (GGUF entries)")
    tk.add_argument("--subjects", required=True, help="comma-separated subjects of the shard")
    tk.add_argument("--questions-per-subject", type=int)
    tk.add_argument("--no-progress", action="store_true")
    tk.add_argument("--out", required=True)
    flavor_args(tk)
    tk.set_defaults(fn=cmd_tokens)

    ca = sub.add_parser("cache", help="list the cache store; prune (quarantine) the stores no "
                        "configured model can have written; purge the quarantine")
    ca.add_argument("action", choices=["list", "prune", "purge", "summary"])
    ca.add_argument("--metrics", nargs="*", default=[], help="summary: the jobs' metrics files")
    ca.add_argument("--out", help="summary: CSV to write")
    ca.add_argument("--store", help="the store (default: the config's cache_store, else "
                    f"{DEFAULT_STORE})")
    ca.add_argument("--directory", default=".",
                    help="the workflow's working directory (its config.yaml is read first, "
                    "as the Snakefile does; data/models holds converted models)")
    ca.add_argument("--configfile", nargs="+", action="extend",
                    help="prune: keep the models of these config files, each merged over "
                    "DIRECTORY/config.yaml and all merged in order (repeatable; default "
                    "config.yaml)")
    ca.add_argument("--dry-run", action="store_true", help="prune/purge: only say what would go")
    ca.add_argument("--yes", action="store_true", help="prune/purge: do it (without: only say)")
    ca.add_argument("--identity", action="store_true", help="list: show each fingerprint")
    ca.set_defaults(fn=cmd_cache)

    pl_ = sub.add_parser("plan", help="planned GPU-hours per model and flavor (offline), or "
                         "the GPU-hours finished jobs used (--used)")
    pl_.add_argument("--configfile", nargs="*", default=[],
                     help="read after DIRECTORY/config.yaml, merged as Snakemake does")
    pl_.add_argument("--directory", default=".", help="the workflow's working directory")
    pl_.add_argument("--used", nargs="*", help="metrics files of finished logits jobs")
    pl_.add_argument("--out", help="--used: also write this CSV")
    pl_.set_defaults(fn=cmd_plan)

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

    from .attribution import DEFAULT_ORDER, DEFAULT_PAIRS

    at = sub.add_parser("attribution", help="factor-by-factor walk between implementations")
    at.add_argument("--predictions", nargs="+", required=True,
                    help="predictions of the run and of the attribution's prompt variants")
    at.add_argument("--out-dir", required=True)
    at.add_argument("--pairs", default=json.dumps(DEFAULT_PAIRS),
                    help="JSON list of [implementation a, implementation b]")
    at.add_argument("--order", default=",".join(DEFAULT_ORDER),
                    help="comma-separated factor order of the walk")
    at.add_argument("--flavor-defs", default="{}", help="JSON: custom and variant flavors")
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--samples", type=int, default=1000)
    at.set_defaults(fn=cmd_attribution)

    co = sub.add_parser("choice-order", help="how the score moves under cyclic rotations of "
                        "the choices (choice_permutations: cyclic)")
    co.add_argument("--flavors", required=True, help="comma-separated selected flavors")
    co.add_argument("--out-dir", required=True)
    co.add_argument("--flavor-defs", default="{}", help="JSON: custom and rotated flavors")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--samples", type=int, default=1000)
    co.add_argument("shards", nargs="+", help="cache views of the flavors and their rotations")
    co.set_defaults(fn=cmd_choice_order)

    ex = sub.add_parser("explorer", help="static question explorer page (HTML + per-subject data)")
    ex.add_argument("--predictions", required=True)
    ex.add_argument("--questions", required=True, help="questions.parquet")
    ex.add_argument("--prompts", nargs="+", required=True, help="prompt tables, one per flavor")
    ex.add_argument("--cache", nargs="+", required=True, help="cache view files")
    ex.add_argument("--out", required=True, help="the page, e.g. reports/explorer.html")
    ex.add_argument("--data-dir", required=True, help="folder for the per-subject data scripts")
    ex.add_argument("--flavor-defs", default="{}", help="JSON: custom flavor definitions")
    ex.add_argument("--inline-limit", type=int, default=4_000_000,
                    help="also inline all data into the page when it totals at most this many bytes")
    ex.add_argument("--choice-order", help="reports/choice_order_questions.parquet: each "
                    "question's verdict under each cyclic rotation of the choices")
    ex.add_argument("--models", default="{}", help="JSON: model name -> {entry, model_dir}, "
                    "to show the chat-rendered text a model saw (its tokenizer only is loaded)")
    ex.set_defaults(fn=cmd_explorer)
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
    except (MMLUDataError, ValueError, OSError) as e:  # DamagedFileError is a ValueError
        msg = " ".join(str(e).split()) if not isinstance(e, OSError) or not e.filename \
            else f"{e.filename}: {e.strerror or e}"
        log.error("%s", msg)
        print(f"mmlu-flavors {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
