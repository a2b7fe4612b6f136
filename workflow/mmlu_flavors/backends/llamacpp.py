"""The `llama_cpp` backend: llama-cpp-python runs the GGUF file itself (quantized weights,
llama.cpp's CPU kernels), as most people run a model locally.

The requests are the token ids of our own tokenizer (the same ids the transformers backend
reads), so the two backends differ only in the program that computes the logits. Every model
input `engine.run_naive` defines is evaluated with `Llama.eval` (`logits_all=True`: the
logits of every position land in `Llama.scores`); log-probs are the float32 log-softmax of
those logits, computed by the same helpers as the transformers engine.

Key/value cache reuse: the context keeps what it evaluated (`Llama.input_ids[:n_tokens]`). To
reach a new input, the longest common prefix with it stays, the rest of the key/value cache
is dropped (`Llama.n_tokens = prefix`; `eval` removes the cells from there on,
`kv_cache_seq_rm`) and only the new suffix is evaluated. Questions sharing a few-shot prefix
run it once; each continuation runs on its question's context and is truncated back. The
logits rows of the kept prefix are still those of the same tokens.

That is exact only where llama.cpp computes a position's logits independently of how many
tokens are evaluated with it. Measured with llama-cpp-python 0.3.36 on this CPU: SmolLM2's
Q4_1 file is (bit-identical rows for any split), Gemma 3's Q4_K_M file is not (a position's
logit moves by 0.43 between evaluating 371 and 372 tokens, 31 and 33; a suffix evaluated on a
held cache differs by up to 0.86 in log-prob). So at load the backend probes it
(`shape_independent`: one input evaluated whole, as a prefix and as a suffix on the held
cache); a model that fails the probe gets no reuse: every model input is evaluated whole, in
a cleared context, exactly as the oracle does, and only an identical input reuses its rows.

Numeric settings that enter the cache identity: `n_ctx`, `n_batch`, `n_ubatch`, `flash_attn`
(entry fields; defaults below) and the llama-cpp-python version. `n_threads` is the job's
thread count (`OMP_NUM_THREADS`, set by the logits rule), never part of the identity.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..request import Request

log = logging.getLogger(__name__)

DIST = "llama-cpp-python"
SETTINGS = {"n_ctx": 2048, "n_batch": 512, "n_ubatch": 512, "flash_attn": False}
SEED = 1234  # greedy decoding draws nothing; fixed anyway


def version() -> str | None:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


def settings(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's numeric llama.cpp settings, defaults filled in."""
    out = {k: entry.get(k, v) for k, v in SETTINGS.items()}
    for k in ("n_ctx", "n_batch", "n_ubatch"):
        if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 16:
            raise ValueError(f"model entry field {k!r}: need an integer >= 16, got {out[k]!r}")
    if not isinstance(out["flash_attn"], bool):
        raise ValueError(f"model entry field 'flash_attn': need true or false, got "
                         f"{out['flash_attn']!r}")
    return out


def threads() -> int:
    """The job's threads: OMP_NUM_THREADS (the logits rule sets it), else the CPUs we may use."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    return n if n > 0 else len(os.sched_getaffinity(0))


def gguf_file(entry: dict[str, Any], model_dir: Any, name: str | None) -> Path:
    """The entry's GGUF file (`gguf_path`, shipped by `gguf_package`, or assembled by it next
    to the converted directory, where `convert_gguf` put it)."""
    from .. import models

    if entry.get("source") != "gguf":
        raise ValueError(f"model {name!r}, field 'backend': llama_cpp runs a GGUF file; the "
                         f"entry has source {entry.get('source')!r} (need source: gguf)")
    workdir = Path(model_dir).parent if model_dir is not None else Path("data/models")
    return models.resolve_gguf(entry, workdir, name)


def open_llama(path: str | Path, entry: dict[str, Any], n_threads: int | None = None) -> Any:
    """A `llama_cpp.Llama` on `path` with the entry's settings, every position's logits kept."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError("backend llama_cpp needs llama-cpp-python: run scripts/setup.sh "
                           "with MMLU_FLAVORS_LLAMA_CPP=1 (it compiles llama.cpp once)") from None
    s = settings(entry)
    n = n_threads or threads()
    return llama_cpp.Llama(str(path), n_ctx=s["n_ctx"], n_batch=s["n_batch"],
                           n_ubatch=s["n_ubatch"], flash_attn=s["flash_attn"],
                           n_threads=n, n_threads_batch=n, n_gpu_layers=0, seed=SEED,
                           logits_all=True, swa_full=True, verbose=False)


