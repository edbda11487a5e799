"""Tiny randomly initialised models of every registered family, for tests (no download, a fraction of a second
each): ``save_tiny(family, folder)`` writes a transformers folder (config, safetensors, a 256-token byte-level
tokenizer; the vocabulary has 272 rows because some families' tokenizer classes add a special token on load, e.g.
Qwen2's ``<|endoftext|>``) that :func:`coact.models.load_model` loads like any local model.

Why here and not in tests/: the family conformance tests, the export tests and third parties adding a family all
need the same tiny models; one builder keeps their shapes consistent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # a transformers dependency

HIDDEN, FFN, LAYERS, HEADS, VOCAB, POSITIONS = 32, 64, 2, 4, 272, 256

_COMMON = dict(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=POSITIONS, head_dim=HIDDEN // HEADS,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)
_GPT = dict(n_embd=HIDDEN, n_inner=FFN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=POSITIONS,
            bos_token_id=1, eos_token_id=2)
#: Config overrides per family (the names transformers uses for the same sizes differ).
OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt2": _GPT, "gpt_bigcode": _GPT,
    "gptj": dict(_GPT, rotary_dim=4), "codegen": dict(_GPT, rotary_dim=4),
    "gpt_neo": dict(hidden_size=HIDDEN, intermediate_size=FFN, num_layers=LAYERS, num_heads=HEADS, vocab_size=VOCAB,
                    max_position_embeddings=POSITIONS, attention_types=[[["global", "local"], 1]], bos_token_id=1,
                    eos_token_id=2),
    "opt": dict(hidden_size=HIDDEN, ffn_dim=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                vocab_size=VOCAB, max_position_embeddings=POSITIONS, word_embed_proj_dim=HIDDEN, pad_token_id=0,
                bos_token_id=1, eos_token_id=2),
    "bloom": dict(hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0),  # BLOOM's FFN is 4 x hidden (128)
    "falcon": dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=VOCAB,
                   ffn_hidden_size=FFN, bos_token_id=1, eos_token_id=2),
    "phi": dict(_COMMON, num_key_value_heads=HEADS),
    "gemma2": dict(_COMMON, sliding_window=16),
    "gemma3_text": dict(_COMMON, sliding_window=16),
    # Mixture-of-experts: 4 experts of 32 neurons, top-2 routing (Qwen2-MoE: plus a resident shared expert).
    "mixtral": dict(_COMMON, num_local_experts=4, num_experts_per_tok=2, intermediate_size=FFN // 2),
    "qwen2_moe": dict(_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=FFN // 2,
                      shared_expert_intermediate_size=48),
    "qwen3_moe": dict(_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=FFN // 2),
    "olmoe": dict(_COMMON, num_experts=4, num_experts_per_tok=2, intermediate_size=FFN // 2),
}


def tiny_config(family: str) -> Any:
    """A transformers config of a tiny model of ``family`` (hidden 32, FFN 64, 2 layers, 272 embeddings)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **OVERRIDES.get(family, _COMMON))


def byte_tokenizer(bos: bool = False) -> Any:
    """A 256-token byte-level BPE tokenizer with no merges (every byte is a token), built offline; with ``bos``
    it puts ``<s>`` (id 256) in front of every text, as Llama's and Gemma's tokenizers do."""
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_object=tk)
    tk.add_special_tokens(["<s>"])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>")


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny random causal LM of ``family`` in eval mode; biases are randomised too (transformers zeroes them),
    so tests see the biases move with their neurons."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def save_tiny(family: str, folder: str | Path, seed: int = 0, *, bos: bool = False, **overrides: Any) -> Path:
    """Save :func:`tiny_model` (config ``overrides``) and :func:`byte_tokenizer` (``bos``) with
    ``save_pretrained`` into ``folder``."""
    import transformers

    transformers.logging.set_verbosity_error()
    folder = Path(folder)
    tiny_model(family, seed, **overrides).save_pretrained(folder)
    byte_tokenizer(bos).save_pretrained(folder)
    return folder
