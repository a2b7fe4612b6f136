"""MMLU subject -> subcategory -> category, exactly as hendrycks/test `categories.py`.

Copied in content from the original repository's `categories.py` (imported by
`evaluate_hf.py`); every subject has exactly one subcategory and every subcategory belongs to
exactly one category, so the original's per-category accuracy is a micro average over the
questions of that category's subjects.
"""

from __future__ import annotations

import polars as pl

subcategories: dict[str, list[str]] = {
    "abstract_algebra": ["math"],
    "anatomy": ["health"],
    "astronomy": ["physics"],
    "business_ethics": ["business"],
    "clinical_knowledge": ["health"],
    "college_biology": ["biology"],
    "college_chemistry": ["chemistry"],
    "college_computer_science": ["computer science"],
    "college_mathematics": ["math"],
    "college_medicine": ["health"],
    "college_physics": ["physics"],
    "computer_security": ["computer science"],
    "conceptual_physics": ["physics"],
    "econometrics": ["economics"],
    "electrical_engineering": ["engineering"],
    "elementary_mathematics": ["math"],
    "formal_logic": ["philosophy"],
    "global_facts": ["other"],
    "high_school_biology": ["biology"],
    "high_school_chemistry": ["chemistry"],
    "high_school_computer_science": ["computer science"],
    "high_school_european_history": ["history"],
    "high_school_geography": ["geography"],
    "high_school_government_and_politics": ["politics"],
    "high_school_macroeconomics": ["economics"],
    "high_school_mathematics": ["math"],
    "high_school_microeconomics": ["economics"],
    "high_school_physics": ["physics"],
    "high_school_psychology": ["psychology"],
    "high_school_statistics": ["math"],
    "high_school_us_history": ["history"],
    "high_school_world_history": ["history"],
    "human_aging": ["health"],
    "human_sexuality": ["culture"],
    "international_law": ["law"],
    "jurisprudence": ["law"],
    "logical_fallacies": ["philosophy"],
    "machine_learning": ["computer science"],
    "management": ["business"],
    "marketing": ["business"],
    "medical_genetics": ["health"],
    "miscellaneous": ["other"],
    "moral_disputes": ["philosophy"],
    "moral_scenarios": ["philosophy"],
    "nutrition": ["health"],
    "philosophy": ["philosophy"],
    "prehistory": ["history"],
    "professional_accounting": ["other"],
    "professional_law": ["law"],
    "professional_medicine": ["health"],
    "professional_psychology": ["psychology"],
    "public_relations": ["politics"],
    "security_studies": ["politics"],
    "sociology": ["culture"],
    "us_foreign_policy": ["politics"],
    "virology": ["health"],
    "world_religions": ["philosophy"],
}

categories: dict[str, list[str]] = {
    "STEM": ["physics", "chemistry", "biology", "computer science", "math", "engineering"],
    "humanities": ["history", "philosophy", "law"],
    "social sciences": ["politics", "culture", "economics", "geography", "psychology"],
    "other (business, health, misc.)": ["other", "business", "health"],
}

SUBJECTS: tuple[str, ...] = tuple(sorted(subcategories))
CATEGORY_NAMES: tuple[str, ...] = tuple(categories)


def subcategory_of(subject: str) -> str:
    """The (single) subcategory of a subject; KeyError for an unknown subject."""
    return subcategories[subject][0]


def category_of(subject: str) -> str:
    """The category (a key of `categories`) of a subject; KeyError for an unknown subject."""
    sub = subcategory_of(subject)
    for cat, subs in categories.items():
        if sub in subs:
            return cat
    raise KeyError(f"subcategory {sub!r} of {subject!r} is in no category")


def subject_table() -> pl.DataFrame:
    """One row per subject: `subject, subcategory, category` (sorted by subject)."""
    return pl.DataFrame(
        {
            "subject": list(SUBJECTS),
            "subcategory": [subcategory_of(s) for s in SUBJECTS],
            "category": [category_of(s) for s in SUBJECTS],
        },
        schema={"subject": pl.String, "subcategory": pl.String, "category": pl.String},
    )
