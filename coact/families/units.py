"""Placement units of a loaded model: one per dense FFN layer, one per expert of a mixture-of-experts layer.

Why units: the flash side places, packs and reads neurons of one FFN at a time. For a dense model that FFN is a
decoder layer; in a mixture-of-experts layer every expert is its own FFN (its own neurons, weights and routing),
so the unit is ``(layer, expert)`` (:class:`runtime.layout.Unit`), and units may have different widths (an MoE
stack with dense layers mixed in, or dense layers of different widths). A :class:`coact.models.ModelHandle` whose
FFNs are all dense and equally wide has ``units = None`` and behaves as before; otherwise its ``units`` list them
and every per-"layer" method of the handle (``n_layers``, ``ffn_weights``, ``permute_ffn``, ``act_hooks``) is
per unit, so capture, statistics, solvers, packs and replay work on units without knowing about experts.

:func:`unit_hooks` is the one hook point: ``fn(unit, a)`` sees the activation that decides sparsity of every unit
(for an expert: ``act(gate_e(x))`` on all tokens of the forward, exactly 0 on tokens the router did not send to
it) and may return a replacement (the sparse model masks it); for an expert unit the block's output is then
recomputed from the replaced activations of the routed tokens (:mod:`coact.families.moe`).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from common.perm import check_permutation
from coact.errors import ModelError
from runtime.layout import Unit

ActFn = Callable[[int, Any], Any]
RouteFn = Callable[[int, Any], None]


def model_units(adapter: Any, layers: list[Any]) -> list[Unit] | None:
    """The units of a model's decoder ``layers``; None when every layer is one dense FFN of the same width (the
    classic case: unit i = layer i)."""
    units: list[Unit] = []
    for li, layer in enumerate(layers):
        if adapter.moe_block(layer) is None:
            units.append(Unit(li, None, int(adapter.n_neurons(layer))))
        else:
            width = adapter.expert_width(layer)
            units.extend(Unit(li, e, width) for e in range(adapter.n_experts(layer)))
    if all(u.expert is None for u in units) and len({u.n for u in units}) <= 1:
        return None
    return units


def _unit(handle: Any, u: int) -> tuple[Unit, Any]:
    units = handle.units
    if not 0 <= int(u) < len(units):
        raise ModelError(f"unit {u} out of range ({len(units)} units)")
    unit = units[int(u)]
    return unit, handle.decoder_layers()[unit.layer]


def unit_weights(handle: Any, u: int) -> dict[str, np.ndarray]:
    """float32 weights of unit ``u`` (:meth:`coact.families.base.Family.weights` of its layer, or its expert's)."""
    unit, layer = _unit(handle, u)
    if unit.expert is None:
        return handle.adapter.weights(layer)
    return handle.adapter.expert_weights(layer, unit.expert)


def permute_unit(handle: Any, u: int, perm: np.ndarray) -> None:
    """Permute the neurons of unit ``u`` in place (new neuron p is old neuron ``perm[p]``)."""
    unit, layer = _unit(handle, u)
    what = f"unit {u} (layer {unit.layer}{'' if unit.expert is None else f', expert {unit.expert}'}) permutation"
    p = check_permutation(perm, unit.n, what=what, error=ModelError)
    if unit.expert is None:
        handle.adapter.permute(layer, p)
    else:
        handle.adapter.permute_expert(layer, unit.expert, p)


@contextmanager
def unit_hooks(handle: Any, fn: ActFn, routes: RouteFn | None = None) -> Iterator[None]:
    """Within the block, ``fn(u, a)`` sees the activation ``a`` of every unit ``u`` on every forward (a non-None
    return value replaces it); ``routes(u, mask)`` (optional) receives the bool routing mask of every expert unit.
    A BOS position that :meth:`coact.models.ModelHandle.forward` puts in front of every window is hidden from both
    (its FFN is computed dense). Handles without units: one dense unit per layer."""
    units = handle.units if handle.units is not None else [Unit(li, None, handle.n_neurons)
                                                            for li in range(handle.n_layers)]
    layers = handle.decoder_layers()
    with ExitStack() as stack:
        experts_of: dict[int, dict[int, int]] = {}
        for u, unit in enumerate(units):
            if unit.expert is None:
                mod = handle.adapter.module(layers[unit.layer], "act")
                if not hasattr(mod, "register_forward_hook"):
                    raise ModelError(f"family {handle.family}: the activation {handle.adapter.act!r} is not a module")
                h = mod.register_forward_hook(_dense_hook(handle, u, fn))
                stack.callback(h.remove)
            else:
                experts_of.setdefault(unit.layer, {})[unit.expert] = u
        for li, ids in experts_of.items():
            block = handle.adapter.moe_block(layers[li])
            shape: list[tuple[int, int]] = []
            pre = block.register_forward_pre_hook(lambda _m, args, shape=shape: shape.append(tuple(args[0].shape[:2])))
            stack.callback(pre.remove)
            ex = handle.adapter.experts_module(layers[li])
            h = ex.register_forward_hook(_experts_hook(handle, layers[li], ids, shape, fn, routes), with_kwargs=True)
            stack.callback(h.remove)
        yield


def _dense_hook(handle: Any, u: int, fn: ActFn) -> Callable[..., Any]:
    def hook(_mod: Any, _inp: Any, out: Any) -> Any:
        if handle._bos_shape is None:
            return fn(u, out)
        import torch

        a = out.reshape(*handle._bos_shape, out.shape[-1])  # [B, 1 + T, N]: BOS first
        res = fn(u, a[:, 1:])
        return None if res is None else torch.cat([a[:, :1], res], dim=1).reshape(out.shape)

    return hook


def _experts_hook(handle: Any, layer: Any, ids: dict[int, int], shape: list[tuple[int, int]], fn: ActFn,
                  routes: RouteFn | None) -> Callable[..., Any]:
    """Forward hook of an experts module ``(x [R, d], top_k_index [R, k], top_k_weights [R, k]) -> y [R, d]``."""
    adapter = handle.adapter

    def hook(mod: Any, args: Any, kwargs: dict[str, Any], _out: Any) -> Any:
        import torch
        import torch.nn.functional as F

        names = ("hidden_states", "top_k_index", "top_k_weights")  # positional in transformers 5.x, names as fallback
        x, top_idx, top_w = (*args, *(kwargs[k] for k in names[len(args):]))[:3]
        rows = x.shape[0]
        b, s = shape.pop() if shape else (1, rows)
        gu = getattr(mod, adapter.expert_gate_up)
        down = getattr(mod, adapter.expert_down)
        act = getattr(mod, adapter.expert_activation)
        n = gu.shape[1] // 2
        bos = handle._bos_shape is not None
        results = []
        replaced = False
        for e in sorted(ids):
            u = ids[e]
            hit = (top_idx == e)  # [R, k]
            routed = hit.any(dim=-1)
            tok = routed.nonzero().squeeze(1)
            gate = up = None
            a = x.new_zeros(rows, n)
            if tok.numel():
                gate, up = F.linear(x[tok], gu[e]).chunk(2, dim=-1)  # the model's own formula
                a[tok] = act(gate)
            a3 = a.reshape(b, s, n)
            r3 = routed.reshape(b, s)
            if routes is not None:
                routes(u, (r3[:, 1:] if bos else r3).reshape(-1))
            res = fn(u, a3[:, 1:] if bos else a3)
            if res is not None:
                replaced = True
                a = (torch.cat([a3[:, :1], res], dim=1) if bos else res).reshape(rows, n)
            w = (top_w * hit.to(top_w.dtype)).sum(dim=-1)  # the router weight of e per token (0 if not routed)
            results.append((e, tok, a, up, w))
        if not replaced:
            return None
        y = torch.zeros_like(x)
        for e, tok, a, up, w in results:
            if tok.numel():
                h = F.linear(a[tok] * up, down[e]) * w[tok, None]
                y.index_add_(0, tok, h.to(y.dtype))
        return y

    return hook
