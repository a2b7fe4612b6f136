"""The openai_completions backend: what it reads from a server, and how it fails.

A small OpenAI-compatible `/v1/completions` server in a thread (vLLM's reply format: token-id
prompts, `token_id:N` token strings) computes prompt log-probs with a tiny random Llama; the
backend's numbers must equal `engine.run_naive` on that model, since the server is the same
model. Its faults are injected: 503s (retried), a reply without prompt log-probs, another model
id, an unreachable port, a failure in the middle of a job (nothing of it cached). The test
against a real llama-cpp-python server is in test_backend_llama_server.py.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
import torch

from mmlu_flavors import cache, engine, models
from mmlu_flavors.backends import openai_completions as oc
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.tokenize import letter_ids, tokenize_row
from workflow_fixture import make_tiny_model

SUBJECTS = ["abstract_algebra", "marketing"]


class Server:
    """`/v1/models` and `/v1/completions` (echo, logprobs, max_tokens 1) over a model."""

    def __init__(self, model, model_id="tiny"):
        self.model, self.model_id = model, model_id
        self.faults: list[int] = []  # HTTP statuses to answer before serving normally
        self.fail_after: int | None = None  # answer 400 after this many completions
        self.no_logprobs = False
        self.text_only = False  # answer token-id prompts as llama-cpp-python 0.3.36 does
        self.completions = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": outer.model_id}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.text_only and not isinstance(body["prompt"], str):
                    return self._send(500, {"error": {"message": "2 validation errors:\n {'type':"
                                            " 'string_type', 'loc': ('body', 'prompt', 'str'), "
                                            "'msg': 'Input should be a valid string'}"}})
                with outer.lock:
                    if outer.faults:
                        return self._send(outer.faults.pop(0), {"error": "busy"})
                    outer.completions += 1
                    if outer.fail_after is not None and outer.completions > outer.fail_after:
                        return self._send(400, {"error": "bad request"})
                self._send(200, outer.complete(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def complete(self, body):
        ids = body["prompt"]
        assert isinstance(ids, list) and body["echo"] and body["max_tokens"] == 1
        with torch.inference_mode():
            lp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        name = lambda i: f"token_id:{int(i)}"  # noqa: E731

        def top(row):
            v, i = torch.topk(row, body["logprobs"])
            return {name(a): float(b) for a, b in zip(i, v)}

        gen = int(lp[-1].argmax())
        tokens = [name(t) for t in ids] + [name(gen)]
        tl = [None] + [float(lp[k - 1, t]) for k, t in enumerate(ids) if k] + [float(lp[-1, gen])]
        tops = [None] + [{**top(lp[k - 1]), name(t): float(lp[k - 1, t])}
                         for k, t in enumerate(ids) if k] + [top(lp[-1])]
        logprobs = None if self.no_logprobs else {"tokens": tokens, "token_logprobs": tl,
                                                   "top_logprobs": tops}
        return {"model": self.model_id, "choices": [{"text": "", "logprobs": logprobs}]}

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def tiny(questions, tmp_path_factory):
    d = make_tiny_model(questions, tmp_path_factory.mktemp("m") / "tiny")
    entry = {"source": "local", "path": str(d), "dtype": "float32", "device": "cpu"}
    return entry, models.load_model(entry)


@pytest.fixture()
def server(tiny):
    s = Server(tiny[1].model)
    yield s
    s.close()


def _entry(tiny, server, **kw):
    return {**tiny[0], "backend": "openai_completions", "base_url": server.url,
            "server_model": "tiny", "revision": "r1", "max_in_flight": 3, **kw}


def _requests(questions, tok, flavor="harness_e47e01b", n=2):
    rows = build_prompts(questions, flavor, subjects=SUBJECTS, questions_per_subject=n)
    return [tokenize_row(r, tok, 2048).request for r in rows.to_dicts()]


def test_server_values_equal_the_oracle(tiny, server, questions) -> None:
    entry, loaded = tiny
    server.faults = [503, 429]  # retried with backoff, then served
    sess = oc.Session(_entry(tiny, server), loaded.tokenizer)
    sess.check_model()
    reqs = _requests(questions, loaded.tokenizer)
    letters = letter_ids(loaded.tokenizer)
    stats = engine.EngineStats()
    got = oc.run_requests(sess, reqs, letters, stats)
    ref = engine.run_naive(loaded.model, reqs, letters)
    assert sess.client.retried == 2 and sess.as_ids is True
    assert stats.extra["http_requests"] == server.completions + 1  # + /v1/models
    for g, r in zip(got, ref):
        assert g.greedy_id == r.greedy_id and g.topk_ids == r.topk_ids
        for a, b in zip(g.candidate_logprobs + g.topk_logprobs + [g.greedy_logprob],
                        r.candidate_logprobs + r.topk_logprobs + [r.greedy_logprob]):
            assert math.isclose(a, b, abs_tol=1e-4)
        for a, b in zip(g.token_logprobs, r.token_logprobs):
            assert len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-4)
                                            for x, y in zip(a, b))
        assert g.token_is_greedy == r.token_is_greedy


def test_server_faults_are_one_clear_line(tiny, server, questions) -> None:
    entry, loaded = tiny
    reqs = _requests(questions, loaded.tokenizer, n=1)[:1]
    letters = letter_ids(loaded.tokenizer)
    server.no_logprobs = True
    sess = oc.Session(_entry(tiny, server), loaded.tokenizer)
    with pytest.raises(oc.ServerError, match="no prompt log-probs.*chance-level"):
        oc.run_requests(sess, reqs, letters, engine.EngineStats())
    with pytest.raises(oc.ServerError, match=r"serves \['tiny'\], not the configured model"):
        oc.Session(_entry(tiny, server, server_model="other"), loaded.tokenizer).check_model()
    dead = _entry(tiny, server, base_url="http://127.0.0.1:9/v1", max_retries=1,
                  request_timeout=2)
    with pytest.raises(oc.ServerError, match="unreachable after 2 attempts"):
        oc.Session(dead, loaded.tokenizer).check_model()
    # waiting for a server that never comes: the last failure once time is up
    with pytest.raises(oc.ServerError, match="unreachable after 1 attempts"):
        oc.Session({**dead, "max_retries": 0}, loaded.tokenizer).wait_ready(1.0)
    oc.Session(_entry(tiny, server), loaded.tokenizer).wait_ready(1.0)  # the live one: at once


def test_failed_job_caches_nothing_then_resumes(tiny, server, questions, tmp_path) -> None:
    entry, loaded = tiny
    prompts = build_prompts(questions, "original", subjects=SUBJECTS[:1], questions_per_subject=3)
    e = _entry(tiny, server, max_retries=0)
    kw = dict(store_root=tmp_path / "store", progress=False)
    server.fail_after = 20  # a few questions in: the server starts refusing
    with pytest.raises(oc.ServerError, match="HTTP 400"):
        cache.compute_view(prompts, "tiny", e, None, "original", SUBJECTS[:1], 3,
                           tmp_path / "v.parquet", **kw)
    assert not list((tmp_path / "store").rglob("*.parquet"))
    assert not (tmp_path / "v.parquet").exists()
    server.fail_after = None
    st = cache.JobStats()
    view = cache.compute_view(prompts, "tiny", e, None, "original", SUBJECTS[:1], 3,
                              tmp_path / "v.parquet", stats=st, **kw)
    assert st.computed == 3 and view.height == 3
    ident = json.loads(next((tmp_path / "store").glob("*/identity.json")).read_text())
    assert ident["fingerprint"] == {"backend": "openai_completions", "backend_version": 1,
                                    "server_model": "tiny", "revision": "r1"}
    ref = cache.rows_from_results("tiny", prompts.to_dicts(),
                                  [tokenize_row(r, loaded.tokenizer, 2048)
                                   for r in prompts.to_dicts()],
                                  engine.run_naive(loaded.model, [
                                      tokenize_row(r, loaded.tokenizer, 2048).request
                                      for r in prompts.to_dicts()],
                                      letter_ids(loaded.tokenizer)),
                                  letter_ids(loaded.tokenizer), loaded.tokenizer)
    assert view.sort("index")["greedy_id"].to_list() == ref.sort("index")["greedy_id"].to_list()
    a = pl.Series(view.sort("index")["letter_logprobs"].to_list()).explode()
    b = pl.Series(ref.sort("index")["letter_logprobs"].to_list()).explode()
    assert float((a - b).abs().max()) < 1e-4


def test_no_revision_refuses_to_cache(tiny, server, questions, tmp_path) -> None:
    e = {k: v for k, v in _entry(tiny, server).items() if k != "revision"}
    prompts = build_prompts(questions, "original", subjects=SUBJECTS[:1], questions_per_subject=1)
    with pytest.raises(ValueError, match="refusing to cache.*'revision'"):
        cache.compute_view(prompts, "tiny", e, None, "original", SUBJECTS[:1], 1,
                           tmp_path / "v.parquet", tmp_path / "store", progress=False)
    assert server.completions == 0


def test_text_only_server_found_at_once_and_an_input_without_bos_refused(tiny, server) -> None:
    """A server that answers a token-id prompt with HTTP 500 and its validation errors
    (llama-cpp-python) is a text-only server: found on the first request, not retried. It puts
    its BOS before a text, so a model input without one (a flavor that adds no special tokens,
    on a model whose tokenizer does) is refused rather than scored as another input."""
    server.text_only = True

    class BosTokenizer:  # puts BOS 1 before a text, as the server's own tokenizer does
        bos_token_id = 1

        def __call__(self, text):
            return type("Encoding", (), {"input_ids": [1, 7]})()

    sess = oc.Session(_entry(tiny, server, max_retries=4), BosTokenizer())
    with pytest.raises(oc.ServerError, match="has no BOS.*token-id prompts"):
        sess.score([5, 6, 7])
    assert sess.as_ids is False and sess.client.retried == 0
    assert oc._refuses_ids(500, "2 validation errors: Input should be a valid string")
    assert not oc._refuses_ids(503, "busy") and not oc._refuses_ids(500, "busy")