PROBE_TOKENS, PROBE_SPLIT = 80, 31  # the probe's input and where it is cut (a 32-row edge)


def shape_independent(llm: Any) -> bool:
    """Does llama.cpp give a position the same logits however the input is split? One
    pseudo-random input of PROBE_TOKENS ids is evaluated whole, then its first PROBE_SPLIT
    tokens alone, then the rest on that held cache; every row must equal the whole run's."""
    rng = np.random.default_rng(0)
    bos = llm.token_bos()
    seq = rng.integers(16, int(llm.n_vocab()), PROBE_TOKENS).tolist()
    if bos is not None and bos >= 0:
        seq[0] = int(bos)
    llm.n_tokens = 0
    llm.eval(seq)
    whole = np.array(llm.scores[:len(seq)], dtype=np.float32)
    llm.n_tokens = 0
    llm.eval(seq[:PROBE_SPLIT])
    llm.eval(seq[PROBE_SPLIT:])
    split = np.array(llm.scores[:len(seq)], dtype=np.float32)
    llm.n_tokens = 0
    return bool(np.array_equal(whole, split))


def start_server(path: str | Path, alias: str, n_ctx: int = 2048, n_threads: int | None = None,
                 log: Any = None, extra: Sequence[str] = ()) -> tuple[Any, str]:
    """Serve the GGUF at `path` with llama-cpp-python's own OpenAI-compatible server on a free
    port of 127.0.0.1, as model id `alias` (what the `openai_completions` backend's tests and
    bench/bench_backends.py talk to). Returns (the server process, its base URL); the caller
    waits until it answers and terminates it."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host",
           "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", alias,
           "--n_threads", str(n_threads or threads()), *extra]
    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v1"


class Evaluator:
    """A `Llama` context that reaches each model input from what it already holds."""

    def __init__(self, llm: Any, stats: Any):
        self.llm, self.stats = llm, stats
        self.n_ctx = int(llm.n_ctx())
        # a model whose logits depend on the split evaluates every input whole (docstring)
        whole = getattr(llm, "_mmlu_flavors_whole_inputs", None)
        if whole is None:
            whole = not shape_independent(llm)
            llm._mmlu_flavors_whole_inputs = whole
            log.info("llama.cpp: %s", "logits depend on how an input is split: every model "
                     "input is evaluated whole" if whole else "logits independent of the "
                     "split: key/value cache reused across inputs")
        self.whole_inputs = whole

    def logits(self, seq: Sequence[int], first: int) -> np.ndarray:
        """float32 logits at positions `first..len(seq)-1` of input `seq` (a view of
        `Llama.scores`, valid until the next call)."""
        n = len(seq)
        if n > self.n_ctx:
            raise ValueError(f"a model input of {n} tokens exceeds llama.cpp's n_ctx "
                             f"{self.n_ctx}: raise n_ctx (or lower max_length) in the model entry")
        llm = self.llm
        held = int(llm.n_tokens)
        m = min(held, n)
        arr = np.asarray(seq, dtype=np.intc)
        same = np.flatnonzero(llm.input_ids[:m] != arr[:m])
        keep = int(same[0]) if same.size else m  # rows < keep: logits of these same tokens
        if self.whole_inputs and not keep == held == n:
            keep = 0  # not the input just evaluated: evaluate it whole in a cleared context
        if keep < n:
            llm.n_tokens = keep  # eval drops the key/value cells from here on
            llm.eval(arr[keep:].tolist())
            self.stats.forwards += 1
            self.stats.tokens += n - keep
            self.stats.head_positions += n - keep
            self.stats.forward_tokens.append(n - keep)
        else:
            llm.n_tokens = n
        self.stats.extra["reused_tokens"] = self.stats.extra.get("reused_tokens", 0) + keep
        return llm.scores[first:n]


def _log_softmax(rows: np.ndarray) -> Any:
    import torch

    return torch.log_softmax(torch.from_numpy(np.array(rows, dtype=np.float32)), dim=-1)


def run_requests(llm: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
                 stats: Any, progress: bool = False) -> list[Any]:
    """`engine.run_naive`'s numbers for each request, computed by llama.cpp."""
    from tqdm.auto import tqdm

    from ..engine import _answer, _result, _score

    ev = Evaluator(llm, stats)
    out = []
    t0 = time.perf_counter()
    for r in tqdm(requests, unit="prompt", disable=not progress, desc="llama.cpp"):
        ctx = list(r.context)
        trunc = r.needs_truncation()
        ctx_in = ctx[-r.max_length:] if trunc else ctx
        answer = _answer(_log_softmax(ev.logits(ctx_in, len(ctx_in) - 1))[0], letter_ids)
        if trunc:
            stats.naive_fallbacks += 1
        scores = []  # continuations before generation: a 1-token one's input is the context
        for cont in r.continuations:
            if not cont:
                scores.append(([], [], 0.0))
                continue
            if len(cont) > r.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length "
                                 f"{r.max_length}")
            inp = (ctx + list(cont))[-(r.max_length + 1):][:-1]
            lp = _log_softmax(ev.logits(inp, len(inp) - len(cont)))
            scores.append(_score(lp, cont))
        gen = [answer["greedy_id"]] if r.generate > 0 else []
        while 0 < len(gen) < r.generate:
            inp = (ctx + gen)[-r.max_length:]
            gen.append(int(np.argmax(ev.logits(inp, len(inp) - 1)[0])))
        out.append(_result(answer, scores, gen))
    stats.prompts += len(requests)
    stats.seconds += time.perf_counter() - t0
    stats.extra["mode"] = "llama_cpp"
    return out


