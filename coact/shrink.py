"""Statistics that combine and shrink: weighted domain mixtures, shrinkage toward independence, held-out choice of
the shrinkage strength and of the domain weights (worst domain first).

Why: a placement is only as good as its statistics on the text it will meet, and users deploy on text nobody
profiled (issue 13). Three tools, all on the per-layer co-activation counts of :mod:`coact.stats`:

- **Weighted mixtures.** Counts of different domains are made comparable as probabilities (``c_ij / T_d``) and
  averaged with weights ``w_d`` (summing to 1): ``p_ij = sum_d w_d c_ij^(d) / T_d``. Unweighted merging (the plain
  sum of counts) would let the domain profiled longest dominate.
- **Shrinkage toward the product of marginals.** With few tokens, rare pairs are noisy and pairs never seen count
  as zero. Shrinking toward the independence prior ``p_i p_j`` (the co-activation rate of two neurons that fire
  independently at their own rates) gives::

      p'_ij = (p_ij + a * p_i * p_j) / (1 + a)          (counts: c'_ij = (c_ij + a f_i f_j / T) / (1 + a))

  ``a = 0`` is no shrinkage; large ``a`` orders pairs by how hot both neurons are (a frequency-like placement). The
  marginals ``p_i`` are left unchanged (the diagonal of the prior is p_i itself, not p_i^2), so the objective's
  ``sum |A|`` term is unchanged. The prior has every pair, so a shrunk layer is a dense graph (N^2/2 edges).
- **Held-out choices.** :func:`choose_alpha` picks ``a`` by the mean run length (or the pair log-likelihood) on a
  validation part of the *profiling* tokens; :func:`worst_case_weights` searches a simplex grid of domain weights,
  and :func:`maxmin_weights` the continuous simplex by coordinate ascent, for the weights whose *worst* validation
  domain (relative to that domain's own in-domain layout) is best (issue 13: "the worst held-out domain, not the
  average").
- **`coact solve --shrink STRENGTH|auto`.** :class:`ShrunkStats` presents shrunk counts to the unchanged solve path
  (:func:`coact.workflow.solve_layouts`); :func:`solve_shrunk` chooses the strength on a validation trace
  (:func:`choose_strength`) when asked for ``auto``.

Solvers take integer counts (:class:`solvers.graph.CoactGraph`), so :func:`to_graph` scales the real-valued
weights to counts in units of ``1 / resolution`` token (default 1/1000) and rounds: a relative rounding error below
1e-3 on every pair seen at least once, and ripple-like solvers only use the order of the weights.

:func:`merge_stats` (``coact stats-merge``) combines saved statistics with :func:`coact.stats.merge`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from coact import stats as stats_mod
from coact.errors import CoactError
from coact.trace import Trace
from coact.workflow import require, solve_layouts
from common.bits import unpack_bits
from solvers import get_solver
from solvers.graph import CoactGraph

__all__ = ["LayerCounts", "mixture", "shrink", "to_graph", "run_stats", "mean_run_length", "pair_loglik",
           "choose_alpha", "simplex_grid", "stats_layer_counts", "worst_case_weights", "maxmin_weights", "merge_stats",
           "shrunk_graphs",
           "layer_counts", "ShrunkStats", "choose_strength", "parse_strength", "solve_shrunk", "ALPHAS"]

#: Default resolution of :func:`to_graph`: weights are counts in thousandths of a token.
RESOLUTION = 1000
#: Shrinkage strengths tried by ``coact solve --shrink auto`` (0 = none; 1 = half data, half prior).
ALPHAS = (0.0, 0.1, 0.3, 1.0)


class ShrinkError(CoactError):
    """Bad weights, shrinkage strength or inputs of different shapes."""


@dataclass
class LayerCounts:
    """One layer's statistics as real-valued counts: ``coact`` [N, N] symmetric with the diagonal = ``freq``,
    ``n_tokens`` tokens (real-valued after mixing: the reference token count)."""

    coact: np.ndarray
    freq: np.ndarray
    n_tokens: float


def layer_counts(packed: np.ndarray, n_neurons: int) -> LayerCounts:
    """Exact counts of one layer from bit-packed active sets uint8 [T, nb] (BLAS syrk through float32: exact below
    2^24 tokens)."""
    x = np.ascontiguousarray(unpack_bits(packed, n_neurons), dtype=np.float32)
    c = (x.T @ x).astype(np.float64)
    return LayerCounts(c, np.diagonal(c).copy(), float(x.shape[0]))


def stats_layer_counts(stats: Any, layer: int) -> LayerCounts:
    """Layer ``layer`` of saved dense statistics (:class:`coact.stats.CoactStats`) as real-valued
    :class:`LayerCounts`, the form shrinkage and mixtures work in."""
    f, c, T = stats.layer(layer)
    return LayerCounts(np.asarray(c, dtype=np.float64), np.asarray(f, dtype=np.float64), float(T))


def check_weights(weights: Sequence[float], n: int) -> np.ndarray:
    """Weights as a float array summing to 1 (given ones are normalised); refuse negatives, all-zero, wrong length."""
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise ShrinkError(f"{len(w)} weights for {n} statistics")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ShrinkError(f"weights must be >= 0 and not all zero, got {list(weights)}")
    return w / w.sum()


def mixture(parts: Sequence[LayerCounts], weights: Sequence[float] | None = None) -> LayerCounts:
    """``sum_d w_d * counts_d / T_d`` scaled back to the total tokens (so equal weights on equal token counts give
    the plain sum). ``weights=None``: proportional to the token counts (the plain sum of counts)."""
    if not parts:
        raise ShrinkError("a mixture needs at least one part")
    T = np.array([p.n_tokens for p in parts], dtype=np.float64)
    if np.any(T <= 0):
        raise ShrinkError("every part needs at least one token")
    w = T / T.sum() if weights is None else check_weights(weights, len(parts))
    total = float(T.sum())
    coact = sum((wd * total / td) * p.coact for wd, td, p in zip(w, T, parts))
    freq = sum((wd * total / td) * p.freq for wd, td, p in zip(w, T, parts))
    return LayerCounts(np.asarray(coact, dtype=np.float64), np.asarray(freq, dtype=np.float64), total)


def shrink(lc: LayerCounts, alpha: float) -> LayerCounts:
    """``c'_ij = (c_ij + alpha * f_i f_j / T) / (1 + alpha)`` off the diagonal; the diagonal (freq) unchanged."""
    a = float(alpha)
    if not a >= 0:
        raise ShrinkError(f"shrinkage strength must be >= 0, got {alpha}")
    if a == 0:
        return lc
    f = lc.freq.astype(np.float64)
    out = (lc.coact + a * np.outer(f, f) / lc.n_tokens) / (1.0 + a)
    np.fill_diagonal(out, f)
    return LayerCounts(out, f.copy(), lc.n_tokens)


