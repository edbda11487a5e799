"""Accuracy of a sparsified model: teacher-forced perplexity on held-out text, dense vs sparse.

Why: a placement only matters for a model that still works. At SmolLM2's 90 % CATS setting perplexity goes from
~50 to ~11,800 (docs/DESIGN.md §2, "accuracy"), so every speed or run-length figure must name the perplexity of the
model it was measured on. This module measures it the same way everywhere:

- **Windows.** Tokens ``[start, start + tokens)`` of the corpus stream are cut into consecutive windows of ``ctx``
  tokens (:func:`coact.corpus.token_windows`, the same windows a trace uses); each window is an independent
  sequence. Within a window, every token after the first is predicted from the ones before it (teacher forcing),
  so a window of ``c`` tokens contributes ``c - 1`` predictions.
- **Perplexity** = exp(mean negative log-likelihood over all predictions of all windows), in float64.
- **Sparse model.** A forward hook on each layer's activation module replaces ``a = act(gate(x))`` by
  ``a * mask``, with ``mask = sparsifier.mask(layer, a)``: exactly the neurons a trace records as active contribute
  ``a_i * up_i(x) * down[:, i]``; the others contribute nothing (as in CATS, Lee et al. 2024).
- **Calibration** of thresholds (CATS) happens on tokens that are *not* evaluated: the caller passes calibrated
  thresholds (e.g. those of a profiling trace) or calibration windows that do not overlap the evaluated range.
- **Units** (mixture-of-experts, :mod:`coact.families.units`): every per-"layer" list here is per placement unit
  (a dense layer, or one (layer, expert)), as the model handle's. Calibration samples of an expert unit are its
  activations on the tokens routed to it (:func:`calibration_activations`, the same samples capture calibrates
  on), so a quantile is a sparsity among the tokens the expert computes; the achieved sparsity of an expert unit
  is over all tokens (a token not routed to it counts as inactive there, as in a trace). Operating points are
  allocated per *decoder layer* (:func:`unit_groups`): all units of a layer share one sparsity level, each with
  its own threshold (see the operating-point section).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from coact.corpus import token_windows
from coact.families.units import unit_hooks
from coact.models import ModelHandle
from coact.sparsify import Sparsifier
from coact.trace import forward_activations, routed_samples
from common.progress import ProgressFn, tracked


@dataclass
class Perplexity:
    """Teacher-forced perplexity of one model setting on one token range."""

    ppl: float
    nll: float
    n_predicted: int
    n_tokens: int
    ctx: int
    token_start: int
    achieved_sparsity: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def sparsified(handle: ModelHandle, sparsifier: Sparsifier | None) -> Iterator[list[list[float]]]:
    """Within the block, the model's FFNs compute with only the neurons ``sparsifier`` keeps (None: dense).

    Yields per-unit running sums ``[kept, total]`` of the mask, from which the achieved sparsity follows (an expert
    unit's neurons count as kept only on the tokens routed to it, as a trace records them).
    """
    counts = [[0.0, 0.0] for _ in range(handle.n_layers)]
    if sparsifier is None:
        yield counts
        return
    routed: dict[int, torch.Tensor] = {}  # the routing mask of the current forward, per expert unit

    def mask(layer: int, out: torch.Tensor) -> torch.Tensor:
        keep = sparsifier.mask(layer, out)
        r = routed.pop(layer, None)
        kept = keep if r is None else keep & r.reshape(*keep.shape[:-1], 1)
        counts[layer][0] += float(kept.sum())
        counts[layer][1] += float(keep.numel())
        return out * keep.to(out.dtype)

    def route(u: int, r: torch.Tensor) -> None:
        routed[u] = r

    with unit_hooks(handle, mask, routes=route) if getattr(handle, "units", None) is not None \
            else handle.act_hooks(mask):
        yield counts


def perplexity(handle: ModelHandle, stream: np.ndarray, *, start: int, tokens: int, ctx: int = 256,
               sparsifier: Sparsifier | None = None, batch: int = 4,
               progress: ProgressFn | None = None) -> Perplexity:
    """Perplexity of tokens ``[start, start + tokens)`` of ``stream`` (see the module docstring for the windows).

    ``sparsifier`` must already be calibrated (None: the dense model).
    """
    windows = token_windows(stream, int(start), int(tokens), int(ctx))
    if hasattr(handle, "check_inputs"):  # one line instead of an index error: --ctx within the position table
        handle.check_inputs(ctx=min(int(ctx), int(tokens)))  # the longest window
    if sparsifier is not None and sparsifier.needs_calibration:
        raise ValueError("calibrate the sparsifier before measuring perplexity")
    groups: list[list[np.ndarray]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch and len(groups[-1][0]) == len(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    nll_sum, n_pred = 0.0, 0
    with sparsified(handle, sparsifier) as counts, torch.inference_mode():
        for g in tracked(groups, progress, "perplexity"):
            if len(g[0]) < 2:
                continue
            x = torch.as_tensor(np.stack(g), dtype=torch.long)
            logits = handle.forward(x).logits[:, :-1, :].double()  # with BOS in front when the model expects it
            logp = torch.log_softmax(logits, dim=-1)
            tgt = x[:, 1:]
            nll_sum += float(-logp.gather(-1, tgt.unsqueeze(-1)).sum())
            n_pred += int(tgt.numel())
    if n_pred == 0:
        raise ValueError("no token to predict: every window has fewer than 2 tokens")
    nll = nll_sum / n_pred
    achieved = None if sparsifier is None else [1.0 - k / t if t else 0.0 for k, t in counts]
    return Perplexity(ppl=float(np.exp(nll)), nll=nll, n_predicted=n_pred, n_tokens=int(tokens), ctx=int(ctx),
                      token_start=int(start), achieved_sparsity=achieved)


# ------------------------------------------------------------------------------------------- operating points
#
# Why per-layer sparsity: layers differ a lot in how much masking their FFN costs (the first layers and the last
# ones are usually the most sensitive), so one uniform sparsity wastes the accuracy budget on the sensitive layers.
# We measure each layer's sensitivity alone (only that layer sparsified, the others dense), assume the costs add up
# (log-perplexity increases are roughly additive for small perturbations), allocate per-layer sparsities that
# maximise the mean sparsity within the budget (a Lagrangian relaxation of a multiple-choice knapsack), and then
# correct for the interactions the additive model misses by rescaling the budget against the perplexity measured
# with all layers sparsified at once. Every measurement uses *validation* tokens that are neither calibration nor
# evaluation tokens.
#
# Mixture-of-experts: the allocation is per *decoder layer* (a group of units, :func:`unit_groups`), not per
# expert: sparsifying one expert alone touches only the tokens routed to it, so a per-expert sensitivity would cost
# E times more forward passes for a weaker signal, and experts of one layer see the same input distribution. All
# experts of a layer get the layer's sparsity level, each its own threshold (the level's quantile of its routed
# calibration activations), so every expert drops the same fraction of what it computes.

#: Sparsity levels at which layer sensitivity is measured (0 is implicit: no cost).
SENSITIVITY_LEVELS = (0.3, 0.5, 0.7, 0.85, 0.95)
_GRID = np.round(np.arange(0.0, 0.96, 0.01), 2)


class _Thresholded:
    """|a| > threshold per unit; a unit with threshold None is dense. The sparsifier that
    :func:`sensitivity` and :func:`allocate` evaluate (quantiles of calibration activations, like CATS)."""

    needs_calibration = False

    def __init__(self, thresholds: list[float | None]) -> None:
        self.thresholds = thresholds

    def mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        t = self.thresholds[layer]
        return torch.ones_like(a, dtype=torch.bool) if t is None else a.abs() > t


def calibration_activations(handle: ModelHandle, windows: list[np.ndarray]) -> list[torch.Tensor]:
    """Per unit the calibration samples [T_u, N_u] of ``windows``: every token for a dense unit, the tokens routed
    to the expert for an expert unit (:func:`coact.trace.routed_samples`, exactly what ``coact trace`` calibrates
    CATS on). Every threshold and quantile of this module is taken over these samples."""
    routes: list[torch.Tensor | None] = []
    acts = forward_activations(handle, windows, routes=routes)
    return routed_samples(acts, routes)


def unit_groups(handle: ModelHandle) -> list[list[int]]:
    """The units of every decoder layer, in layer order: ``[[0], [1], ...]`` for a dense model, the layer's expert
    units (or its one dense unit) for mixture-of-experts models. Operating points allocate one sparsity per group."""
    units = getattr(handle, "units", None)
    if units is None:
        return [[l] for l in range(handle.n_layers)]
    groups: dict[int, list[int]] = {}
    for u, unit in enumerate(units):
        groups.setdefault(int(unit.layer), []).append(u)
    return [groups[k] for k in sorted(groups)]


def _expand(groups: list[list[int]], per_group: Sequence[float], n_units: int) -> list[float]:
    out = [0.0] * n_units
    for g, s in zip(groups, per_group):
        for u in g:
            out[u] = float(s)
    return out


def layer_quantiles(acts: list[torch.Tensor], levels: np.ndarray) -> np.ndarray:
    """[U, len(levels)] thresholds: the ``levels`` quantiles of |a| of each unit's calibration activations."""
    return np.stack([np.quantile(a.abs().float().numpy().ravel(), levels) for a in acts])


def sensitivity(handle: ModelHandle, stream: np.ndarray, quantiles: np.ndarray, levels: Sequence[float], *,
                start: int, tokens: int, ctx: int = 256, layers: Sequence[int] | None = None,
                progress: ProgressFn | None = None) -> tuple[float, np.ndarray]:
    """(dense NLL, [G, len(levels)] NLL increase when only decoder layer g (all its units, :func:`unit_groups`)
    is sparsified at each level) on validation tokens [start, start + tokens). ``quantiles`` [U, levels] are the
    units' thresholds per level. Layers not in ``layers`` get NaN rows (not measured)."""
    groups = unit_groups(handle)
    dense = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx).nll
    out = np.full((len(groups), len(levels)), np.nan)
    todo = [(g, j) for g in (range(len(groups)) if layers is None else layers) for j in range(len(levels))]
    for g, j in tracked(todo, progress, "layer sensitivity"):
        thr: list[float | None] = [None] * handle.n_layers
        for u in groups[g]:
            thr[u] = float(quantiles[u, j])
        out[g, j] = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx,
                               sparsifier=_Thresholded(thr)).nll - dense
    return dense, out


