"""The engine seam: backends chosen per model entry, cache identity, one oracle for all.

The transformers backend's identity must not change (caches written before backends existed
stay valid); every other backend keys its own store. A backend built on the literal
one-forward-per-request path (`engine.run_naive`, the exactness oracle) goes through the same
seam and fills the same view as the default backend, so nothing above the seam depends on
which backend ran.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from mmlu_flavors import backends, cache, engine, models
from mmlu_flavors.prompts import build_prompts
from workflow_fixture import ROOT, make_tiny_model

SHA = "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _converted(tmp: Path) -> Path:
    d = tmp / "converted"
    d.mkdir()
    (d / models.IDENTITY_FILE).write_text(json.dumps({"gguf_sha256": SHA, "gguf_file": "m.gguf"}))
    (d / "config.json").write_text("{}")
    return d


def _local(tmp: Path) -> Path:
    d = tmp / "local"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    return d


# model keys of these entries as computed before the backend seam existed (fixed inputs)
BEFORE = {
    "gguf": "f8455674ece76dd7",
    "local": "1d2dcdcedf8cd14d",
    "hub": "0c479e46bdcb2937",
}


def _entries(tmp: Path) -> dict[str, tuple[dict, Path | None]]:
    return {
        "gguf": ({"source": "gguf", "gguf_package": "x", "gguf_file": "m.gguf",
                  "dtype": "float32", "device": "cpu"}, _converted(tmp)),
        "local": ({"source": "local", "path": str(_local(tmp)), "dtype": "float32",
                   "device": "cpu"}, None),
        "hub": ({"source": "hub", "hub_id": "org/m", "revision": COMMIT, "dtype": "bfloat16",
                 "device": "cpu"}, None),
    }


def test_transformers_identity_is_unchanged(tmp_path) -> None:
    for kind, (entry, model_dir) in _entries(tmp_path).items():
        key = models.model_key(models.fingerprint(entry, model_dir))
        assert key == BEFORE[kind], kind
        explicit = models.fingerprint({**entry, "backend": "transformers"}, model_dir)
        assert models.model_key(explicit) == key
        assert "backend" not in explicit


def test_other_backends_key_their_own_store(tmp_path) -> None:
    entry, model_dir = _entries(tmp_path)["gguf"]
    base = models.model_key(models.fingerprint(entry, model_dir))
    llama = models.fingerprint({**entry, "backend": "llama_cpp"}, model_dir)
    assert llama["backend"] == "llama_cpp" and llama["gguf_sha256"] == SHA
    assert llama["settings"]["n_ctx"] == 2048 and "backend_version" in llama
    other_ctx = models.fingerprint({**entry, "backend": "llama_cpp", "n_ctx": 4096}, model_dir)
    keys = {base, models.model_key(llama), models.model_key(other_ctx)}
    assert len(keys) == 3  # a llama_cpp store never serves a transformers request
    server = {**entry, "backend": "openai_completions", "base_url": "http://127.0.0.1:1/v1",
              "server_model": "m", "revision": COMMIT}
    fp = models.fingerprint(server, model_dir)
    assert fp == {"backend": "openai_completions", "backend_version": 1, "server_model": "m",
                  "revision": COMMIT}
    # where the server runs and how hard it is pushed changes no number
    moved = {**server, "base_url": "http://10.0.0.2:8000", "max_in_flight": 32}
    assert models.fingerprint(moved, model_dir) == fp
    with pytest.raises(ValueError, match="refusing to cache.*revision"):
        models.fingerprint({k: v for k, v in server.items() if k != "revision"}, model_dir)


def test_unknown_backend_is_one_clear_error(tmp_path) -> None:
    entry, model_dir = _entries(tmp_path)["gguf"]
    with pytest.raises(ValueError, match=r"model 'm1', field 'backend': 'vllm' is not one of"):
        models.fingerprint({**entry, "backend": "vllm"}, model_dir, name="m1")
    with pytest.raises(ValueError, match="field 'n_ctx'"):
        models.fingerprint({**entry, "backend": "llama_cpp", "n_ctx": "big"}, model_dir)


def test_config_schema_checks_backend_fields() -> None:
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    item = schema["properties"]["model_registry"]["additionalProperties"]
    ok = {"source": "gguf", "gguf_file": "m.gguf", "backend": "llama_cpp", "n_ctx": 1024}
    jsonschema.validate(ok, item)
    jsonschema.validate({"source": "hub", "hub_id": "o/m", "backend": "openai_completions",
                         "base_url": "http://h:8000/v1", "server_model": "o/m",
                         "revision": COMMIT, "max_in_flight": 8}, item)
    bad = [({**ok, "backend": "vllm"}, "vllm"),
           ({"source": "hub", "hub_id": "o/m", "backend": "llama_cpp"}, "gguf"),
           ({"source": "hub", "hub_id": "o/m", "backend": "openai_completions"}, "base_url"),
           ({**ok, "n_ctx": 8}, "8")]
    for entry, word in bad:
        with pytest.raises(jsonschema.ValidationError, match=word):
            jsonschema.validate(entry, item)


# ---------------------------------------------------------------- the seam

class NaiveBackend:
    """The exactness oracle behind the seam: one full forward per model input."""

    name = "naive"

    def identity(self, entry, base):
        return {**base, "backend": self.name}

    def load(self, entry, model_dir, name):
        return models.load_model(entry, model_dir, name)

    def run(self, loaded, requests, letter_ids, *, batch_size, max_batch_tokens, progress,
            stats):
        return engine.run_naive(loaded.model, requests, letter_ids, stats)


def test_seam_fills_the_same_view_whatever_backend_ran(questions, tmp_path, monkeypatch) -> None:
    import sys
    import types

    model_dir = make_tiny_model(questions, tmp_path / "tiny")
    mod = types.ModuleType("mmlu_flavors.backends.naive_oracle")
    mod.BACKEND = NaiveBackend()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(backends.BACKENDS, "naive", "naive_oracle")
    subjects = ["abstract_algebra", "marketing"]
    prompts = build_prompts(questions, "harness_e47e01b", subjects=subjects)
    entry = {"source": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu"}
    views = {}
    for name in ("transformers", "naive"):
        views[name] = cache.compute_view(
            prompts, "tiny", {**entry, "backend": name}, None, "harness_e47e01b", subjects, 2,
            tmp_path / f"{name}.parquet", tmp_path / "store", progress=False)
    # two stores: the oracle's rows never serve the default backend, and vice versa
    assert len([p for p in (tmp_path / "store").iterdir() if p.is_dir()]) == 2
    fast, ref = views["transformers"], views["naive"]
    assert fast.columns == ref.columns == list(cache.CACHE_SCHEMA)
    for col in ("greedy_id", "topk_ids", "letter_cont_greedy", "text_cont_greedy",
                "prompt_sha256", "text_cont_ids"):
        assert fast[col].to_list() == ref[col].to_list(), col
    for col in ("letter_logprobs", "topk_logprobs", "letter_cont_sum", "text_cont_sum"):
        for a, b in zip(fast[col].to_list(), ref[col].to_list()):
            assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b)), col
