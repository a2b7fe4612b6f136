"""The question explorer: data files rebuild the real prompts exactly, the index holds every
verdict, and in a real browser (Debian's chromium driven by Playwright) the page opens from
file://, its filters count what predictions.parquet says, and a chosen question shows the
numbers of predictions.parquet and of the cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from synthetic_cache import cache_for_prompts

from mmlu_flavors import cli
from mmlu_flavors.explorer import block_template, build_explorer, fill_template
from mmlu_flavors.prompts import build_prompts
from mmlu_flavors.reduce import FLAVORS, IMPLEMENTATIONS, SCORERS, predictions

# moral_disputes: questions with surrounding whitespace (harness_current strips them, so its
# test block is stored literally); high_school_european_history: the longest prompts
SUBJECTS = ["abstract_algebra", "high_school_european_history", "moral_disputes"]
N = 12
MODELS = {"model-a": 0.3, "tiny/model-b": 1.5}


def _js_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    head = "MMLU_EXPLORER_LOAD("
    assert text.startswith(head) and text.rstrip().endswith(");")
    name, _, body = text[len(head):].rstrip()[:-2].partition(",")
    return json.loads(body)


@pytest.fixture(scope="module")
def built(tmp_path_factory, questions):
    root = tmp_path_factory.mktemp("explorer")
    qpath = root / "questions.parquet"
    questions.write_parquet(qpath)
    prompt_paths, frames = [], []
    for f in FLAVORS:
        p = build_prompts(questions, f, subjects=SUBJECTS, questions_per_subject=N)
        prompt_paths.append(root / f"{f}.parquet")
        p.write_parquet(prompt_paths[-1])
        frames.append(p)
    prompts = pl.concat(frames)
    cache = cache_for_prompts(prompts, MODELS, seed=3)
    # the model saw only 2 shots of some prompts (shortened to fit)
    cut = (pl.col("flavor") == "original") & (pl.col("subject") == SUBJECTS[1]) & (pl.col("index") < 3)
    cache = cache.with_columns(n_shots=pl.when(cut).then(2).otherwise(pl.col("n_shots")),
                               truncated=pl.when(cut).then(True).otherwise(pl.col("truncated")))
    cache_paths = []
    for (m, f), part in cache.group_by("model", "flavor"):
        cache_paths.append(root / "cache" / f"{m.replace('/', '-')}_{f}.parquet")
        cache_paths[-1].parent.mkdir(exist_ok=True)
        part.write_parquet(cache_paths[-1])
    pred = predictions(cache)
    pred_path = root / "predictions.parquet"
    pred.write_parquet(pred_path)
    split = build_explorer(pred_path, prompt_paths, cache_paths, qpath,
                           root / "split" / "explorer.html", root / "split" / "explorer",
                           inline_limit=0)
    inline = build_explorer(pred_path, prompt_paths, cache_paths, qpath,
                            root / "inline" / "explorer.html", root / "inline" / "explorer")
    return {"root": root, "prompts": prompts, "cache": cache, "pred": pred, "split": split,
            "inline": inline, "paths": (pred_path, prompt_paths, cache_paths, qpath)}


def test_block_template_round_trip():
    t = block_template("Question: q?\nA. x\nB. y\nC. x\nD. z\nAnswer:", "q?", ["x", "y", "x", "z"])
    assert t == ["Question: ", "\nA. ", "\nB. ", "\nC. ", "\nD. ", "\nAnswer:"]
    assert fill_template(t, "other", ["1", "2", "3", "4"]) == (
        "Question: other\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert block_template("no choices here", "q", ["a", "b", "c", "d"]) is None


def test_data_files_rebuild_every_prompt_exactly(built):
    assert built["split"]["inline"] is False and built["inline"]["inline"] is True
    assert built["split"]["subjects"] == len(SUBJECTS)
    assert built["split"]["questions"] == len(SUBJECTS) * N
    prompts = built["prompts"]
    literal = dict.fromkeys(FLAVORS, 0)
    for s in SUBJECTS:
        d = _js_data(built["root"] / "split" / "explorer" / f"{s}.js")
        assert d["index"] == list(range(N))
        for f in FLAVORS:
            P = d["prompts"][f]
            want = prompts.filter((pl.col("flavor") == f) & (pl.col("subject") == s)).sort("index")
            for k, row in enumerate(want.iter_rows(named=True)):
                t = P["q_template"][k]
                block = (fill_template(P["templates"][t], d["question"][k], d["choices"][k])
                         if t >= 0 else P["literal"][str(k)])
                literal[f] += t < 0
                got = P["headers"][P["q_header"][k]] + "".join(
                    P["shots"][i] for i in P["q_shots"][k]) + block
                assert got == row["prompt"], (f, s, k)
            # each question's text is stored once: one template per flavor and subject
            assert len(P["templates"]) <= 2 and len(P["headers"]) == 1
    # the 2023 flavors: only harness_current's stripped moral_disputes questions are literal
    assert [literal[f] for f in ("original", "helm", "harness_e47e01b")] == [0, 0, 0]
    assert 0 < literal["harness_current"] <= N


def test_index_holds_every_verdict(built):
    page = (built["root"] / "split" / "explorer.html").read_text(encoding="utf-8")
    start = page.index("const IDX = ") + len("const IDX = ")
    idx = json.loads(page[start:page.index(";\nconst DATA")].replace("<\\/", "</"))
    assert idx["models"] == sorted(MODELS)
    assert set(idx["implementations"]) == set(IMPLEMENTATIONS)
    assert len(idx["cells"]) == len(FLAVORS) * len(SCORERS)  # every prompt x scorer cell
    pred = built["pred"]
    for m in MODELS:
        for cell, bits in idx["correct"][m].items():
            f, s = cell.split("|")
            want = "".join("1" if c else "0" for c in pred.filter(
                (pl.col("model") == m) & (pl.col("prompt") == f) & (pl.col("scorer") == s))
                .sort("subject", "index").get_column("correct"))
            assert bits == want, (m, cell)
    assert "<script src" not in page
    assert "MMLU_EXPLORER_LOAD(" in (built["root"] / "inline" / "explorer.html").read_text()


def test_cli_missing_cache_column_is_one_clear_line(built, tmp_path, capsys):
    pred_path, prompt_paths, cache_paths, qpath = built["paths"]
    bad = tmp_path / "bad.parquet"
    pl.read_parquet(cache_paths[0]).drop("greedy_text").write_parquet(bad)
    rc = cli.main(["explorer", "--predictions", str(pred_path), "--questions", str(qpath),
                   "--prompts", *map(str, prompt_paths), "--cache", str(bad),
                   "--out", str(tmp_path / "e.html"), "--data-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.parquet" in err and "greedy_text" in err


# ---------------------------------------------------------------- in a real browser

def _chromium() -> str | None:
    for name in (os.environ.get("MMLU_FLAVORS_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary found (Debian: apt-get install chromium; scripts/setup.sh "
                    "installs it when run as root; or set MMLU_FLAVORS_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed (test extras)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, html: Path, hash_: str = ""):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri() + hash_)
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def _count(page) -> int:
    return int(page.inner_text("#count").split(" of ")[0])


def test_browser_filters_count_what_predictions_say(built, browser):
    pred = built["pred"].filter(pl.col("model") == "model-a")
    page, errors = _open(browser, built["root"] / "split" / "explorer.html")
    assert _count(page) == len(SUBJECTS) * N
    assert page.locator("#qlist li").count() == len(SUBJECTS) * N

    diag = pred.join(pl.DataFrame([(n, p, s) for n, (p, s) in IMPLEMENTATIONS.items()],
                                  schema=["impl", "prompt", "scorer"], orient="row"),
                     on=["prompt", "scorer"])
    wide = diag.pivot(on="impl", index=["subject", "index"], values="correct")
    impls = list(IMPLEMENTATIONS)
    disagree = wide.filter(pl.any_horizontal(pl.col(i) != pl.col(impls[0]) for i in impls[1:]))
    page.select_option("#filter", "disagree")
    assert _count(page) == disagree.height > 0

    page.select_option("#filter", "flip")
    page.select_option("#impl-a", "helm|greedy_token")
    page.select_option("#impl-b", "harness_e47e01b|loglik_acc")
    page.select_option("#direction", "a")
    a_only = wide.filter(pl.col("helm") & ~pl.col("harness (acc)"))
    assert _count(page) == a_only.height > 0
    page.select_option("#subject", SUBJECTS[2])
    assert _count(page) == a_only.filter(pl.col("subject") == SUBJECTS[2]).height
    shown = {(li.get_attribute("data-subject"), int(li.get_attribute("data-index")))
             for li in page.locator("#qlist li").all()}
    assert shown == set(a_only.filter(pl.col("subject") == SUBJECTS[2])
                        .select("subject", "index").iter_rows())
    assert errors == []


def test_browser_question_shows_cache_and_prediction_numbers(built, browser):
    model, subject = "tiny/model-b", SUBJECTS[1]
    page, errors = _open(browser, built["root"] / "split" / "explorer.html")
    page.select_option("#model", model)
    page.select_option("#subject", subject)
    page.click(f"#qlist li[data-subject='{subject}'][data-index='1']")
    page.wait_for_selector("#impls")
    assert "model=tiny%2Fmodel-b" in page.url and "index=1" in page.url

    pred = built["pred"].filter((pl.col("model") == model) & (pl.col("subject") == subject)
                                & (pl.col("index") == 1))
    gold = pred.get_column("gold")[0]
    assert page.inner_text("#gold") == "ABCD"[gold]
    for name, (p, s) in IMPLEMENTATIONS.items():
        r = pred.filter((pl.col("prompt") == p) & (pl.col("scorer") == s)).row(0, named=True)
        row = page.locator(f"#impls tr[data-impl='{name}']")
        assert row.locator("[data-col=pred]").inner_text() == (
            "none" if r["pred"] is None else "ABCD"[r["pred"]])
        assert row.locator("[data-col=verdict]").inner_text() == ("✓" if r["correct"] else "✗")
    for r in pred.iter_rows(named=True):  # all 20 cells in the flavor panels
        cell = page.locator(f".flavor[data-flavor={r['prompt']}] tr[data-cell='{r['prompt']}|{r['scorer']}']")
        assert cell.locator("[data-col=verdict]").inner_text() == ("✓" if r["correct"] else "✗")

    cache = built["cache"].filter((pl.col("model") == model) & (pl.col("subject") == subject)
                                  & (pl.col("index") == 1))
    for c in cache.iter_rows(named=True):
        panel = page.locator(f".flavor[data-flavor={c['flavor']}]")
        for j, L in enumerate("ABCD"):
            shown = panel.locator(f"[data-col=p_letter][data-letter={L}]").inner_text()
            # the page stores log-probs rounded to 4 decimals (docs/ARCHITECTURE.md)
            assert shown == f"{100 * math.exp(round(c['letter_logprobs'][j], 4)):.2f}%"
            assert float(panel.locator(f"[data-col=text_cont][data-letter={L}]").inner_text()) == \
                pytest.approx(c["text_cont_sum"][j], abs=1e-3)
        assert panel.locator("[data-col=greedy]").inner_text() == json.dumps(c["greedy_text"])
        want = built["prompts"].filter((pl.col("flavor") == c["flavor"]) & (pl.col("subject") == subject)
                                       & (pl.col("index") == 1)).get_column("prompt")[0]
        got = panel.locator(".prompt").evaluate(
            "e => [...e.querySelectorAll('.hdr, .shot, .test')].map(x => x.textContent).join('')")
        assert got == want
    # the original prompt of this question was shortened: 3 of its 5 shots are struck through
    assert page.locator(".flavor[data-flavor=original] .shot.dropped").count() == 3
    assert errors == []


def test_browser_inline_page_needs_no_data_files_and_split_page_says_what_is_missing(built, browser):
    inline = built["root"] / "inline"
    shutil.rmtree(inline / "explorer")
    page, errors = _open(browser, inline / "explorer.html",
                         f"#model=model-a&subject={SUBJECTS[0]}&index=4")
    page.wait_for_selector("#impls")
    assert "abstract_algebra — test question #4" in page.inner_text("#detail h2")
    assert errors == []

    moved = built["root"] / "moved.html"
    shutil.copy(built["root"] / "split" / "explorer.html", moved)
    page, _ = _open(browser, moved, f"#model=model-a&subject={SUBJECTS[0]}&index=4")
    page.wait_for_selector("#load-error")
    assert "could not load explorer/abstract_algebra.js" in page.inner_text("#load-error")


@pytest.fixture(scope="module")
def chat_built(tmp_path_factory, questions):
    """helm_current (one user message) and lighteval_current (shots as turns) cached for a
    model whose tokenizer has SmolLM2's chat template, with the hash of the text it was fed."""
    from tiny_tokenizers import bytelevel_chat

    from mmlu_flavors.flavors import get_flavor
    from mmlu_flavors.tokenize import tokenize_row

    tok = bytelevel_chat(questions)
    root = tmp_path_factory.mktemp("explorer_chat")
    qpath = root / "questions.parquet"
    questions.write_parquet(qpath)
    flavors = ["helm_current", "lighteval_current"]
    prompt_paths, frames = [], []
    for f in flavors:
        p = build_prompts(questions, f, subjects=SUBJECTS[:1], questions_per_subject=4)
        prompt_paths.append(root / f"{f}.parquet")
        p.write_parquet(prompt_paths[-1])
        frames.append(p)
    prompts = pl.concat(frames, how="diagonal_relaxed")
    fed = {(r["flavor"], r["index"]): tokenize_row(r, tok, 4096, get_flavor(r["flavor"])).prompt
           for r in prompts.iter_rows(named=True)}
    cache = cache_for_prompts(prompts, {"chat-model": 1.0}, seed=5).with_columns(
        chat=pl.lit(True),
        prompt_sha256=pl.struct("flavor", "index").map_elements(
            lambda s: hashlib.sha256(fed[(s["flavor"], s["index"])].encode()).hexdigest(),
            return_dtype=pl.String))
    cache_path = root / "cache.parquet"
    cache.write_parquet(cache_path)
    pred_path = root / "predictions.parquet"
    predictions(cache).write_parquet(pred_path)
    paths = (pred_path, prompt_paths, [cache_path], qpath)
    info = build_explorer(*paths, root / "explorer.html", root / "explorer", inline_limit=0,
                          tokenizers={"chat-model": (tok, 4096)})
    return {"root": root, "fed": fed, "info": info, "paths": paths, "cache": cache, "tok": tok}