def output_error_sensitivity(handle: ModelHandle, windows: list[np.ndarray], quantiles: np.ndarray, *,
                             batch: int = 4, progress: ProgressFn | None = None) -> np.ndarray:
    """A cheap proxy of :func:`sensitivity` from ONE dense forward: [U, levels] relative error that masking unit u
    at each level adds to the residual stream, ``sum ||down[:, dropped] (w a * u)[dropped]||^2 / sum ||h||^2`` over
    the tokens of ``windows`` (``h``: the hidden state entering the unit's decoder layer; ``u = up(x)`` for gated
    FFNs, 1 for plain ones; ``w``: the router weight of an expert for the token, 1 for dense units). Sum the rows
    of a decoder layer's units for its group (:func:`unit_groups`).

    Why a proxy: measuring the perplexity cost of every (layer, level) takes L x levels forward passes (minutes on
    two cores); the output error needs one. It ranks layers the way the true cost does when the error of a layer
    propagates alike through the rest of the network; :func:`allocated_operating_point` corrects the overall scale
    against the measured perplexity, so only the ranking matters.
    """
    units = handle.units if getattr(handle, "units", None) is not None else \
        [None] * handle.n_layers  # None: unit l is dense decoder layer l
    U, K = quantiles.shape
    err = np.zeros((U, K))
    layers = handle.decoder_layers()
    layer_of = [u if unit is None else int(unit.layer) for u, unit in enumerate(units)]
    norm = np.zeros(len(layers))
    weights = [handle.ffn_weights(u) for u in range(U)]
    up = [torch.from_numpy(w["up"]) for w in weights] if handle.gated else None
    down = [torch.from_numpy(w["down"]) for w in weights]
    x_in: dict[int, torch.Tensor] = {}
    w_in: dict[int, torch.Tensor] = {}  # MoE layers: router weight per (row, expert), 0 where not routed
    hooks = []

    def pre_layer(_m: Any, args: Any, kwargs: Any = None, li: int = 0) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        norm[li] += float((h.float() ** 2).sum())

    def pre_ffn(_m: Any, args: Any, li: int = 0) -> None:
        x_in[li] = args[0].detach().reshape(-1, args[0].shape[-1]).float()

    def pre_experts(_m: Any, args: Any, kwargs: Any, li: int = 0) -> None:
        names = ("hidden_states", "top_k_index", "top_k_weights")  # as coact.families.units reads them
        x, idx, w = (*args, *(kwargs[k] for k in names[len(args):]))[:3]
        x_in[li] = x.detach().reshape(-1, x.shape[-1]).float()
        dense_w = torch.zeros(idx.shape[0], handle.adapter.n_experts(layers[li]))
        w_in[li] = dense_w.scatter_add_(1, idx.long(), w.detach().float())

    for li in sorted(set(layer_of)):
        hooks.append(layers[li].register_forward_pre_hook(lambda m, a, k, li=li: pre_layer(m, a, k, li),
                                                          with_kwargs=True))
        moe = getattr(handle.adapter, "moe_block", None)
        if moe is not None and moe(layers[li]) is not None:
            ex = handle.adapter.experts_module(layers[li])
            hooks.append(ex.register_forward_pre_hook(lambda m, a, k, li=li: pre_experts(m, a, k, li),
                                                      with_kwargs=True))
        else:
            hooks.append(handle.adapter.input_module(layers[li]).register_forward_pre_hook(
                lambda m, a, li=li: pre_ffn(m, a, li)))

    def rows(t: torch.Tensor, n: int) -> torch.Tensor:
        """``t`` [R, .] cut to the ``n`` rows the activation hooks see (a BOS in front of every window, put there
        by ModelHandle.forward, is not in ``a``)."""
        if t.shape[0] == n:
            return t
        return t.reshape(t.shape[0] - n, -1, t.shape[-1])[:, 1:].reshape(-1, t.shape[-1])

    def on_act(u: int, a: torch.Tensor) -> None:
        a2 = a.detach().reshape(-1, a.shape[-1]).float()
        li = layer_of[u]
        x = rows(x_in[li], a2.shape[0])
        contrib = a2 * (x @ up[u].T) if up is not None else a2
        unit = units[u]
        if unit is not None and unit.expert is not None:  # the block scales expert e's output by its router weight
            w = rows(w_in[li], a2.shape[0])
            contrib = contrib * w[:, unit.expert : unit.expert + 1]
        mag = a2.abs()
        for k in range(K):
            dropped = contrib * (mag <= float(quantiles[u, k]))
            err[u, k] += float(((dropped @ down[u].T) ** 2).sum())

    try:
        with handle.act_hooks(on_act), torch.inference_mode():
            for i in tracked(range(0, len(windows), batch), progress, "layer output error"):
                group = [w for w in windows[i : i + batch] if len(w) == len(windows[i])]
                handle.forward(torch.as_tensor(np.stack(group), dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return err / np.maximum(norm[layer_of], 1e-30)[:, None]


def allocate(sens: np.ndarray, levels: Sequence[float], budget_nll: float) -> np.ndarray:
    """Per-layer sparsities (on a 0.01 grid) maximising their mean subject to sum_l cost_l(s_l) <= budget_nll, with
    cost_l the measured sensitivity interpolated linearly (through (0, 0)) and made non-decreasing."""
    lv = np.concatenate([[0.0], np.asarray(levels, dtype=float)])
    costs = []
    for row in sens:
        y = np.maximum.accumulate(np.maximum(np.concatenate([[0.0], np.nan_to_num(row, nan=np.inf)]), 0.0))
        costs.append(np.interp(_GRID, lv, y, right=np.inf))
    c = np.array(costs)  # [L, grid]

    def pick(lam: float) -> np.ndarray:
        return np.argmax(_GRID[None, :] - lam * c, axis=1)

    lo, hi = 0.0, 1e6
    for _ in range(100):  # bisection on the multiplier: larger lam, cheaper choices
        mid = (lo + hi) / 2
        idx = pick(mid)
        if c[np.arange(len(c)), idx].sum() <= budget_nll:
            hi = mid
        else:
            lo = mid
    return _GRID[pick(hi)]


def thresholds_for(acts: list[torch.Tensor], sparsity: Sequence[float]) -> list[float]:
    """Per-unit CATS thresholds: the quantile ``sparsity[u]`` of |a| of unit u's calibration activations."""
    return [float(np.quantile(a.abs().float().numpy().ravel(), s)) if s > 0 else -1.0
            for a, s in zip(acts, sparsity)]


@dataclass
class OperatingPoint:
    """Per-unit sparsities and CATS thresholds chosen to stay within a perplexity budget (one unit per layer for
    dense models; an expert unit's sparsity is among the tokens routed to it)."""

    budget: float
    sparsity: list[float]
    thresholds: list[float]
    validation_ppl_dense: float
    validation_ppl: float
    method: str

    @property
    def mean_sparsity(self) -> float:
        return float(np.mean(self.sparsity))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_sparsity": self.mean_sparsity}


def _check_acts(handle: ModelHandle, acts: list[torch.Tensor]) -> None:
    if len(acts) != handle.n_layers:
        raise ValueError(f"{len(acts)} calibration samples for {handle.n_layers} units: use "
                         "calibration_activations(handle, windows)")


def uniform_operating_point(handle: ModelHandle, stream: np.ndarray, acts: list[torch.Tensor], budget: float, *,
                            start: int, tokens: int, ctx: int = 256, steps: int = 8,
                            progress: ProgressFn | None = None) -> OperatingPoint:
    """The largest uniform CATS sparsity whose validation perplexity stays within ``budget`` (bisection).
    ``acts``: :func:`calibration_activations` (per unit, routed tokens only for experts)."""
    _check_acts(handle, acts)
    dense = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx).ppl
    lo, hi, best = 0.0, 0.95, (0.0, dense)
    for _ in tracked(range(steps), progress, "uniform sparsity search"):
        mid = (lo + hi) / 2
        sp = [mid] * handle.n_layers
        ppl = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx,
                         sparsifier=_Thresholded(thresholds_for(acts, sp))).ppl
        if ppl <= dense * (1 + budget):
            lo, best = mid, (mid, ppl)
        else:
            hi = mid
    sp = [round(best[0], 4)] * handle.n_layers
    return OperatingPoint(budget, sp, thresholds_for(acts, sp), dense, best[1], "uniform")


