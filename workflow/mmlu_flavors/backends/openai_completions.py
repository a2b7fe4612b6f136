"""The `openai_completions` backend: prompt log-probs from an OpenAI-compatible server.

Any server whose `/v1/completions` echoes the prompt's log-probs (`echo: true`, `logprobs: N`,
`max_tokens: 1`, `temperature: 0`): vLLM, SGLang, llama-cpp-python's server. Every model input
`engine.run_naive` defines becomes one request:

* the context: the one generated token's top-N log-probs are the answer position's top-k
  (greedy = the generated token);
* context + letter id, for each letter: the echoed log-prob of that last token is the letter's
  log-prob at the answer position;
* context + continuation (cut as `run_naive` cuts it): the echoed log-probs of the
  continuation's tokens; a token is greedy when its log-prob is its position's top one.

Prompts go as token ids (our tokenizer's, the ids every backend reads) where the server takes
them (vLLM, SGLang); a server that takes only text (llama-cpp-python) gets the decoded text and
the echo must give back exactly as many tokens, else the run stops (it tokenized differently).
Token strings in top log-probs are mapped back to ids by our tokenizer (vLLM:
`return_tokens_as_token_ids` gives the ids themselves).

`max_in_flight` requests run at once (a thread pool); 429, 5xx, timeouts and refused
connections are retried `max_retries` times with exponential backoff; anything else, or a
server that returns no prompt log-probs, stops the job with one line (never a chance-level
score) and the cache keeps nothing of the failed checkpoint.

Identity: the server's model id (`server_model`, checked against `/v1/models`) plus the
`revision` (or `weights_sha256`) the entry must give; without one the run refuses to cache.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..request import Request

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the requests sent or their reading change
TOP = 10  # = engine.TOPK
DEFAULTS = {"max_in_flight": 4, "request_timeout": 120.0, "max_retries": 4}
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    """The server cannot give what the cache needs (one line, names the server and why)."""


def _who(entry: dict[str, Any]) -> str:
    return f"server {entry.get('base_url')!r} (model {entry.get('server_model')!r})"


def revision(entry: dict[str, Any]) -> str:
    rev = entry.get("revision") or entry.get("weights_sha256")
    if not rev:
        raise ValueError(
            f"model entry with backend openai_completions ({_who(entry)}): refusing to cache "
            "its numbers without an identity for the weights the server runs: give "
            "'revision' (e.g. the Hub commit the server loaded) or 'weights_sha256'")
    return str(rev)


class Client:
    """A minimal JSON client (stdlib), retrying what is worth retrying."""

    def __init__(self, entry: dict[str, Any]):
        self.entry = entry
        self.base = str(entry["base_url"]).rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.timeout = float(entry.get("request_timeout", DEFAULTS["request_timeout"]))
        self.retries = int(entry.get("max_retries", DEFAULTS["max_retries"]))
        key_env = entry.get("api_key_env")
        self.headers = {"Content-Type": "application/json"}
        if key_env and os.environ.get(key_env):
            self.headers["Authorization"] = f"Bearer {os.environ[key_env]}"
        self.requests = 0
        self.retried = 0

    def call(self, path: str, body: dict[str, Any] | None = None,
             final: Any = None) -> Any:
        """POST `body` (GET without one) and return the JSON answer. Retries RETRY_STATUS
        answers and timeouts with backoff, except an HTTP answer for which `final(code,
        detail)` is true (e.g. a server that cannot take the request at all)."""
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        delay = 0.5
        http = False  # the last failure was an HTTP status (else: no answer at all)
        for attempt in range(self.retries + 1):
            why = ""
            http = False
            try:
                req = urllib.request.Request(url, data=data, headers=self.headers,
                                             method="GET" if body is None else "POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    self.requests += 1
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code not in RETRY_STATUS or (final is not None and final(e.code, detail)):
                    raise ServerError(f"{_who(self.entry)}: {url} answered HTTP {e.code}: "
                                      f"{detail}") from None
                why = f"HTTP {e.code}: {' '.join(detail.split())[:200]}"
                http = True
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                why = str(getattr(e, "reason", e))
            if attempt < self.retries:
                self.retried += 1
                log.warning("%s: %s, retrying in %.1f s", url, why, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        what = "failed" if http else "unreachable"
        raise ServerError(f"{_who(self.entry)}: {url} {what} after {self.retries + 1} "
                          f"attempts ({why})")


def _refuses_ids(code: int, detail: str) -> bool:
    """Is this HTTP error a server saying that a prompt must be text? (llama-cpp-python
    0.3.36 answers a token-id prompt with HTTP 500 and its request validation errors:
    "Input should be a valid string".)"""
    return code == 500 and "validation error" in detail and "valid string" in detail


def _vocab_map(tokenizer: Any) -> dict[str, int]:
    """Token text -> id (the smallest id where texts repeat)."""
    out: dict[str, int] = {}
    for i in range(len(tokenizer)):
        out.setdefault(tokenizer.decode([i], skip_special_tokens=False), i)
    return out


class Session:
    """One loaded server model: its client, our tokenizer and how prompts are sent."""

    def __init__(self, entry: dict[str, Any], tokenizer: Any):
        self.entry, self.tokenizer = entry, tokenizer
        self.client = Client(entry)
        self.model = str(entry["server_model"])
        self.in_flight = int(entry.get("max_in_flight", DEFAULTS["max_in_flight"]))
        self.as_ids: bool | None = None  # decided by the first request
        self._bos: bool | None = None
        self._vocab: dict[str, int] | None = None

    def check_model(self) -> None:
        listing = self.client.call("/models")
        ids = [m.get("id") for m in (listing or {}).get("data", [])]
        if self.model not in ids:
            raise ServerError(f"{_who(self.entry)}: the server serves {ids}, not the configured "
                              f"model {self.model!r}")

    def token_id(self, text: str) -> int:
        if text.startswith("token_id:"):
            return int(text.split(":", 1)[1])
        if self._vocab is None:
            self._vocab = _vocab_map(self.tokenizer)
        if text not in self._vocab:
            raise ServerError(f"{_who(self.entry)}: token {text!r} from the server is not in "
                              "our tokenizer's vocabulary (another tokenizer?)")
        return self._vocab[text]

    def _body(self, prompt: Any) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt, "echo": True, "logprobs": TOP,
                "max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                "return_tokens_as_token_ids": True}

    def wait_ready(self, seconds: float = 120.0, proc: Any = None) -> None:
        """Wait until the server lists its models (`check_model`), e.g. one just started;
        ServerError when `proc` (its process, if we started it) exits or time runs out."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.check_model()
            except ServerError:
                if proc is not None and proc.poll() is not None:
                    raise ServerError(f"{_who(self.entry)}: the server process exited "
                                      f"(code {proc.returncode})") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _adds_bos(self) -> bool:
        """Does this model's tokenizer put a BOS before a text (as a text-only server does)?"""
        if self._bos is None:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            self._bos = bos is not None and self.tokenizer("a").input_ids[:1] == [bos]
        return self._bos

    def score(self, seq: Sequence[int]) -> dict[str, Any]:
        """Echoed log-probs of `seq` (one per token; None where the server gives none) and
        the top log-probs after it: {"token_logprobs", "top_logprobs" (per token),
        "next_top" (dict), "next_token"}."""
        seq = [int(t) for t in seq]
        sent, strip = seq, False
        if self.as_ids is not False:
            try:
                out = self.client.call("/completions", self._body(seq),
                                       final=None if self.as_ids else _refuses_ids)
                self.as_ids = True
            except ServerError as e:
                if self.as_ids or not ("HTTP 4" in str(e) or _refuses_ids(500, str(e))):
                    raise
                self.as_ids = False  # a text-only server (llama-cpp-python)
                log.info("%s takes no token-id prompts: sending decoded text", _who(self.entry))
        if self.as_ids is False:
            # a text prompt gets the server's BOS: send ours as that one
            bos = getattr(self.tokenizer, "bos_token_id", None)
            strip = bos is not None and len(seq) > 1 and seq[0] == bos
            if not strip and self._adds_bos():
                raise ServerError(f"{_who(self.entry)} takes text prompts only and puts its BOS "
                                  "before each, but this model input has no BOS (the flavor "
                                  "adds no special tokens): its scores would be those of "
                                  "another input; use a server that takes token-id prompts "
                                  "(vLLM, SGLang)")
            sent = seq[1:] if strip else seq
            out = self.client.call("/completions", self._body(
                self.tokenizer.decode(sent, skip_special_tokens=False)))
        choice = (out.get("choices") or [{}])[0]
        lp = choice.get("logprobs") or {}
        tl, top, toks = lp.get("token_logprobs"), lp.get("top_logprobs"), lp.get("tokens")
        if not tl or not top or not toks:
            raise ServerError(f"{_who(self.entry)} returned no prompt log-probs (echo with "
                              "logprobs unsupported?): refusing to score, since a missing "
                              "log-prob would read as a chance-level answer")
        n = len(sent)
        if len(tl) != n + 1 or len(top) != n + 1 or len(toks) != n + 1:
            raise ServerError(f"{_who(self.entry)}: {len(tl)} echoed log-probs for a prompt of "
                              f"{n} tokens plus one generated: they do not line up with the "
                              "prompt (another tokenization, or a server that shifts echoed "
                              "log-probs); refusing to score")
        if self.as_ids is False:
            # (the first token's text may lose a leading space in either detokenizer)
            ours = [self.tokenizer.decode([t], skip_special_tokens=False) for t in sent[1:]]
            if [str(t) for t in toks[1:n]] != ours:
                raise ServerError(f"{_who(self.entry)}: the server tokenized the prompt text "
                                  "differently from our token ids; use a server that takes "
                                  "token-id prompts (vLLM, SGLang)")
        pad = [None] if strip else []
        return {"token_logprobs": pad + tl[:n], "top_logprobs": pad + top[:n],
                "next_top": top[n] or {}, "next_token": toks[n]}