def to_graph(lc: LayerCounts, resolution: int = RESOLUTION, meta: dict[str, Any] | None = None) -> CoactGraph:
    """The integer :class:`CoactGraph` the solvers consume: counts in units of ``1/resolution`` token, rounded."""
    c = np.rint(lc.coact * resolution)
    np.fill_diagonal(c, 0)
    m = sp.csr_array(c.astype(np.int64))
    freq = np.rint(lc.freq * resolution).astype(np.int64)
    return CoactGraph(counts=m, freq=freq, n_tokens=int(round(lc.n_tokens * resolution)),
                      meta={"resolution": int(resolution), **(meta or {})})


# ------------------------------------------------------------------------------------------------ held-out metrics
def run_stats(perm: np.ndarray, packed: np.ndarray, n_neurons: int) -> tuple[int, int]:
    """(loaded, runs) of one layer's active sets (uint8 [T, nb]) under placement ``perm`` (no cache, no collapse):
    the mean run length is loaded / runs (docs/DESIGN.md §2)."""
    a = unpack_bits(packed, n_neurons)[:, np.asarray(perm)]
    loaded = int(a.sum())
    runs = int(a[:, 0].sum()) + int((a[:, 1:] & ~a[:, :-1]).sum())
    return loaded, runs


def mean_run_length(perm: np.ndarray, packed: np.ndarray, n_neurons: int) -> float:
    loaded, runs = run_stats(perm, packed, n_neurons)
    return loaded / runs if runs else 0.0


