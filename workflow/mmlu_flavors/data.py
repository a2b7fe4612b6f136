"""MMLU questions from the original Berkeley CSV layout or the Hub (`cais/mmlu`).

Sources, in order (`resolve_source`): the config's `mmlu_dir`, the copy shipped in
`resources/mmlu/` (all 57 subjects, checksummed), the Hub.

Output is one table, one row per (split, subject, index): `index` is the row in the
subject's CSV (0-based), `choices` the four answer texts as raw strings, `answer` 0-3.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)
SPLITS: tuple[str, ...] = ("dev", "val", "test")
# the copy of MMLU tracked in the repository (resources/README.md): the default data source
SHIPPED_MMLU_DIR = Path(__file__).resolve().parents[2] / "resources" / "mmlu"
HUB_SPLIT = {"dev": "dev", "val": "validation", "test": "test"}
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

SCHEMA = {
    "split": pl.String, "subject": pl.String, "index": pl.Int64, "question": pl.String,
    "choices": pl.List(pl.String), "answer": pl.Int8,
}


log = logging.getLogger(__name__)


class MMLUDataError(ValueError):
    """Bad MMLU input: the message names the file (or dataset), row and field."""


@dataclass(frozen=True)
class Source:
    """Where the questions came from, recorded beside the table."""

    kind: str  # "local" (mmlu_dir) | "shipped" (resources/mmlu) | "hub"
    location: str
    revision: str | None = None


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def _check_subjects(found: set[str], where: str, subjects: list[str] | None) -> list[str]:
    wanted = list(subjects) if subjects is not None else list(SUBJECTS)
    unknown = sorted(set(wanted) - set(SUBJECTS))
    if unknown:
        raise MMLUDataError(f"unknown MMLU subject(s) {unknown} (known: the 57 of {where})")
    if subjects is None:
        extra = sorted(found - set(SUBJECTS))
        missing = sorted(set(SUBJECTS) - found)
        if extra or missing or len(found) != len(SUBJECTS):
            raise MMLUDataError(
                f"{where}: expected the {len(SUBJECTS)} MMLU subjects, found {len(found)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else ""))
    return wanted


def _read_csv(path: Path, split: str, subject: str) -> list[dict]:
    """Read one Berkeley CSV as raw strings (the text `None` stays "None")."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) != 6:
                    raise MMLUDataError(
                        f"{path}: row {i} has {len(row)} fields, expected 6 "
                        "(question, A, B, C, D, answer letter): a row without 4 choices")
                if row[5] not in LETTERS:
                    raise MMLUDataError(
                        f"{path}: row {i}: answer {row[5]!r} is not one of A, B, C, D")
                rows.append({"split": split, "subject": subject, "index": i,
                             "question": row[0], "choices": row[1:5],
                             "answer": LETTERS.index(row[5])})
    except UnicodeDecodeError as e:
        raise MMLUDataError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise MMLUDataError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise MMLUDataError(f"{path}: no rows")
    return rows


def verify_checksums(mmlu_dir: Path) -> int:
    """Check every file listed in `SHA256SUMS` (if present); returns how many were checked."""
    sums = mmlu_dir / "SHA256SUMS"
    if not sums.exists():
        return 0
    n = 0
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = mmlu_dir / name.lstrip("*")
        if not path.exists():
            continue  # absence is reported by the reader, naming split and subject
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise MMLUDataError(f"{path}: SHA-256 differs from {sums}")
        n += 1
    return n


def read_local(mmlu_dir: Path | str, subjects: list[str] | None = None) -> pl.DataFrame:
    """All splits from a directory in the Berkeley layout `{split}/{subject}_{split}.csv`."""
    mmlu_dir = Path(mmlu_dir)
    if not mmlu_dir.is_dir():
        raise MMLUDataError(f"MMLU directory {mmlu_dir} does not exist")
    for split in SPLITS:
        if not (mmlu_dir / split).is_dir():
            raise MMLUDataError(f"{mmlu_dir}: split directory '{split}/' is missing")
    found = {p.name[: -len("_test.csv")] for p in (mmlu_dir / "test").glob("*_test.csv")}
    wanted = _check_subjects(found, str(mmlu_dir / "test"), subjects)
    verify_checksums(mmlu_dir)
    rows: list[dict] = []
    for subject in wanted:
        for split in SPLITS:
            path = mmlu_dir / split / f"{subject}_{split}.csv"
            if not path.exists():
                raise MMLUDataError(f"{path}: missing (subject {subject}, split {split})")
            rows.extend(_read_csv(path, split, subject))
    return pl.DataFrame(rows, schema=SCHEMA)