class LlamaCppBackend:
    name = "llama_cpp"

    def identity(self, entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        fp = {k: v for k, v in base.items() if k not in ("dtype", "device")}
        return {**fp, "backend": self.name, "backend_version": version(), "device": "cpu",
                "settings": settings(entry)}

    def load(self, entry: dict[str, Any], model_dir: Any, name: str | None) -> Any:
        from .. import models
        from ..io import sha256_file

        tokenizer, max_length = models.load_tokenizer(entry, model_dir, name)
        path = gguf_file(entry, model_dir, name)
        digest = sha256_file(path)
        ident_file = Path(model_dir) / models.IDENTITY_FILE if model_dir else None
        if ident_file is not None and ident_file.is_file():
            want = __import__("json").loads(ident_file.read_text()).get("gguf_sha256")
            if want and want != digest:
                raise ValueError(f"model {name!r}: {path} (sha256 {digest[:12]}...) is not the "
                                 f"file {model_dir} was converted from ({want[:12]}...): "
                                 "reconvert it")
        llm = open_llama(path, entry)
        top = max([i for i in tokenizer.get_vocab().values()], default=0)
        if top >= llm.n_vocab():
            raise ValueError(f"model {name!r}: the tokenizer has ids up to {top}, the GGUF "
                             f"model only {llm.n_vocab()} logits")
        identity = {"source": "gguf", "gguf_file": path.name, "gguf_sha256": digest,
                    "backend": self.name, "backend_version": version(),
                    "settings": settings(entry), "n_threads": threads()}
        return models.LoadedModel(model=llm, tokenizer=tokenizer, name=name or path.name,
                                  dtype="gguf", device="cpu", max_length=max_length,
                                  identity=identity)

    def run(self, loaded: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
            *, batch_size: int = 8, max_batch_tokens: int | None = None,
            progress: bool = True, stats: Any = None) -> list[Any]:
        from ..engine import EngineStats

        stats = stats if stats is not None else EngineStats()
        return run_requests(loaded.model, requests, letter_ids, stats, progress)


BACKEND = LlamaCppBackend()