def pair_loglik(lc: LayerCounts, val: LayerCounts, eps: float = 1e-9) -> float:
    """Mean per-token Bernoulli log-likelihood of the validation pairs under the pair rates of ``lc``
    (``p_ij = c_ij / T``), over pairs i < j: a solver-free criterion for the shrinkage strength."""
    p = np.clip(lc.coact / lc.n_tokens, eps, 1 - eps)
    iu = np.triu_indices(p.shape[0], 1)
    v, pv = val.coact[iu], p[iu]
    return float((v * np.log(pv) + (val.n_tokens - v) * np.log1p(-pv)).sum() / val.n_tokens)


def choose_alpha(
    train: Sequence[LayerCounts],
    val_packed: Sequence[np.ndarray],
    alphas: Iterable[float],
    solve: Callable[[CoactGraph], np.ndarray],
    *,
    criterion: str = "runs",
) -> tuple[float, dict[float, float]]:
    """The shrinkage strength with the best validation score, and every score.

    ``train[l]``: the counts of layer l on the profiling part minus the validation tokens; ``val_packed[l]``: the
    validation tokens' active sets of that layer (uint8 [T, nb]). ``criterion="runs"``: solve each layer with
    ``solve`` and score the pooled mean run length on the validation tokens; ``"loglik"``: the pair
    log-likelihood (no solve). Ties go to the smaller alpha (less change to the data).
    """
    if criterion not in ("runs", "loglik"):
        raise ShrinkError(f"unknown criterion {criterion!r}; choose 'runs' or 'loglik'")
    if len(train) != len(val_packed):
        raise ShrinkError("one validation array per training layer")
    scores: dict[float, float] = {}
    for a in sorted({float(x) for x in alphas}):
        if criterion == "runs":
            lo = ru = 0
            for lc, vp in zip(train, val_packed):
                l_, r_ = run_stats(solve(to_graph(shrink(lc, a))), vp, lc.freq.shape[0])
                lo, ru = lo + l_, ru + r_
            scores[a] = lo / ru if ru else 0.0
        else:
            scores[a] = float(np.mean([pair_loglik(shrink(lc, a), layer_counts(vp, lc.freq.shape[0]))
                                       for lc, vp in zip(train, val_packed)]))
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """All weight vectors of ``n`` non-negative multiples of ``step`` summing to 1 (e.g. n=4, step=0.25: 35)."""
    k = int(round(1.0 / step))
    if k < 1 or abs(k * step - 1.0) > 1e-9:
        raise ShrinkError(f"step must divide 1, got {step}")
    out = []
    for cuts in itertools.combinations(range(k + n - 1), n - 1):
        parts, prev = [], -1
        for c in cuts + (k + n - 1,):
            parts.append(c - prev - 1)
            prev = c
        out.append(tuple(p / k for p in parts))
    return out


def worst_case_weights(
    score: Callable[[tuple[float, ...]], Sequence[float]],
    n_domains: int,
    *,
    step: float = 0.25,
    reference: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], dict[tuple[float, ...], list[float]]]:
    """Domain weights maximising the worst validation domain.

    ``score(w)`` returns one validation score per domain (higher is better, e.g. the mean run length of the layout
    profiled on mixture ``w``); with ``reference`` (each domain's score under its own in-domain layout) the worst
    *ratio* is maximised, so a domain whose text simply has shorter runs does not decide alone. Ties: the weights
    closest to uniform. Returns the best weights and every grid point's scores.
    """
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    table: dict[tuple[float, ...], list[float]] = {}
    for w in simplex_grid(n_domains, step):
        table[w] = [float(x) for x in score(w)]

    def key(w: tuple[float, ...]) -> tuple[float, float]:
        s = np.asarray(table[w])
        worst = float(np.min(s / ref)) if ref is not None else float(np.min(s))
        return worst, -float(np.abs(np.asarray(w) - 1.0 / n_domains).sum())

    return max(table, key=key), table


# ------------------------------------------------------------------------------------------------ whole statistics
def shrunk_graphs(stats: Any, alpha: float, resolution: int = RESOLUTION) -> Iterator[CoactGraph]:
    """The shrunk graph of every layer of a :class:`coact.stats.CoactStats` (one layer in memory at a time), for
    :func:`solvers.base.solve_layers`."""
    for l in range(stats.n_layers):
        yield to_graph(shrink(stats_layer_counts(stats, l), alpha), resolution,
                       meta={"layer": l, "alpha": float(alpha)})


