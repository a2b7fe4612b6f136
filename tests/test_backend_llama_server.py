"""openai_completions against a real llama-cpp-python server equals the llama_cpp backend.

The test starts `python -m llama_cpp.server` on 127.0.0.1 (a free port) with the embedded
Gemma 3 GGUF. llama-cpp-python's server takes text prompts only, so the client sends our ids
decoded (our leading BOS as the server's own) and checks that the server echoes exactly our
tokens. SmolLM2 (no BOS) is refused with one line: that server shifts echoed log-probs by one
position when the model adds no BOS, which the client detects instead of scoring it.
"""

from __future__ import annotations

import math

import pytest

from mmlu_flavors import engine
from mmlu_flavors.backends import llamacpp, openai_completions as oc
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.request import Request
from mmlu_flavors.tokenize import letter_ids, tokenize_row
from test_backend_llama import embedded, need_llama_cpp

TOL = 1e-4


@pytest.fixture(scope="module", params=["gemma-3-270m", "smollm2-135m-instruct"])
def served(request, tmp_path_factory):
    need_llama_cpp()
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extras not installed")
    from transformers import AutoTokenizer

    entry, path = embedded(request.param, tmp_path_factory.mktemp("gguf"))
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, url = llamacpp.start_server(path, "served", 2048, 2, log.open("w"))
    cfg = {"base_url": url, "server_model": "served",
           "revision": "test", "max_in_flight": 2, "max_retries": 0, "request_timeout": 300}
    sess = oc.Session(cfg, tok)
    try:
        sess.wait_ready(120, proc)
    except oc.ServerError as e:
        proc.terminate()
        pytest.fail(f"llama-cpp-python server not ready ({e}): {log.read_text()[-2000:]}")
    try:
        yield request.param, entry, path, tok, sess
    finally:
        proc.terminate()
        proc.wait(30)


def _short_requests(questions, tok, flavor: str, head: int) -> list[Request]:
    """One question's request of `flavor`, its context cut to its first `head` tokens, with
    its letter continuations and the first two tokens of harness_current's first answer text.
    llama-cpp-python's server sorts the whole vocabulary in Python for every echoed position
    (Gemma's 262,144 ids: seconds a position here), so a real MMLU prompt takes minutes a
    request; a short one checks the same numbers."""
    def req(fl: str) -> Request:
        row = build_prompts(questions, fl, num_fewshot=0, subjects=["high_school_geography"],
                            questions_per_subject=1).to_dicts()[0]
        return tokenize_row(row, tok, 2048).request

    base, text = req(flavor), req("harness_current")
    conts = [c for c in base.continuations if len(c) == 1][:4] + [text.continuations[0][:2]]
    return [Request(list(base.context[:head]), conts, 2048)]


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["original", "harness_e47e01b"])
def test_server_equals_llama_cpp_backend(served, questions, flavor) -> None:
    """`original` starts with Gemma's BOS; `harness_e47e01b` (lm-eval e47e01b adds no special
    tokens) and every SmolLM2 prompt do not, which this server cannot echo."""
    name, entry, path, tok, sess = served
    reqs = _short_requests(questions, tok, flavor, 6)
    letters = letter_ids(tok)
    if tok.bos_token_id is None or reqs[0].context[0] != tok.bos_token_id:
        # SmolLM2: llama-cpp-python 0.3.36 answers HTTP 500 (its echo indexing assumes a
        # BOS); Gemma: the server would put its BOS before the text, so the client refuses
        with pytest.raises(oc.ServerError, match="do not line up|tokenized|failed after|"
                                                 "has no BOS"):
            oc.run_requests(sess, reqs[:1], letters, engine.EngineStats())
        return
    got = oc.run_requests(sess, reqs, letters, engine.EngineStats())
    assert sess.as_ids is False  # llama-cpp-python takes text prompts only
    llm = llamacpp.open_llama(path, {"n_ctx": 2048}, n_threads=2)
    ref = llamacpp.run_requests(llm, reqs, letters, engine.EngineStats())
    llm.close()
    for g, r in zip(got, ref):
        assert g.greedy_id == r.greedy_id
        for a, b in zip(g.candidate_logprobs + g.topk_logprobs[:5] + [g.greedy_logprob],
                        r.candidate_logprobs + r.topk_logprobs[:5] + [r.greedy_logprob]):
            assert math.isclose(a, b, abs_tol=TOL), (a, b)
        for a, b in zip(g.token_logprobs, r.token_logprobs):
            assert len(a) == len(b) and all(math.isclose(x, y, abs_tol=TOL)
                                            for x, y in zip(a, b)), (a, b)


@pytest.mark.slow
def test_server_serving_another_model_is_one_line(served) -> None:
    """The model id the server reports must be the configured one (identity), else one line."""
    name, entry, path, tok, sess = served
    other = oc.Session({**sess.entry, "server_model": "not-" + sess.model}, tok)
    with pytest.raises(oc.ServerError) as e:
        other.check_model()
    assert "not the configured model 'not-served'" in str(e.value)
    assert "\n" not in str(e.value) and "['served']" in str(e.value)