def read_hub(dataset: str = "cais/mmlu", revision: str | None = None,
             subjects: list[str] | None = None) -> pl.DataFrame:
    """All splits from the Hub dataset (one config per subject), or a local copy of its layout."""
    import datasets  # heavy import, only on this path

    wanted = _check_subjects(set(SUBJECTS), dataset, subjects)
    frames = []
    for subject in wanted:
        try:
            dd = datasets.load_dataset(dataset, subject, revision=revision)
        except Exception as e:  # network, missing config, bad files: name what failed
            raise MMLUDataError(
                f"could not load subject {subject!r} of dataset {dataset!r}: {e}") from None
        for split in SPLITS:
            name = HUB_SPLIT[split]
            if name not in dd:
                raise MMLUDataError(f"{dataset}/{subject}: split {name!r} is missing")
            ds = dd[name]
            for col in ("question", "choices", "answer"):
                if col not in ds.column_names:
                    raise MMLUDataError(f"{dataset}/{subject}/{name}: column {col!r} missing")
            rows = []
            for i, r in enumerate(ds):
                where = f"{dataset}/{subject}/{name} row {i}"
                if len(r["choices"]) != 4:
                    raise MMLUDataError(f"{where}: {len(r['choices'])} choices, expected 4")
                ans = r["answer"]
                if isinstance(ans, str):
                    if ans not in LETTERS:
                        raise MMLUDataError(f"{where}: answer {ans!r} is not one of A-D")
                    ans = LETTERS.index(ans)
                if ans not in (0, 1, 2, 3):
                    raise MMLUDataError(f"{where}: answer {ans!r} is not 0-3")
                rows.append({"split": split, "subject": subject, "index": i,
                             "question": r["question"], "choices": list(r["choices"]),
                             "answer": ans})
            frames.append(pl.DataFrame(rows, schema=SCHEMA) if rows else _empty())
    return pl.concat(frames)


def hub_unreachable(dataset: str, revision: str | None = None) -> str | None:
    """Why the Hub dataset cannot be loaded now (None when it can): a local copy of its
    layout, a cached copy in offline mode, or one metadata request with a short timeout."""
    if Path(dataset).is_dir():
        return None
    import huggingface_hub

    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        try:
            huggingface_hub.snapshot_download(dataset, repo_type="dataset", revision=revision,
                                              local_files_only=True)
            return None
        except Exception:  # noqa: BLE001 - any failure means: not in the local cache
            return "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and not in the local Hub cache"
    try:
        huggingface_hub.HfApi().dataset_info(dataset, revision=revision, timeout=10)
    except Exception as e:  # noqa: BLE001 - network, DNS, 404: say which in one line
        return f"unreachable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def resolve_source(source: str, mmlu_dir: str | None, hub_dataset: str,
                   hub_revision: str | None = None, shipped: Path | None = SHIPPED_MMLU_DIR,
                   check_hub: bool = True) -> Source:
    """Where to read MMLU, in the documented order: `mmlu_dir` when set and present, else the
    copy shipped in `resources/mmlu/`, else the Hub dataset. `local` stops after the local
    places, `hub` goes straight to the Hub. When no place is reachable the error names each
    place tried, in one line. `check_hub=False` skips the Hub reachability request."""
    if source not in ("auto", "local", "hub"):
        raise MMLUDataError(f"config mmlu_source: {source!r} is not one of auto, local, hub")
    tried: list[str] = []
    if source in ("auto", "local"):
        if mmlu_dir:
            if Path(mmlu_dir).is_dir():
                return Source("local", str(Path(mmlu_dir).resolve()))
            tried.append(f"mmlu_dir {mmlu_dir} (no such directory)")
            log.warning("mmlu_dir %s does not exist; trying the next source", mmlu_dir)
        if shipped is not None and (Path(shipped) / "test").is_dir():
            return Source("shipped", str(Path(shipped).resolve()))
        tried.append(f"shipped copy {shipped} (missing)")
    if source in ("auto", "hub"):
        reason = hub_unreachable(hub_dataset, hub_revision) if check_hub else None
        if reason is None:
            return Source("hub", hub_dataset, hub_revision)
        tried.append(f"Hub dataset {hub_dataset} ({reason})")
    raise MMLUDataError("no MMLU data reachable (mmlu_source: " + source + "); tried: "
                        + "; ".join(tried))


def load_questions(source: Source, subjects: list[str] | None = None) -> pl.DataFrame:
    """Read and validate every split; sorted by split, subject, index."""
    df = (read_local(source.location, subjects) if source.kind in ("local", "shipped")
          else read_hub(source.location, source.revision, subjects))
    return df.sort("split", "subject", "index")


def table_checksum(df: pl.DataFrame) -> str:
    """A SHA-256 over the table's content, independent of Parquet encoding."""
    h = hashlib.sha256()
    for row in df.select(list(SCHEMA)).iter_rows():
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def save_hub_layout(questions: pl.DataFrame, out_dir: Path | str) -> Path:
    """Write questions in the Hub repository's layout and features (one config per subject,
    `answer` a ClassLabel A-D, as `cais/mmlu`), for offline use by `datasets` and lm-eval."""
    import datasets

    features = datasets.Features({
        "question": datasets.Value("string"), "subject": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
        "answer": datasets.ClassLabel(names=list(LETTERS)),
    })
    out_dir = Path(out_dir)
    configs = []
    for subject in sorted(questions["subject"].unique().to_list()):
        files = []
        for split in SPLITS:
            part = (questions.filter((pl.col("split") == split) & (pl.col("subject") == subject))
                    .sort("index").select("question", "subject", "choices",
                                          pl.col("answer").cast(pl.Int64)))
            rel = f"{subject}/{HUB_SPLIT[split]}-00000-of-00001.parquet"
            (out_dir / subject).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(part.to_dict(as_series=False),
                                       features=features).to_parquet(str(out_dir / rel))
            files.append(f"  - split: {HUB_SPLIT[split]}\n    path: {rel}")
        configs.append(f"- config_name: {subject}\n  data_files:\n" + "\n".join(files))
    (out_dir / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return out_dir