def merge_stats(paths: Sequence[str | Path], weights: Sequence[int] | None = None,
                out: str | Path | None = None) -> Any:
    """``coact stats-merge``: load saved statistics, combine them with :func:`coact.stats.merge` and save to ``out``.

    ``weights``: one non-negative integer per input: input i counts as if its tokens had been seen ``weights[i]``
    times (integers keep every count exact; e.g. ``2,1`` doubles the first domain). None: the plain sum. For
    real-valued domain shares (the benchmark's recipes) use :func:`mixture` on the layers.
    """
    if len(paths) < 2:
        raise ShrinkError("give at least two statistics folders to merge")
    if weights is not None:
        if len(weights) != len(paths) or any(int(w) != w or w < 0 for w in weights) or not any(weights):
            raise ShrinkError(f"--weights must be one non-negative integer per input (not all 0), got {list(weights)}")
    merge = getattr(stats_mod, "merge", None)
    if merge is None:  # pragma: no cover - until coact.stats.merge lands
        raise ShrinkError("this coact.stats has no merge(stats_list, weights); update coact")
    if out is not None:
        stats_mod.check_stats_output(out, inputs=tuple(paths))
    loaded = [stats_mod.CoactStats.load(require(p, "statistics")) for p in paths]
    merged = merge(loaded, weights=None if weights is None else [int(w) for w in weights])
    if out is not None:
        merged.save(out)
    return merged


# ------------------------------------------------------------------------------------- max-min weights (ascent)
def maxmin_weights(
    score: Callable[[tuple[float, ...]], Sequence[float]],
    n_domains: int,
    *,
    reference: Sequence[float] | None = None,
    start: Sequence[float] | None = None,
    step: float = 0.2,
    min_step: float = 0.025,
    max_evals: int = 60,
) -> tuple[tuple[float, ...], float, list[tuple[tuple[float, ...], float]]]:
    """Domain weights maximising the worst validation domain by coordinate ascent on the continuous simplex.

    Why beside :func:`worst_case_weights`: a grid of step 0.25 has only 35 points for four domains and its best
    point is often uniform; the ascent moves ``step`` of weight from one domain to another (all ordered pairs),
    keeps a move only if the worst (relative to ``reference``) score improves, and halves the step when no move
    helps, down to ``min_step``. ``score(w)`` returns one score per domain (higher is better). Evaluations are
    memoised; at most ``max_evals`` distinct weight vectors are scored. Returns the best weights, their worst
    score and the path of accepted points.
    """
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    memo: dict[tuple[float, ...], float] = {}

    def worst(w: np.ndarray) -> float:
        key = tuple(round(float(x), 6) for x in w)
        if key not in memo:
            s = np.asarray([float(x) for x in score(key)])
            memo[key] = float(np.min(s / ref)) if ref is not None else float(np.min(s))
        return memo[key]

    w = np.full(n_domains, 1.0 / n_domains) if start is None else check_weights(start, n_domains)
    best = worst(w)
    path = [(tuple(round(float(x), 6) for x in w), best)]
    h = float(step)
    while h >= min_step and len(memo) < max_evals:
        moved = False
        for i, j in itertools.permutations(range(n_domains), 2):
            if w[j] <= 1e-12 or len(memo) >= max_evals:
                continue
            cand = w.copy()
            d = min(h, cand[j])
            cand[i] += d
            cand[j] -= d
            v = worst(cand)
            if v > best + 1e-12:
                w, best, moved = cand, v, True
                path.append((tuple(round(float(x), 6) for x in w), best))
        if not moved:
            h /= 2
    return tuple(round(float(x), 6) for x in w), best, path


