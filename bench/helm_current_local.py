"""Run crfm-helm 0.5.16's MMLU on a local Hugging Face model, offline: the `helm_current` reference.

Runs in the helm venv (bench/setup_helm.sh, default ~/.cache/mmlu-flavors/venvs/helm)::

    ~/.cache/mmlu-flavors/venvs/helm/bin/python bench/helm_current_local.py MODEL_DIR resources/mmlu SUBJECT... \\
        [--limit N] [--num-fewshot K] --out rows.jsonl

What ``helm-run --enable-local-huggingface-models MODEL_DIR`` does for ``mmlu:subject=S``,
with HELM's own code:

* prompts: ``MMLUScenario.get_instances`` + ``get_mmlu_spec`` + ``MultipleChoiceJointAdapter``
  (bench/helm_local.py; the window service is the stand-in there: every prompt fits, which the
  comparison checks with the model's own token counts);
* model: ``register_huggingface_local_model_from_flag_value(MODEL_DIR)`` (the deployment
  ``huggingface/<dir name>``: ``max_sequence_length`` = ``tokenizer.model_max_length``,
  ``end_of_text_token`` = ``tokenizer.eos_token``), then its client built as ``AutoClient``
  builds it (``inject_object_spec_args`` with the same bindings, a no-op cache), so
  ``HuggingFaceClient`` infers ``apply_chat_template`` from the tokenizer;
  HELM refuses that flag for a tokenizer whose ``model_max_length`` is unset (> 10^6: both
  embedded models as converted here), telling the user to declare the model in
  ``prod_env/model_deployments.yaml``; the runner then registers what such an entry gives
  (``register_declared``: the same client and tokenizer, ``max_sequence_length`` from
  config.json) and records which in ``registered``;
* per request ``HuggingFaceClient.make_request`` (``get_prompt``: the chat template around
  the whole prompt when there is one; ``HuggingFaceServer.serve_request``: ``tokenizer(prompt)``,
  ``model.generate`` with ``max_new_tokens=1``, ``do_sample=True`` at temperature 1e-7, the
  stop "\\n" as ``eos_token_id``; ``truncate_sequence`` at the stop and the end-of-text token);
* the metric: ``exact_match`` of HELM's ``evaluate_reference_metrics`` on the output mapping.

``--num-fewshot`` sets ``max_train_instances`` (HELM's default 5). torch's seed is fixed
(``do_sample=True``: only exact ties could differ). One JSON line per test question: subject,
index, num_fewshot, prompt (``request.prompt``), client_prompt (``get_prompt``), apply_chat_template,
input_tokens (what ``serve_request`` tokenizes), generated_tokens, completion (its text after
truncation), output_mapping, gold_letters, exact_match, max_sequence_length, end_of_text_token.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from helm_local import HELM_VERSION, _FitsEverything  # bench/ (sys.path[0] as a script)
from jsonl_out import write_jsonl


def register_declared(model_dir: str, name: str, max_sequence_length: int) -> None:
    """What a prod_env/model_deployments.yaml + tokenizer_configs.yaml entry for the local
    directory registers, for a tokenizer without model_max_length (which
    --enable-local-huggingface-models refuses): the same HuggingFaceClient and
    HuggingFaceTokenizer specs and end-of-text/prefix tokens as `register_huggingface_model`,
    with the declared max_sequence_length."""
    from helm.benchmark.model_deployment_registry import (
        ClientSpec, ModelDeployment, register_model_deployment)
    from helm.benchmark.model_metadata_registry import (
        get_unknown_model_metadata, register_model_metadata)
    from helm.benchmark.tokenizer_config_registry import (
        TokenizerConfig, TokenizerSpec, register_tokenizer_config)
    from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer

    args = {"pretrained_model_name_or_path": model_dir}
    with HuggingFaceTokenizer.create_tokenizer(**args) as tokenizer:
        eos, bos = tokenizer.eos_token or "", tokenizer.bos_token or ""
    register_model_metadata(get_unknown_model_metadata(name))
    register_model_deployment(ModelDeployment(
        name=name, model_name=name, tokenizer_name=name, max_sequence_length=max_sequence_length,
        client_spec=ClientSpec(class_name="helm.clients.huggingface_client.HuggingFaceClient",
                               args=args)))
    register_tokenizer_config(TokenizerConfig(
        name=name, end_of_text_token=eos, prefix_token=bos,
        tokenizer_spec=TokenizerSpec(
            class_name="helm.tokenizers.huggingface_tokenizer.HuggingFaceTokenizer", args=args)))


def load_client(model_dir: str, max_sequence_length: int | None = None):
    """The deployment and HuggingFaceClient that --enable-local-huggingface-models gives (or,
    where HELM refuses that flag for lack of a model_max_length, a declared deployment with
    the same client: `register_declared`). Returns (deployment, tokenizer config, client,
    how it was registered)."""
    from helm.benchmark.huggingface_registration import (
        register_huggingface_local_model_from_flag_value)
    from helm.benchmark.model_deployment_registry import get_model_deployment
    from helm.benchmark.tokenizer_config_registry import get_tokenizer_config
    from helm.common.cache_backend_config import BlackHoleCacheBackendConfig
    from helm.common.object_spec import create_object, inject_object_spec_args

    name = f"huggingface/{os.path.split(model_dir)[-1]}"
    try:
        register_huggingface_local_model_from_flag_value(model_dir)
        how = "--enable-local-huggingface-models"
    except ValueError as e:
        if max_sequence_length is None:
            import json

            cfg = json.loads((Path(model_dir) / "config.json").read_text())
            max_sequence_length = int(cfg.get("max_position_embeddings")
                                      or cfg["text_config"]["max_position_embeddings"])
        print(f"crfm-helm refuses --enable-local-huggingface-models here ({e}); using a "
              f"declared deployment with max_sequence_length={max_sequence_length}",
              file=sys.stderr)
        register_declared(model_dir, name, max_sequence_length)
        how = f"model_deployments.yaml (max_sequence_length {max_sequence_length})"
    dep = get_model_deployment(name)
    tok_cfg = get_tokenizer_config(name)
    cache_config = BlackHoleCacheBackendConfig().get_cache_config(dep.host_organization)
    tokenizer = create_object(inject_object_spec_args(
        tok_cfg.tokenizer_spec,
        constant_bindings={"cache_config": cache_config, "tokenizer_name": name}))
    client = create_object(inject_object_spec_args(
        dep.client_spec,
        constant_bindings={"cache_config": cache_config, "model_name": dep.model_name,
                           "tokenizer_name": dep.tokenizer_name},
        provider_bindings={"tokenizer": lambda: tokenizer,
                           "end_of_text_token": lambda: tok_cfg.end_of_text_token}))
    return dep, tok_cfg, client, how


_CLIENTS: dict = {}


def helm_function(module: str, name: str):
    """One function of a HELM module, compiled from the installed source without importing the
    module (evaluate_reference_metrics imports nltk, rouge-score ...: not installed here)."""
    import ast
    import importlib.util

    src = Path(importlib.util.find_spec(module).origin).read_text()
    node = next(n for n in ast.parse(src).body
                if isinstance(n, ast.FunctionDef) and n.name == name)
    ns: dict = {}
    exec(compile(ast.Module([node], []), module, "exec"), ns)
    return ns[name]


def run(model_dir: str, mmlu_dir: str, subjects: list[str], num_fewshot: int,
        limit: int | None) -> list[dict]:
    import torch
    from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import (
        MultipleChoiceJointAdapter)
    exact_match = helm_function("helm.benchmark.metrics.evaluate_reference_metrics",
                                "exact_match")
    from helm.benchmark.run_specs.lite_run_specs import get_mmlu_spec
    from helm.benchmark.scenarios.mmlu_scenario import MMLUScenario
    from helm.benchmark.scenarios.scenario import TEST_SPLIT

    torch.manual_seed(0)
    if model_dir not in _CLIENTS:
        _CLIENTS[model_dir] = load_client(model_dir)
    dep, tok_cfg, client, how = _CLIENTS[model_dir]
    rows = []
    with tempfile.TemporaryDirectory(prefix="helm_mmlu_") as out:
        os.symlink(Path(mmlu_dir).resolve(), Path(out) / "data")
        for subject in subjects:
            spec = dataclasses.replace(get_mmlu_spec(subject).adapter_spec,
                                       max_train_instances=num_fewshot,
                                       model=dep.model_name, model_deployment=dep.name)
            instances = MMLUScenario(subject).get_instances(out)
            adapter = object.__new__(MultipleChoiceJointAdapter)
            adapter.adapter_spec = spec
            adapter.window_service = _FitsEverything()
            states = [s for s in adapter.adapt(instances, parallelism=1)
                      if s.instance.split == TEST_SPLIT]
            for index, s in enumerate(states[:limit]):
                req = s.request
                result = client.make_request(req)
                if not result.success:
                    raise RuntimeError(f"{subject}/{index}: {result.error}")
                completion = result.completions[0]
                client_prompt = client.get_prompt(req)
                with client._wrapped_tokenizer as tok:
                    ids = tok(client_prompt, return_token_type_ids=False)["input_ids"]
                golds = [r.output.text for r in s.instance.references if r.is_correct]
                pred = s.output_mapping.get(completion.text.strip())
                rows.append({
                    "subject": subject, "index": index, "num_fewshot": num_fewshot,
                    "prompt": req.prompt, "client_prompt": client_prompt,
                    "apply_chat_template": client._apply_chat_template,
                    "input_tokens": list(map(int, ids)),
                    "generated_tokens": [t.text for t in completion.tokens],
                    "completion": completion.text,
                    "output_mapping": s.output_mapping,
                    "gold_letters": sorted(k for k, v in s.output_mapping.items() if v in golds),
                    "exact_match": max(exact_match(g, pred) if pred else 0 for g in golds),
                    "max_tokens": req.max_tokens, "stop_sequences": list(req.stop_sequences),
                    "max_sequence_length": dep.max_sequence_length,
                    "end_of_text_token": tok_cfg.end_of_text_token, "registered": how,
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("mmlu_dir")
    p.add_argument("subjects", nargs="+")
    p.add_argument("--num-fewshot", type=int, nargs="+", default=[5],
                   help="one or more shot counts (one model load for all)")
    p.add_argument("--limit", type=int, default=None, help="first N test questions per subject")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from importlib.metadata import version

    if version("crfm-helm") != HELM_VERSION:
        print(f"warning: crfm-helm {version('crfm-helm')} installed, checked against "
              f"{HELM_VERSION}", file=sys.stderr)
    rows = [r for k in a.num_fewshot for r in run(a.model_dir, a.mmlu_dir, a.subjects, k, a.limit)]
    write_jsonl(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
