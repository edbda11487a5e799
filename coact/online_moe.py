"""Mixture-of-experts layers run from flash: the MoE side of :class:`coact.online.FlashModel`.

Why a module of its own: a dense FFN layer is one placement unit and one pack region; an MoE layer is E units (one
per expert, :mod:`coact.families.units`), of which the router picks k per token. The online engine keeps the
model's own MoE block (router, routing normalisation, shared expert, the final combination) and replaces only its
``experts`` module by :class:`StreamedExperts`, which the block calls exactly as it calls the original one:
``experts(x [R, d], top_k_index [R, k], top_k_weights [R, k]) -> [R, d]`` (transformers 5.x, every MoE family of
:mod:`coact.families.moe`). So routing (softmax, top-k, ``norm_topk_prob``), Qwen2-MoE's sigmoid-gated shared expert
and the reshapes are the family's own code, not a copy of it.

**Resident / streamed.** Resident: the router, a shared expert, and every expert's **gate** rows (``gate_up_proj[e]
[:I]``, copied out of the fused parameter; as for dense gated FFNs, the gate decides which neurons are needed).
Streamed: each expert's up rows and down columns, the ``up-down`` bundles of the expert's unit region of the pack.
The fused ``gate_up_proj`` and ``down_proj`` parameters are dropped from the model (weak references in
``FlashModel.dropped``; tests check they are freed); their DRAM is the reader's cache budget.

**Per token and MoE layer** (:meth:`StreamedExperts.forward`), for each expert e the router selected, as the
in-memory sparse model computes it (:func:`coact.families.units._experts_hook` under
:func:`coact.accuracy.sparsified`): ``a = act(gate_e(x))``, ``S = sparsifier.mask(unit(l, e), a)`` (CATS
thresholds per (layer, expert) unit), the reader returns the bundles of S from the unit's region (cache, collapse,
prefetch, O_DIRECT, as for dense layers), ``h = down_e[:, S] @ (a[S] * (up_e[S] @ x))`` is computed from exactly
the bytes read and multiplied by the router weight of e; the outputs are summed in ascending expert order (the
order of the model's own loop). Exact mode scatters the bundles into scratch matrices of one expert's shape, whose
addresses have the offset modulo 64 of the weights they stand in for (as the dense path does); the compact path
(``exact=False``) uses k-sized matmuls on the fetched bundles. Gate and up are separate ``[I, d]`` products here,
where the model computes them in one ``[2I, d]`` product: with the same operand alignment this gave bit-identical
values for I in {32, 48, 512, 768, 1408, 1792} (the tiny test models; Qwen1.5-MoE, Qwen3-MoE, Mixtral-like widths)
and differences up to ~2e-6 for I = 17 (this machine's BLAS peels an odd N differently), i.e. still far inside
the 1e-4 logit tolerance, but a CATS decision within 2e-6 of its threshold could then flip.

**Prefetch.** The reader's prefetches are per unit, and a fetch gives up those of any unit other than itself and
the next one (:meth:`runtime.stream.FlashFFNReader.fetch_raw`; at most two units hold read buffers), so prefetching
all k predicted experts would mostly be discarded; one unit per MoE layer is prefetched. At the entry of an MoE
layer (before attention) the predictor input (the layer's FFN norm, or the attention norm: ``predictor``) goes through the
layer's own router; the expert with the largest predicted router weight is the one prefetched: its predicted
neurons ``mask(margin * act(gate_e(x̂)))`` are read while attention runs, and that expert is fetched first if the
router really selects it (else the prefetch is discarded as wasted bytes). The other selected experts are read on
demand. Exactness never depends on it: the reader serves the bundles of the true set S whatever was prefetched.
Predictor precision/recall are counted per layer: predicted = the prefetched expert's predicted neurons, active =
the active neurons of every selected expert (so recall also shows what the one-unit prefetch cannot cover).
"""
from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coact.errors import CoactError
from coact.families.base import get_path

_clock = time.perf_counter_ns
#: What the prefetch of an MoE layer reads (reported by ``FlashModel.report()["moe"]``).
PREFETCH_SCOPE = "predicted neurons of the predicted top expert (one unit per MoE layer)"


def _aligned_zeros(shape: tuple[int, ...], mod: int) -> torch.Tensor:
    """A zero float32 tensor of ``shape`` whose address is ``mod`` modulo 64 bytes (see
    ``FlashModel._scratch``: only the same alignment gives the same BLAS float results)."""
    size = int(np.prod(shape))
    flat = torch.zeros(size + 16)
    shift = ((mod - flat.data_ptr() % 64) % 64) // 4
    return flat[shift : shift + size].view(shape)