# --------------------------------------------------------------------------------- shrinkage for `coact solve`
class ShrunkStats:
    """A :class:`coact.stats.CoactStats` seen through shrinkage, for the unchanged solve path
    (:func:`coact.workflow.solve_layouts`): ``layer(l)`` returns the shrunk counts in units of ``1/resolution``
    token (integers, as the solvers require), computed when the layer is asked for (one layer in memory).

    Dense statistics only: the prior has every pair, so a shrunk candidate graph would no longer be sparse.
    """

    def __init__(self, stats: Any, alpha: float, resolution: int = RESOLUTION):
        if getattr(stats, "kind", "dense") != "dense":
            raise ShrinkError("shrinkage needs dense statistics (coact stats --dense); candidate graphs keep only "
                              "the top partners, and the independence prior would add every other pair")
        if not float(alpha) >= 0:
            raise ShrinkError(f"shrinkage strength must be >= 0, got {alpha}")
        self.base, self.alpha, self.resolution = stats, float(alpha), int(resolution)
        self.n_layers, self.n_neurons = stats.n_layers, stats.n_neurons
        self.digest = stats.digest  # the layout records the statistics it was solved from
        self.meta = {**stats.meta, "shrink_alpha": self.alpha, "shrink_resolution": self.resolution}

    def layer(self, l: int) -> Any:
        g = to_graph(shrink(stats_layer_counts(self.base, l), self.alpha), self.resolution)
        dense = g.counts.toarray()
        np.fill_diagonal(dense, g.freq)
        return stats_mod.LayerStats(g.freq, dense, int(g.n_tokens), np.zeros(self.n_neurons, np.int64), "dense")


def _validation_layers(validation: Any, layers: Sequence[int]) -> list[np.ndarray]:
    """Packed validation active sets per layer from a trace folder, a :class:`coact.trace.Trace` or an array
    uint8 [T, L, nb]."""
    if isinstance(validation, np.ndarray):
        return [np.ascontiguousarray(validation[:, l, :]) for l in layers]
    tr = validation if hasattr(validation, "layer_packed") else Trace.load(require(validation, "trace"))
    return [tr.layer_packed(l) for l in layers]


def choose_strength(stats: Any, validation: Any, *, alphas: Sequence[float] = ALPHAS,
                    layers: Sequence[int] | None = None, solver: str = "ripple",
                    seed: int = 0) -> tuple[float, dict[float, float]]:
    """``--shrink auto``: the strength with the best pooled validation mean run length (:func:`choose_alpha`) on
    ``layers`` (default: up to six layers spread over the model: layers are independent placement problems, and a
    subset bounds the cost at len(alphas) solves per layer). ``validation``: tokens of the *profiling* kind of text
    that the statistics did not count (e.g. the tail of the profiling corpus), never the evaluation text."""
    if not alphas:
        raise ShrinkError("give at least one shrinkage strength to choose from")
    L = stats.n_layers
    layers = list(range(0, L, max(1, L // 6)))[:6] if layers is None else [int(x) for x in layers]
    val = _validation_layers(validation, layers)
    if any(v.shape[1] != (stats.n_neurons + 7) // 8 for v in val):
        raise ShrinkError("the validation trace has another number of neurons than the statistics")
    train = [stats_layer_counts(stats, l) for l in layers]
    s = get_solver(solver)
    return choose_alpha(train, val, alphas, lambda g: s.solve(g, seed=seed))


def parse_strength(value: str | float) -> float | None:
    """``--shrink`` value: a number >= 0, or ``auto`` (None)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        a = float(value)
    except (TypeError, ValueError):
        raise ShrinkError(f"--shrink must be a number >= 0 or 'auto', got {value!r}") from None
    if not a >= 0:
        raise ShrinkError(f"--shrink must be >= 0, got {value!r}")
    return a


def solve_shrunk(stats: Any, solvers: Sequence[str], out_dir: str | Path | None = None, *,
                 shrink: str | float = "auto", validation: Any = None, seed: int = 0,
                 time_limit: float | None = None, progress: bool = True,
                 executor: Any = None) -> tuple[dict[str, Any], float, dict[float, float]]:
    """``coact solve --shrink STRENGTH|auto``: choose the strength (``auto``: :func:`choose_strength` on
    ``validation``) and solve every layer of the shrunk statistics with :func:`coact.workflow.solve_layouts`.
    Returns (layouts as solve_layouts returns them, the strength used, the validation scores ({} if given))."""
    alpha = parse_strength(shrink)
    scores: dict[float, float] = {}
    if alpha is None:
        if validation is None:
            raise ShrinkError("--shrink auto needs --validation TRACE (profiling-kind tokens the statistics did not "
                              "count) to choose the strength; or give a number")
        alpha, scores = choose_strength(stats, validation, seed=seed)
    res = solve_layouts(ShrunkStats(stats, alpha), solvers, out_dir, seed=seed, time_limit=time_limit,
                        progress=progress, executor=executor)
    return res, float(alpha), scores
