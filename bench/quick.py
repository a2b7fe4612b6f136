"""What the bench scripts' `--quick` modes run on: a tiny random model directory and small
tokenizers trained on MMLU (tests/conftest_models.py, tests/tiny_tokenizers.py), built in
seconds without a download, so that CI runs every bench script end to end
(tests/test_bench_quick.py). Figures of a quick run mean nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT / "workflow"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def tiny_tokenizer(subjects: list[str] | None = None):
    """A byte-level BPE without BOS (SmolLM2-like) trained on MMLU's dev/val rows."""
    from tiny_tokenizers import bytelevel_no_bos

    from mmlu_flavors.data import SHIPPED_MMLU_DIR, read_local

    return bytelevel_no_bos(read_local(SHIPPED_MMLU_DIR, subjects or ["abstract_algebra"]))


def tiny_model_dir(path: str | Path) -> Path:
    """A Hugging Face model directory (config, safetensors, tokenizer) of a tiny random Llama
    whose vocabulary is the tiny tokenizer's; reused when already there."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    from conftest_models import tiny_llama

    tok = tiny_tokenizer()
    model = tiny_llama(vocab=len(tok))
    model.config.max_position_embeddings = 2048
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
