"""The protocol of a model family: where a decoder's FFN lives, what its weights are, and which activation decides
sparsity.

Why adapters and not attribute guessing: transformers names the same FFN a dozen ways (``mlp.gate_proj``,
``mlp.gate_up_proj`` fused, ``mlp.c_fc`` as a GPT-2 ``Conv1D`` with transposed weights, ``mlp.fc_in``, ``fc1`` on
the decoder layer itself in OPT, ``mlp.dense_h_to_4h`` ...). Guessing through a chain of ``getattr`` silently
picks the wrong module when two families share a name with different meanings; a family adapter states the layout
once, is selected by ``config.model_type`` (:data:`coact.families.FAMILIES`), and an unknown family fails with one
line naming the supported ones.

Terms (docs/DESIGN.md §2): the FFN of a layer has N neurons. Neuron i owns row i of ``gate`` and ``up`` (``[N, d]``,
``out x in``), column i of ``down`` (``[d, N]``) and entry i of the per-neuron biases ``gate_bias``/``up_bias``;
``down_bias`` is a ``d_model`` vector shared by all neurons.

**The activation that decides sparsity** is the output of the family's activation module ``act``:

- gated FFNs (Llama, Mistral, Qwen, Gemma, OLMo, Granite, Phi-3 ...): ``a = act(gate(x) + gate_bias)``; neuron i
  contributes ``a_i * (up_i x + up_bias_i) * down[:, i]``, so ``a_i = 0`` removes it. Phi-3's fused
  ``gate_up_proj`` stores gate as its first N rows and up as its last N rows; its ``activation_fn`` is applied to
  the gate half only, so the hook sees exactly ``act(gate(x))`` as in the unfused families.
- plain FFNs (GPT-2, GPT-J, NeoX, BLOOM, OPT, Phi-2, StarCoder2, Falcon ...): ``a = act(fc1(x) + fc1_bias)``; neuron
  i contributes ``a_i * down[:, i]``. BLOOM's activation module is ``mlp.gelu_impl``; OPT has no MLP module and its
  activation is ``activation_fn`` on the decoder layer.

The hook point is always a module whose forward output is ``a``, so capture (records ``mask(a)``) and the sparse
model (replaces ``a`` by ``a * mask``) need no family-specific code.

Mixture-of-experts: :class:`coact.families.moe.MoEFamily` adds ``experts``/``router``/``shared`` paths and the
per-expert accessors (``moe_block``, ``n_experts``, ``expert_width``, ``expert_weights``, ``permute_expert``,
``expert_activation``); a dense family's :meth:`Family.moe_block` is always None. The unit of placement of an MoE layer is
(layer, expert) (:mod:`coact.families.units`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coact.errors import ModelError


def get_path(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path = "a.b"`` (``""``: obj itself); a missing attribute is a :class:`ModelError`."""
    for attr in path.split(".") if path else ():
        nxt = getattr(obj, attr, None)
        if nxt is None:
            raise ModelError(f"{type(obj).__name__} has no {attr!r} (looking for {path!r})")
        obj = nxt
    return obj


def _set_param(param: Any, value: Any) -> None:
    param.data = value.contiguous()


