"""Mixture-of-experts families: a router picks k of E experts per token; each expert is a gated FFN of its own.

Layout in the installed transformers (5.x): the MoE block is the decoder layer's ``mlp`` with a router ``gate``
(``forward(x) -> (logits, top-k weights, top-k expert ids)``) and ``experts``, whose weights are fused 3D
parameters: ``gate_up_proj [E, 2I, d]`` (expert e's gate rows, then its up rows), ``down_proj [E, d, I]`` and one
``act_fn``. Qwen2-MoE adds a resident ``shared_expert`` (a dense gated MLP seen by every token, scaled by a sigmoid
``shared_expert_gate``), and Qwen2-MoE / Qwen3-MoE may mix dense layers into the stack (``mlp_only_layers``,
``decoder_sparse_step``): those layers' ``mlp`` is an ordinary Llama-style gated MLP (``gate_proj``/``up_proj``/
``down_proj``/``act_fn``), which the adapter handles like the gated families.

**The activation rule.** Neuron i of expert e in layer l is active for a token only if the router put e among
the token's top-k (exactly as the model computes it: the ``experts`` module receives the router's ids) AND the
sparsifier keeps ``a_i = act(gate_e(x))_i``. Placement units are ``(layer, expert)`` (:class:`runtime.layout.Unit`),
each I neurons wide; sparsifier thresholds are per unit, calibrated on the tokens routed to that expert
(:func:`coact.trace.routed_samples`). Routers and shared experts are not placement units: they stay resident.

How the activations are observed (:func:`coact.families.units.unit_hooks`): a forward hook on ``experts``
receives ``(x, top_k_index, top_k_weights)``, computes every expert's activation on its routed tokens
(``act(F.linear(x, gate_up_proj[e]).chunk(2)[0])``, the model's own formula) and, when a caller masks them (the
sparse model), recomputes the block's expert output from the masked activations. This does not depend on which
experts kernel transformers dispatches to (``@use_experts_implementation``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coact.errors import ModelError
from coact.families import register
from coact.families.base import Family, _set_param, get_path

_LLAMA = dict(layers="layers", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn")


@dataclass(frozen=True)
class MoEFamily(Family):
    """A family whose FFN layers may be mixture-of-experts blocks (fused 3D expert weights).

    Extra attributes (paths from the FFN module ``mlp``):
        experts: the experts module (``gate_up_proj [E, 2I, d]``, ``down_proj [E, d, I]``, ``act_fn``).
        router: the router module (resident).
        shared: the shared expert (resident), or None.
    """

    experts: str | None = "experts"
    router: str = "gate"
    shared: str | None = None
    expert_gate_up: str = "gate_up_proj"
    expert_down: str = "down_proj"
    expert_activation: str = "act_fn"

    def moe_block(self, layer: Any) -> Any | None:
        """The layer's MoE block (its ``experts`` module exists), or None for a dense layer of the stack."""
        mlp = self.ffn_module(layer)
        return mlp if self.experts and getattr(mlp, self.experts.split(".")[0], None) is not None else None

    def experts_module(self, layer: Any) -> Any:
        block = self.moe_block(layer)
        if block is None:
            raise ModelError(f"family {self.name}: this layer has no experts")
        return get_path(block, self.experts or "")

    def _fused(self, layer: Any) -> tuple[Any, Any]:
        ex = self.experts_module(layer)
        gu, down = getattr(ex, self.expert_gate_up, None), getattr(ex, self.expert_down, None)
        if gu is None or down is None or gu.dim() != 3 or down.dim() != 3:
            raise ModelError(f"family {self.name}: experts without fused 3D {self.expert_gate_up}/"
                             f"{self.expert_down} parameters (unsupported transformers version)")
        return gu, down

    def n_experts(self, layer: Any) -> int:
        return int(self._fused(layer)[0].shape[0])

    def expert_width(self, layer: Any) -> int:
        return int(self._fused(layer)[1].shape[2])

    def expert_weights(self, layer: Any, expert: int) -> dict[str, np.ndarray]:
        """float32 copies of expert ``expert``: ``gate``/``up [I, d]``, ``down [d, I]`` (no biases)."""
        gu, down = self._fused(layer)
        w = gu.detach()[int(expert)]
        n = w.shape[0] // 2
        out = {"gate": w[:n], "up": w[n:], "down": down.detach()[int(expert)]}
        return {k: np.ascontiguousarray(v.float().cpu().numpy()) for k, v in out.items()}

    def permute_expert(self, layer: Any, expert: int, perm: np.ndarray) -> None:
        """Reorder expert ``expert``'s neurons in place (gate and up rows of ``gate_up_proj[e]``, columns of
        ``down_proj[e]``); the block computes the same function."""
        import torch

        gu, down = self._fused(layer)
        idx = torch.as_tensor(np.asarray(perm, dtype=np.int64))
        n = gu.shape[1] // 2
        e = int(expert)
        with torch.no_grad():
            new_gu = gu.detach().clone()
            new_gu[e] = gu[e].index_select(0, torch.cat([idx, idx + n]))
            new_down = down.detach().clone()
            new_down[e] = down[e].index_select(1, idx)
            _set_param(gu, new_gu)
            _set_param(down, new_down)

    def describe(self) -> str:
        return self.description or "mixture-of-experts"


def _moe(name: str, description: str, **kw: Any) -> MoEFamily:
    return MoEFamily(name, **_LLAMA, description=description, **kw)


register(_moe("mixtral", "mixture-of-experts: router mlp.gate, fused experts (gate_up_proj [E, 2I, d])"))
register(_moe("qwen2_moe", "mixture-of-experts with a resident shared expert; dense layers may be mixed in",
              shared="shared_expert"))
register(_moe("qwen3_moe", "mixture-of-experts (fused experts); dense layers may be mixed in (mlp_only_layers)"))
register(_moe("olmoe", "mixture-of-experts: router mlp.gate, fused experts (gate_up_proj [E, 2I, d])"))