def _answer_from(s: Session, ctx: dict[str, Any], letters: dict[int, float]) -> dict[str, Any]:
    top = sorted(((v, s.token_id(k)) for k, v in ctx["next_top"].items()),
                 key=lambda x: (-x[0], x[1]))[:TOP]
    greedy = s.token_id(ctx["next_token"])
    glp = ctx["next_top"].get(ctx["next_token"], top[0][0] if top else None)
    return {"greedy_id": greedy, "greedy_logprob": float(glp),
            "topk_ids": [i for _, i in top], "topk_logprobs": [float(v) for v, _ in top],
            "letters": letters}


def _plan(r: Request, letter_ids: Sequence[int | None]) -> list[tuple[str, Any, list[int]]]:
    """The model inputs of one request: (kind, detail, token ids sent)."""
    ctx = list(r.context)
    trunc = r.needs_truncation()
    ctx_in = ctx[-r.max_length:] if trunc else ctx
    out: list[tuple[str, Any, list[int]]] = [("ctx", None, ctx_in)]
    for lid in letter_ids:
        if lid is not None:  # the letter's log-prob at the answer position
            out.append(("letter", lid, (ctx_in + [lid])[-(r.max_length + 1):]))
    for j, cont in enumerate(r.continuations):
        if cont:
            if len(cont) > r.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length "
                                 f"{r.max_length}")
            out.append(("cont", j, (ctx + list(cont))[-(r.max_length + 1):]))
    return out


