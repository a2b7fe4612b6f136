"""Tiny random causal LMs built from configs (no downloads) and MMLU-shaped requests.

Import from tests: `from conftest_models import tiny_llama, tiny_gemma3, mmlu_like_requests`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

try:
    import mmlu_flavors  # noqa: F401
except ImportError:  # not installed yet: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from mmlu_flavors.tokenize import Request  # noqa: E402

VOCAB = 320
BOS = 2


def tiny_llama(seed: int = 0, vocab: int = VOCAB) -> torch.nn.Module:
    """A SmolLM2-shaped Llama (GQA, tied embeddings) with sharp random weights, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def tiny_gemma3(seed: int = 0, sliding_window: int = 16, vocab: int = VOCAB) -> torch.nn.Module:
    """A Gemma-3-shaped text model: sliding and full attention layers, a tiny window,
    logit softcapping, float32."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=16, query_pre_attn_scalar=16, sliding_window=sliding_window,
                           layer_types=["sliding_attention", "sliding_attention",
                                        "full_attention", "sliding_attention"],
                           max_position_embeddings=1024, final_logit_softcapping=30.0,
                           initializer_range=0.2, bos_token_id=BOS, eos_token_id=1,
                           pad_token_id=0)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(cfg).float().eval()


def save_tiny(model: torch.nn.Module, path: Path) -> Path:
    """save_pretrained a tiny model with a small working tokenizer (WordLevel over VOCAB ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["<unk>"] = 0
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def mmlu_like_requests(seed: int = 0, bos: int | None = None, max_length: int = 1000,
                       prefix_len: int = 70, n_questions: int = 4) -> list[Request]:
    """Requests shaped like MMLU: two 'subjects' whose questions share a long few-shot prefix
    (longer than a 16-token window), different question suffixes, 8 continuations (four
    1-token letters, four 1-12 token texts), an empty continuation, a lone unshared request,
    and one request that needs left truncation (small max_length)."""
    rng = random.Random(seed)

    def toks(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    head = [bos] if bos is not None else []
    letters = [[10], [11], [12], [13]]
    out: list[Request] = []
    for subject in range(2):
        prefix = head + toks(prefix_len + 9 * subject)
        for q in range(n_questions):
            suffix = toks(rng.randrange(5, 30))
            texts = [toks(rng.randrange(1, 13)) for _ in range(4)]
            out.append(Request(prefix + suffix, letters + texts, max_length))
    # an empty continuation in a shared-prefix request
    r = out[1]
    out[1] = Request(r.context, r.continuations[:5] + [[]] + r.continuations[6:], max_length)
    # a lone request, then one needing truncation inside the second subject's run
    out.insert(4, Request(head + toks(40), letters + [toks(3), toks(12), toks(1), toks(7)],
                          max_length))
    r = out[5]  # first of its run: the run's prefix cache must be built lazily
    out[5] = Request(r.context, r.continuations, len(r.context) - 3)
    return out


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny llama GGUF (F32 tensors of `tiny_llama(seed)`, byte-level BPE vocabulary of
    VOCAB tokens) that transformers can load with `gguf_file=`."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    model = tiny_llama(seed)
    cfg = model.config
    alphabet = list(bytes_to_unicode().values())  # 256 byte symbols
    merges, tokens = [], list(alphabet)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    for a in ["\u0120"] + list(letters):  # "Ġ" is the byte-level space
        for b in letters:
            if len(tokens) >= VOCAB - 2:
                break
            merges.append(f"{a} {b}")
            tokens.append(a + b)
    tokens += ["<|endoftext|>", "<|im_start|>"]
    types = [1] * (VOCAB - 2) + [3, 3]  # NORMAL, then CONTROL
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(VOCAB - 2)
    w.add_eos_token_id(VOCAB - 2)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"model.layers.{i}.{hf}.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