def test_chat_rendered_text_is_what_the_model_was_fed(chat_built):
    assert chat_built["info"]["chat_rendered"] == 8
    d = _js_data(chat_built["root"] / "explorer" / f"{SUBJECTS[0]}.js")
    seen = d["models"]["chat-model"]["seen"]
    for k, i in enumerate(d["index"]):
        h = seen["helm_current"]  # the template around the whole plain prompt
        P = d["prompts"]["helm_current"]
        plain = (P["headers"][P["q_header"][k]] + "".join(P["shots"][j] for j in P["q_shots"][k])
                 + fill_template(P["templates"][P["q_template"][k]], d["question"][k],
                                 d["choices"][k]))
        before, after = (h["parts"][j] for j in h["q"][k])
        assert before.startswith("<|im_start|>") and after.endswith("<|im_start|>assistant\n")
        assert before + plain + after == chat_built["fed"][("helm_current", i)]
        # lighteval: the shots are turns, so the whole rendering is stored
        assert seen["lighteval_current"]["literal"][str(k)] == \
            chat_built["fed"][("lighteval_current", i)]


def test_chat_rendering_that_is_not_the_cached_input_is_refused(chat_built, tmp_path):
    pred_path, prompt_paths, _, qpath = chat_built["paths"]
    bad = chat_built["cache"].with_columns(prompt_sha256=pl.lit("0" * 64))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="not this tokenizer's rendering"):
        build_explorer(pred_path, prompt_paths, [tmp_path / "bad.parquet"], qpath,
                       tmp_path / "e.html", tmp_path / "e", tokenizers={"chat-model": (
                           chat_built["tok"], 4096)})
    with pytest.raises(ValueError, match="no tokenizer given for \\['chat-model'\\]"):
        build_explorer(*chat_built["paths"], tmp_path / "e.html", tmp_path / "e")


def test_browser_shows_the_chat_rendered_text(chat_built, browser):
    page, errors = _open(browser, chat_built["root"] / "explorer.html")
    page.select_option("#subject", SUBJECTS[0])
    i = 2
    page.click(f"#qlist li[data-subject='{SUBJECTS[0]}'][data-index='{i}']")
    page.wait_for_selector("#impls")
    for f in ("helm_current", "lighteval_current"):
        shown = page.locator(f".flavor[data-flavor={f}] [data-col=seen]").inner_text()
        assert shown == chat_built["fed"][(f, i)]
    assert errors == []