def run_requests(s: Session, requests: Sequence[Request], letter_ids: Sequence[int | None],
                 stats: Any, progress: bool = False) -> list[Any]:
    from tqdm.auto import tqdm

    from ..engine import EngineResult

    plans = [_plan(r, letter_ids) for r in requests]
    flat = [(qi, item) for qi, p in enumerate(plans) for item in p]
    t0 = time.perf_counter()
    bar = tqdm(total=len(flat), unit="request", disable=not progress, desc="server")

    def one(job: tuple[int, tuple[str, Any, list[int]]]) -> dict[str, Any]:
        res = s.score(job[1][2])
        bar.update(1)
        return res

    if flat:  # the first alone: it decides token ids or text
        first = one(flat[0])
        with ThreadPoolExecutor(max_workers=s.in_flight) as pool:
            answers = [first] + list(pool.map(one, flat[1:]))
    else:
        answers = []
    bar.close()
    got: list[dict[tuple[str, Any], dict[str, Any]]] = [{} for _ in requests]
    for (qi, (kind, detail, seq)), res in zip(flat, answers):
        got[qi][(kind, detail)] = res
        stats.forwards += 1
        stats.tokens += len(seq)
        stats.forward_tokens.append(len(seq))
    out = []
    for qi, r in enumerate(requests):
        g = got[qi]
        ctx = g[("ctx", None)]
        answer = _answer_from(s, ctx, {})
        cand = [None if lid is None else float(g[("letter", lid)]["token_logprobs"][-1])
                for lid in letter_ids]
        gen = [answer["greedy_id"]] if r.generate > 0 else []
        while 0 < len(gen) < r.generate:
            nxt = s.score((list(r.context) + gen)[-r.max_length:])
            gen.append(s.token_id(nxt["next_token"]))
        lps, greedy, sums = [], [], []
        for j, cont in enumerate(r.continuations):
            if not cont:
                lps.append([]), greedy.append([]), sums.append(0.0)
                continue
            res = g[("cont", j)]
            vals = [float(v) for v in res["token_logprobs"][-len(cont):]]
            tops = res["top_logprobs"][-len(cont):]
            flags = [bool(t) and v >= max(t.values()) for v, t in zip(vals, tops)]
            lps.append(vals), greedy.append(flags), sums.append(float(sum(vals)))
        out.append(EngineResult(candidate_logprobs=cand, greedy_id=answer["greedy_id"],
                                greedy_logprob=answer["greedy_logprob"],
                                topk_ids=answer["topk_ids"],
                                topk_logprobs=answer["topk_logprobs"], token_logprobs=lps,
                                token_is_greedy=greedy, sums=sums, gen_ids=gen))
    stats.prompts += len(requests)
    stats.seconds += time.perf_counter() - t0
    stats.extra.update(mode="openai_completions", http_requests=s.client.requests,
                       retries=s.client.retried, token_id_prompts=s.as_ids)
    return out


