"""Gated FFN families: ``down(act(gate(x)) * up(x))`` with separate or fused gate/up projections.

The activation that decides sparsity is ``act(gate(x))`` (the output of ``mlp.act_fn``; Phi-3: ``activation_fn``
applied to the gate half of ``gate_up_proj``).
"""
from __future__ import annotations

from coact.families import register
from coact.families.base import Family

_LLAMA = dict(layers="layers", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn")

# Pre-norm decoders whose FFN input is post_attention_layernorm(h + attn): the Llama layout.
for _name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "granite", "stablelm", "olmo", "smollm3", "helium",
              "ministral"):
    register(Family(_name, **_LLAMA, description="gated FFN (mlp.gate_proj/up_proj/down_proj, act_fn)"))

# Gemma 2 / 3: the FFN input is pre_feedforward_layernorm (post_attention_layernorm normalises the attention output).
for _name in ("gemma2", "gemma3_text"):
    register(Family(_name, **_LLAMA, ffn_norm="pre_feedforward_layernorm",
                    description="gated FFN (GeGLU), pre_feedforward_layernorm feeds it"))

# OLMo 2: post-norm; the FFN sees the residual stream itself.
register(Family("olmo2", **_LLAMA, ffn_norm=None, attn_norm=None,
                description="gated FFN, norms after the blocks (the FFN input is the residual)"))

# Cohere: parallel attention and FFN from one input_layernorm.
register(Family("cohere", **_LLAMA, ffn_norm="input_layernorm",
                description="gated FFN in parallel with attention (one input_layernorm)"))

# Phi-3: fused gate_up_proj [2N, d] (gate rows first), activation_fn on the gate half.
register(Family("phi3", layers="layers", gate_up="gate_up_proj", down="down_proj", act="activation_fn",
                description="fused gate_up_proj (gate rows, then up rows), activation_fn on the gate half"))