def expert_alignments(adapter: Any, layer: Any) -> dict[str, int]:
    """Address modulo 64 of every expert's gate half, up half and down matrix (keys ``gate{e}``, ``up{e}``,
    ``down{e}``), taken from the reference model before anything is copied."""
    ex = adapter.experts_module(layer)
    gu, down = getattr(ex, adapter.expert_gate_up), getattr(ex, adapter.expert_down)
    n = gu.shape[1] // 2
    out: dict[str, int] = {}
    for e in range(gu.shape[0]):
        out[f"gate{e}"] = gu[e, :n].data_ptr() % 64
        out[f"up{e}"] = gu[e, n:].data_ptr() % 64
        out[f"down{e}"] = down[e].data_ptr() % 64
    return out


def streamed_expert_weights(adapter: Any, layer: Any) -> list[torch.Tensor]:
    """The parts of an MoE layer that a pack streams: every expert's up half (a view of ``gate_up_proj``) and its
    ``down_proj``; empty for a dense layer. :func:`coact.online.rounded_ffn` rounds them for fp16 packs."""
    if adapter.moe_block(layer) is None:
        return []
    ex = adapter.experts_module(layer)
    gu, down = getattr(ex, adapter.expert_gate_up), getattr(ex, adapter.expert_down)
    return [gu[:, gu.shape[1] // 2 :], down]


class StreamedExperts(nn.Module):
    """An MoE block's ``experts`` module whose up/down weights come from flash (see the module docstring).

    Holds the resident gates (one ``[I, d]`` parameter per expert, aligned as the fused parameter's gate half was)
    and the activation; ``units[e]`` is the pack unit (reader region, sparsifier index) of expert e.
    """

    def __init__(self, owner: Any, layer_index: int, block: nn.Module, units: dict[int, int],
                 align: dict[str, int]):
        super().__init__()
        fam = owner.family
        ex = get_path(block, fam.experts)
        gu, down = getattr(ex, fam.expert_gate_up), getattr(ex, fam.expert_down)
        n_exp, two_i, d = gu.shape  # fused 3D weights (coact.families.moe refuses anything else at load)
        if sorted(units) != list(range(n_exp)):  # check_pack_model compares the units first; this guards direct use
            raise CoactError(f"layer {layer_index}: units for experts {sorted(units)}, the model has {n_exp} experts")
        self.layer_index = layer_index
        self.units = dict(units)
        self.n = two_i // 2
        self.d = d
        self.act_fn = getattr(ex, fam.expert_activation)
        self._router = (get_path(block, fam.router),)  # resident, owned by the block (not registered twice)
        gates = []
        with torch.no_grad():
            for e in range(n_exp):
                g = _aligned_zeros((self.n, d), align[f"gate{e}"])
                g.copy_(gu[e, : self.n])
                gates.append(nn.Parameter(g, requires_grad=False))
        self.gates = nn.ParameterList(gates)
        # Scratch matrices of one expert's shape, shared with every layer of equal shape and alignment.
        self._up = [owner._scratch("up", (self.n, d), align[f"up{e}"]) for e in range(n_exp)]
        self._down = [owner._scratch("down", (d, self.n), align[f"down{e}"]) for e in range(n_exp)]
        owner.dropped.extend([weakref.ref(gu), weakref.ref(down)])
        self._owner = weakref.ref(owner)
        self._block_start = 0
        self._pred: tuple[int, np.ndarray] | None = None  # (expert, predicted neurons) of the prefetch in flight

    # ------------------------------------------------------------------------------------------------ hooks
    def layer_entry(self, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the decoder layer: prefetch the predicted top expert's predicted neurons while
        attention runs; starts the attention clock."""
        fm = self._owner()
        assert fm is not None
        t0 = _clock()
        self._pred = None
        if fm.prefetch_on:
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[0] * h.shape[1] == 1:
                with torch.no_grad():
                    xn = fm.family.norm(layer, fm.predictor)(h.reshape(1, -1))
                    _, w, idx = self._router[0](xn)
                    e = int(idx[0, int(torch.argmax(w[0]))])
                    a = self.act_fn(F.linear(xn, self.gates[e]))
                    ids = np.flatnonzero(fm._mask(self.units[e], a * fm.margin)[0].numpy())
                self._pred = (e, ids)
                fm.reader.prefetch(self.units[e], ids)
        t1 = _clock()
        if fm.timings:
            fm.timings[-1].predict_ns += t1 - t0
        fm._attn_start = t1

    def block_entry(self, _block: nn.Module, _args: tuple) -> None:
        """Forward pre-hook of the MoE block: attention (and the norm) ended here; router, shared expert and gates
        count as gate time."""
        self._block_start = _clock()

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        fm = self._owner()
        assert fm is not None
        tm = fm.timings[-1] if fm.timings else None
        t0 = _clock()
        if tm is not None and self._block_start:
            tm.attention_ns += self._block_start - fm._attn_start
            tm.gate_ns += t0 - self._block_start
        self._block_start = 0
        fm.reader.poll()  # attention is over: note whether the prefetch already completed
        pred, self._pred = self._pred, None
        experts = sorted({int(e) for e in top_k_index.reshape(-1).tolist()})  # the model's loop order
        first = pred[0] if pred is not None and pred[0] in experts else None
        order = ([first] if first is not None else []) + [e for e in experts if e != first]
        outs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        n_active = 0
        for e in order:
            hit = top_k_index == e
            tok = hit.any(dim=-1).nonzero().squeeze(1)
            # The router weight of e per token, as the in-memory sparse model forms it (0 where not routed).
            w_e = (top_k_weights * hit.to(top_k_weights.dtype)).sum(dim=-1)[tok]
            rows, ids = self._expert(fm, e, x[tok], w_e, tm)
            n_active += sum(i.size for i in ids)
            if pred is not None and e == pred[0]:
                fm._pred_stats[2] += np.intersect1d(pred[1], ids[0], assume_unique=True).size
            outs[e] = (tok, rows)
        if pred is not None:
            fm._pred_stats[0] += pred[1].size
            fm._pred_stats[1] += n_active
        y = torch.zeros_like(x)
        for e in experts:  # ascending expert order, as the model's own loop and the sparse model add them
            tok, rows = outs[e]
            y.index_add_(0, tok, rows.to(y.dtype))
        return y

    def _expert(self, fm: Any, e: int, xe: torch.Tensor, w_e: torch.Tensor,
                tm: Any) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Expert e on its routed rows ``xe`` (one fetch per row): the outputs times the router weights, and the
        active neurons of every row."""
        unit = self.units[e]
        d = self.d
        outs = []
        active: list[np.ndarray] = []
        for j in range(xe.shape[0]):
            g0 = _clock()
            x_j = xe[j : j + 1]
            a = self.act_fn(F.linear(x_j, self.gates[e]))
            keep = fm._mask(unit, a)
            am = a * keep.to(a.dtype)
            ids = np.flatnonzero(keep[0].numpy())
            active.append(ids)
            f0 = _clock()
            raw = fm.reader.fetch_raw(unit, ids)
            f1 = _clock()
            wb = torch.from_numpy(raw).float()  # exact widening of fp16 bundles (one vectorised cast)
            sel = torch.from_numpy(ids)
            if fm.exact:
                up, down = self._up[e], self._down[e]
                up.index_copy_(0, sel, wb[:, 0, :d])
                down[:, sel] = wb[:, -1, :d].t()
                out = F.linear(am * F.linear(x_j, up), down) * w_e[j : j + 1, None]
            else:
                h = am[0].index_select(0, sel) * torch.mv(wb[:, 0, :d], x_j[0])
                out = ((h @ wb[:, -1, :d]) * w_e[j]).reshape(1, d)
            outs.append(out)
            if tm is not None:
                tm.gate_ns += f0 - g0
                tm.fetch_ns += f1 - f0
                tm.ffn_ns += _clock() - f1
        return (torch.cat(outs) if len(outs) > 1 else outs[0]), active


def stream_moe_layer(owner: Any, i: int, layer: nn.Module, units: dict[int, int],
                     align: dict[str, int]) -> StreamedExperts:
    """Replace decoder layer ``i``'s experts module by a :class:`StreamedExperts` (the router, a shared expert and
    the block's own forward stay); ``units[e]`` is expert e's pack unit."""
    fam = owner.family
    block = fam.moe_block(layer)
    streamed = StreamedExperts(owner, i, block, units, align)
    setattr(block, fam.experts, streamed)
    owner._hooks.append(block.register_forward_pre_hook(streamed.block_entry))
    return streamed


__all__ = ["PREFETCH_SCOPE", "StreamedExperts", "stream_moe_layer", "expert_alignments", "streamed_expert_weights"]