class OpenAICompletionsBackend:
    name = "openai_completions"

    def identity(self, entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        for f in ("base_url", "server_model"):
            if not entry.get(f):
                raise ValueError(f"model entry with backend openai_completions: field {f!r} "
                                 "is required")
        return {"backend": self.name, "backend_version": FORMAT,
                "server_model": str(entry["server_model"]), "revision": revision(entry)}

    def load(self, entry: dict[str, Any], model_dir: Any, name: str | None) -> Any:
        from .. import models

        self.identity(entry, {})
        tokenizer, max_length = models.load_tokenizer(entry, model_dir, name)
        session = Session(entry, tokenizer)
        session.check_model()
        return models.LoadedModel(model=session, tokenizer=tokenizer,
                                  name=name or session.model, dtype="server", device="server",
                                  max_length=max_length,
                                  identity={**self.identity(entry, {}),
                                            "base_url": session.client.base})

    def run(self, loaded: Any, requests: Sequence[Request], letter_ids: Sequence[int | None],
            *, batch_size: int = 8, max_batch_tokens: int | None = None,
            progress: bool = True, stats: Any = None) -> list[Any]:
        from ..engine import EngineStats

        stats = stats if stats is not None else EngineStats()
        return run_requests(loaded.model, requests, letter_ids, stats, progress)


BACKEND = OpenAICompletionsBackend()