@dataclass(frozen=True)
class Family:
    """One model family's FFN layout (paths are dotted attribute paths).

    Attributes:
        name: the family name (= the transformers ``model_type`` it is registered under).
        layers: path of the decoder-layer list from ``model.base_model`` (``layers``, ``h``, ``decoder.layers``).
        ffn: path of the module holding the FFN projections, from a decoder layer (``mlp``; ``""``: the layer).
        up: path of the up projection (plain FFNs: fc1), from the FFN module; None when fused.
        down: path of the down projection (fc2), from the FFN module.
        act: path of the activation module (its output is the activation that decides sparsity), from the FFN module.
        gate: path of the gate projection of a gated FFN (None: plain FFN, or fused).
        gate_up: path of a fused gate+up projection (``[2N, d]``: gate rows then up rows), or None.
        conv1d: the projections are GPT-2 ``Conv1D`` modules (weights stored ``[in, out]``).
        ffn_norm: path (from the decoder layer) of the norm whose output is the FFN input; None: the FFN sees the
            residual stream itself. Used only by the online engine's prefetch predictor.
        attn_norm: path of the norm that feeds attention (the ``input`` predictor); None: identity.
        experts: path of the experts module of mixture-of-experts families (:mod:`coact.families.moe`); None for
            dense FFNs.
        description: one line for ``--help`` and error messages.
    """

    name: str
    layers: str
    down: str
    act: str
    up: str | None = None
    gate: str | None = None
    gate_up: str | None = None
    ffn: str = "mlp"
    conv1d: bool = False
    ffn_norm: str | None = "post_attention_layernorm"
    attn_norm: str | None = "input_layernorm"
    experts: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if (self.up is None) == (self.gate_up is None):
            raise ValueError(f"family {self.name}: give exactly one of up / gate_up")
        if self.gate is not None and self.gate_up is not None:
            raise ValueError(f"family {self.name}: a fused gate_up has no separate gate")

    # ------------------------------------------------------------------------------------------------ structure
    @property
    def gated(self) -> bool:
        """True for gated FFNs (separate or fused gate): the gate decides, up is multiplied in."""
        return self.gate is not None or self.gate_up is not None

    @property
    def fused(self) -> bool:
        return self.gate_up is not None

    @property
    def moe(self) -> bool:
        """True for mixture-of-experts families (:mod:`coact.families.moe`)."""
        return self.experts is not None

    def moe_block(self, layer: Any) -> Any | None:
        """The layer's mixture-of-experts block, or None (always None for dense families)."""
        return None

    def decoder_layers(self, model: Any) -> list[Any]:
        return list(get_path(getattr(model, "base_model", model), self.layers))

    def ffn_module(self, layer: Any) -> Any:
        """The module holding the FFN projections (OPT: the decoder layer itself)."""
        return get_path(layer, self.ffn)

    def module(self, layer: Any, part: str) -> Any:
        """The projection module of ``part`` (``gate``, ``up``, ``down``, ``gate_up``) or the ``act`` module."""
        path = getattr(self, part)
        if path is None:
            raise ModelError(f"family {self.name} has no {part} projection")
        return get_path(self.ffn_module(layer), path)

    def input_module(self, layer: Any) -> Any:
        """The first projection: its forward input is the FFN input x."""
        return self.module(layer, "gate_up" if self.fused else ("gate" if self.gate else "up"))

    def norm(self, layer: Any, which: str) -> Any:
        """The FFN-input norm (``post``) or the attention-input norm (``input``) of a layer; identity if None."""
        path = self.ffn_norm if which == "post" else self.attn_norm
        return (lambda h: h) if path is None else get_path(layer, path)

    def n_neurons(self, layer: Any) -> int:
        w = self.module(layer, "down").weight
        return int(w.shape[0] if self.conv1d else w.shape[1])

    # -------------------------------------------------------------------------------------------------- weights
    def _oi(self, mod: Any) -> Any:
        """A projection's weight as a torch tensor [out, in] (a view)."""
        w = mod.weight.detach()
        return w.T if self.conv1d else w

    def weights(self, layer: Any) -> dict[str, np.ndarray]:
        """float32 copies: ``up [N, d]``, ``down [d, N]``, ``gate [N, d]`` (gated only) and the biases that exist
        (``gate_bias``/``up_bias [N]``, ``down_bias [d]``)."""
        out: dict[str, Any] = {}
        down = self.module(layer, "down")
        if self.fused:
            gu = self.module(layer, "gate_up")
            w = self._oi(gu)
            n = w.shape[0] // 2
            out["gate"], out["up"] = w[:n], w[n:]
            if getattr(gu, "bias", None) is not None:
                out["gate_bias"], out["up_bias"] = gu.bias.detach()[:n], gu.bias.detach()[n:]
        else:
            up = self.module(layer, "up")
            out["up"] = self._oi(up)
            if getattr(up, "bias", None) is not None:
                out["up_bias"] = up.bias.detach()
            if self.gate is not None:
                gate = self.module(layer, "gate")
                out["gate"] = self._oi(gate)
                if getattr(gate, "bias", None) is not None:
                    out["gate_bias"] = gate.bias.detach()
        out["down"] = self._oi(down)
        if getattr(down, "bias", None) is not None:
            out["down_bias"] = down.bias.detach()
        return {k: np.ascontiguousarray(v.float().cpu().numpy()) for k, v in out.items()}

    def permute(self, layer: Any, perm: np.ndarray) -> None:
        """Reorder the layer's FFN neurons in place: new neuron p is old neuron ``perm[p]``. Rows of gate/up (both
        halves of a fused gate_up), columns of down, entries of the per-neuron biases; Conv1D axes transposed. A
        permutation of the hidden units of an FFN does not change the function it computes."""
        import torch

        idx = torch.as_tensor(np.asarray(perm, dtype=np.int64))
        ax = 1 if self.conv1d else 0  # the neuron axis of an "up-like" weight as stored
        if self.fused:
            gu = self.module(layer, "gate_up")
            n = gu.weight.shape[ax] // 2
            both = torch.cat([idx, idx + n])
            with torch.no_grad():
                _set_param(gu.weight, gu.weight.index_select(ax, both))
                if getattr(gu, "bias", None) is not None:
                    _set_param(gu.bias, gu.bias[both])
        for part in ("gate", "up"):
            if getattr(self, part) is None:
                continue
            mod = self.module(layer, part)
            with torch.no_grad():
                _set_param(mod.weight, mod.weight.index_select(ax, idx))
                if getattr(mod, "bias", None) is not None:
                    _set_param(mod.bias, mod.bias[idx])
        down = self.module(layer, "down")
        with torch.no_grad():
            _set_param(down.weight, down.weight.index_select(1 - ax, idx))

    def describe(self) -> str:
        kind = "fused gated" if self.fused else ("gated" if self.gated else "plain")
        return self.description or f"{kind} FFN"
