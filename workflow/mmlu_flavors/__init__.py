"""mmlu-flavors: one MMLU, four reference implementations, one logits cache."""

__version__ = "0.1.0"