def allocated_operating_point(handle: ModelHandle, stream: np.ndarray, acts: list[torch.Tensor], budget: float, *,
                              start: int, tokens: int, ctx: int = 256, levels: Sequence[float] = SENSITIVITY_LEVELS,
                              rounds: int = 8, sens: np.ndarray | None = None, proxy: bool = False,
                              calib_windows: list[np.ndarray] | None = None,
                              progress: ProgressFn | None = None) -> tuple[OperatingPoint, np.ndarray]:
    """Per-layer sparsities allocated by layer sensitivity within ``budget`` (see the section comment).

    ``acts``: :func:`calibration_activations`. ``proxy``: sensitivity is the output error of
    :func:`output_error_sensitivity` on ``calib_windows`` (one forward pass), summed over each layer's units;
    otherwise the measured perplexity cost of :func:`sensitivity` (layers x levels forward passes). Either way the
    scale is then searched (bisection in log space, ``rounds`` validation runs) against the perplexity measured with
    every layer sparsified at once, so the result is within budget on the validation tokens. Returns the operating
    point (per unit) and the [decoder layers, levels] sensitivity matrix (reusable via ``sens``)."""
    _check_acts(handle, acts)
    groups = unit_groups(handle)
    quant = layer_quantiles(acts, np.asarray(levels))
    dense_ppl = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx).ppl
    if sens is not None:
        s = sens
    elif proxy:
        if calib_windows is None:
            raise ValueError("the proxy sensitivity needs the calibration windows")
        per_unit = output_error_sensitivity(handle, calib_windows, quant, progress=progress)
        s = np.stack([per_unit[g].sum(axis=0) for g in groups])
    else:
        s = sensitivity(handle, stream, quant, levels, start=start, tokens=tokens, ctx=ctx, progress=progress)[1]
    if s.shape[0] != len(groups):
        raise ValueError(f"sensitivity has {s.shape[0]} rows for {len(groups)} decoder layers")

    def per_unit_sparsity(b: float) -> list[float]:
        return _expand(groups, allocate(s, levels, b), handle.n_layers)

    target = float(np.log1p(budget))
    lo, hi = float(np.nanmin(s[s > 0])) * 1e-3 if np.any(s > 0) else 1e-9, float(np.nansum(s)) + 1.0
    best: tuple[list[float], float] | None = None
    for _ in tracked(range(rounds), progress, "allocation scale search"):
        b = float(np.sqrt(lo * hi))
        sp = per_unit_sparsity(b)
        ppl = perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx,
                         sparsifier=_Thresholded(thresholds_for(acts, sp))).ppl
        real = float(np.log(ppl / dense_ppl))
        if real <= target:
            lo = b
            if best is None or np.mean(sp) > np.mean(best[0]):
                best = (sp, ppl)
        else:
            hi = b
    if best is None:  # never within budget: fall back to the most conservative allocation tried
        sp = per_unit_sparsity(lo)
        best = (sp, perplexity(handle, stream, start=start, tokens=tokens, ctx=ctx,
                               sparsifier=_Thresholded(thresholds_for(acts, sp))).ppl)
    sp = [float(x) for x in best[0]]
    return OperatingPoint(budget, sp, thresholds_for(acts, sp), dense_ppl, best[1], "allocated"), s
