"""Plain (non-gated) FFN families: ``down(act(fc1(x) + b1)) + b2``; the activation that decides sparsity is
``act(fc1(x) + b1)``, the output of the family's activation module.

Layout differences the adapters state: GPT-2's ``Conv1D`` stores weights ``[in, out]``; GPT-J/CodeGen name the
projections ``fc_in``/``fc_out``; NeoX, BLOOM, Falcon and Persimmon ``dense_h_to_4h``/``dense_4h_to_h``; BLOOM's
activation module is ``gelu_impl``; OPT has no MLP module (``fc1``, ``fc2`` and ``activation_fn`` sit on the
decoder layer).
"""
from __future__ import annotations

from coact.families import register
from coact.families.base import Family

_GPT2 = dict(layers="h", up="c_fc", down="c_proj", act="act", ffn_norm="ln_2", attn_norm="ln_1")
register(Family("gpt2", **_GPT2, conv1d=True, description="plain FFN, Conv1D c_fc/c_proj ([in, out] weights)"))
register(Family("gpt_bigcode", **_GPT2, description="plain FFN, Linear c_fc/c_proj"))
register(Family("gpt_neo", **_GPT2, description="plain FFN, Linear c_fc/c_proj"))

# Parallel attention + FFN from ln_1.
_GPTJ = dict(layers="h", up="fc_in", down="fc_out", act="act", ffn_norm="ln_1", attn_norm="ln_1")
register(Family("gptj", **_GPTJ, description="plain FFN fc_in/fc_out, parallel to attention"))
register(Family("codegen", **_GPTJ, description="plain FFN fc_in/fc_out, parallel to attention"))

_NEOX = dict(up="dense_h_to_4h", down="dense_4h_to_h", act="act")
register(Family("gpt_neox", layers="layers", **_NEOX, description="plain FFN dense_h_to_4h/dense_4h_to_h"))
register(Family("persimmon", layers="layers", **_NEOX, description="plain FFN dense_h_to_4h/dense_4h_to_h, relu^2"))
register(Family("falcon", layers="h", **_NEOX, ffn_norm="input_layernorm",
                description="plain FFN dense_h_to_4h/dense_4h_to_h, parallel to attention"))
register(Family("bloom", layers="h", up="dense_h_to_4h", down="dense_4h_to_h", act="gelu_impl",
                description="plain FFN dense_h_to_4h/dense_4h_to_h, activation mlp.gelu_impl"))

register(Family("opt", layers="decoder.layers", ffn="", up="fc1", down="fc2", act="activation_fn",
                ffn_norm="final_layer_norm", attn_norm="self_attn_layer_norm",
                description="plain FFN fc1/fc2 and activation_fn on the decoder layer itself (no MLP module)"))

register(Family("phi", layers="layers", up="fc1", down="fc2", act="activation_fn", ffn_norm="input_layernorm",
                description="plain FFN fc1/fc2 (Phi-1/2), parallel to attention"))
register(Family("starcoder2", layers="layers", up="c_fc", down="c_proj", act="act",
                description="plain FFN c_fc/c_proj with biases"))
register(Family("nemotron", layers="layers", up="up_proj", down="down_proj", act="act_fn",
                description="plain FFN up_proj/down_proj, relu^2"))
