"""Small real tokenizers trained on MMLU text: byte-level BPE without BOS (SmolLM2-like) and
a SentencePiece-style one that adds BOS (Gemma/LLaMA-like). Built in seconds, no downloads."""

from __future__ import annotations

from functools import lru_cache

import polars as pl
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


def _corpus(questions: pl.DataFrame) -> list[str]:
    q = questions.filter(pl.col("split") != "test").head(1500)
    return [r["question"] + " " + " ".join(r["choices"]) for r in q.iter_rows(named=True)]


@lru_cache(maxsize=None)
def _build(kind: str, corpus: tuple[str, ...]) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<bos>", "<eos>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None if kind == "bytelevel" else "<unk>"))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(corpus) + ["A B C D Answer: Question: Choices:"], trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                       bos_token="<|endoftext|>", add_bos_token=False)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials + ["<unk>"])
    tok.train_from_iterator(list(corpus) + ["A B C D Answer: Question: Choices:"], trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def bytelevel_no_bos(questions: pl.DataFrame) -> PreTrainedTokenizerFast:
    return _build("bytelevel", tuple(_corpus(questions)))


def sentencepiece_bos(questions: pl.DataFrame) -> PreTrainedTokenizerFast:
    return _build("metaspace", tuple(_corpus(questions)))


# SmolLM2-135M-Instruct's chat template (ChatML with a default system message), verbatim
CHATML_SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def bytelevel_chat(questions: pl.DataFrame) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with ChatML special tokens and SmolLM2's chat template; like
    SmolLM2 its BOS token is "<|im_start|>" and it adds no special tokens by default."""
    import copy

    tok = copy.deepcopy(bytelevel_no_bos(questions))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.bos_token, tok.eos_token = "<|im_start|>", "<|im_end|>"
    tok.chat_template = CHATML_SMOLLM2
    return tok
