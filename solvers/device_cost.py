"""A placement objective that matches the device: modelled I/O time per token (requests and 4 KiB pages).

Why: with bundles smaller than a page (SmolLM2's up+down bundle is 2,304 B), what a token costs on flash is not its
number of runs. The runtime aligns every read outward to 4 KiB and merges byte ranges that then touch
(:mod:`runtime.planner`), and the device charges ``a`` per request plus ``b`` per byte (``runtime.device.CostModel``:
``t = a_q + b_q * bytes``). Two runs separated by fewer than a page of unrequested bytes therefore become ONE request
anyway, and each request reads whole pages. The run objective (docs/DESIGN.md §2) cannot see either effect.

The modelled time of a token in one layer (:func:`device_time`), for its sorted positions under a placement:

1. runs of consecutive positions; runs separated by <= ``collapse_gap`` unrequested bundles merge (access
   collapse, as the runtime does);
2. each read [s, e) in bundles becomes the byte range [s*B, e*B) aligned outward to pages; ranges that overlap or
   touch merge (one request);
3. time = ``a * requests + b * bytes read``.

This module cannot import ``runtime/`` (docs/ARCHITECTURE.md), so the cost parameters arrive as plain numbers
(``coact`` passes a ``CostModel``'s ``coefficients(qd)``), and step 2 is re-derived here in a few numpy lines (the
tests check it against ``runtime.replay.simulate``).

The solver ``device-cost`` optimises a smooth proxy of that time with the swap local search of
:mod:`solvers.collapse` and keeps the result only if the exact modelled time on the sample improves:

- a gap of g unrequested bundles is free in requests when ``g * B < page`` (the aligned ranges always touch: step
  2), so the effective collapse gap is ``max(collapse_gap, (page - 1) // B)`` (1 for B = 2,304);
- a request costs ``a`` plus, on average, about one page of alignment over-read (``b * page``); a gap bundle costs
  ``b * B``. So the proxy is ``requests + beta * gap bundles`` with ``beta = b B / (a + b page)`` (collapse-ls's
  ``bundle_cost``), up to the constant bytes of the requested bundles themselves.

Like ``collapse-ls`` it wants a real token sample (``sample=``: packed active sets of profiling tokens); without one
it draws a pseudo-sample from the graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from solvers.base import ProgressFn, SolverBase, register
from solvers.collapse import CollapseLocalSearch, pseudo_sample, sample_to_bool
from solvers.errors import SolverError
from solvers.graph import CoactGraph
from solvers.ripple import default_start

#: Defaults: a typical NVMe-like device (100 us per request, 1 GB/s per byte), SmolLM2's up+down fp16 bundle.
PER_REQUEST_S = 100e-6
PER_BYTE_S = 1e-9
BUNDLE_BYTES = 2304
PAGE_BYTES = 4096


def device_counts(perm: np.ndarray, sample: Any, *, bundle_bytes: int = BUNDLE_BYTES, page_bytes: int = PAGE_BYTES,
                  collapse_gap: int = 0) -> tuple[int, int, int]:
    """(requests, bytes read, runs) of a token sample under ``perm`` (see the module docstring, steps 1-2)."""
    perm = np.asarray(perm, dtype=np.int64)
    act = sample_to_bool(sample, perm.size)
    t, p = np.nonzero(act[:, perm])  # by token, positions sorted
    if t.size == 0:
        return 0, 0, 0
    brk = np.empty(t.size, dtype=bool)
    brk[0] = True
    brk[1:] = (t[1:] != t[:-1]) | (p[1:] - p[:-1] > 1)
    n_runs = int(brk.sum())
    brk[1:] = (t[1:] != t[:-1]) | (p[1:] - p[:-1] - 1 > int(collapse_gap))
    first = np.flatnonzero(brk)
    last = np.append(first[1:], t.size) - 1
    seg, start, end = t[first], p[first], p[last] + 1
    B, P = int(bundle_bytes), int(page_bytes)
    a_off = (start * B // P) * P
    a_end = -((-end * B) // P) * P
    new = np.empty(seg.size, dtype=bool)
    new[0] = True
    new[1:] = (a_off[1:] > a_end[:-1]) | (seg[1:] != seg[:-1])
    f2 = np.flatnonzero(new)
    l2 = np.append(f2[1:], seg.size) - 1
    return int(f2.size), int((a_end[l2] - a_off[f2]).sum()), n_runs


def device_time(perm: np.ndarray, sample: Any, *, per_request_s: float = PER_REQUEST_S,
                per_byte_s: float = PER_BYTE_S, bundle_bytes: int = BUNDLE_BYTES, page_bytes: int = PAGE_BYTES,
                collapse_gap: int = 0) -> float:
    """Modelled seconds of I/O for the whole sample: ``a * requests + b * bytes read`` (requests issued one at a
    time, i.e. the queue-depth-1 line of the cost model)."""
    reqs, nbytes, _ = device_counts(perm, sample, bundle_bytes=bundle_bytes, page_bytes=page_bytes,
                                    collapse_gap=collapse_gap)
    return float(per_request_s) * reqs + float(per_byte_s) * nbytes


@register("device-cost")
class DeviceCostSolver(SolverBase):
    """Minimise modelled I/O time per token (requests + page bytes, with collapse) on a token sample.

    Parameters:
        per_request_s, per_byte_s: the cost model's ``a`` and ``b`` (seconds per request, per byte).
        bundle_bytes, page_bytes: bytes of one bundle and of one device page (alignment unit).
        collapse_gap: the runtime's access-collapse gap in bundles (0: off).
        sample: active sets of profiling tokens (packed uint8 [T, nb], bool [T, n] or index lists); None: a
            pseudo-sample drawn from the graph.
        k, time_limit: as for ``collapse-ls``.
    """

    name = "device-cost"
    optimises = "min modelled I/O time per token (a x requests + b x 4 KiB-page bytes, with collapse) on a sample"

    def __init__(self, per_request_s: float = PER_REQUEST_S, per_byte_s: float = PER_BYTE_S,
                 bundle_bytes: int = BUNDLE_BYTES, page_bytes: int = PAGE_BYTES, collapse_gap: int = 0,
                 sample: Any = None, n_sample: int = 2000, max_sample: int = 4000, k: int = 8,
                 time_limit: float = 10.0):
        if not (per_request_s >= 0 and per_byte_s >= 0 and per_request_s + per_byte_s > 0):
            raise SolverError("device-cost needs per_request_s >= 0 and per_byte_s >= 0, not both 0")
        if bundle_bytes < 1 or page_bytes < 1 or collapse_gap < 0:
            raise SolverError("device-cost needs bundle_bytes >= 1, page_bytes >= 1, collapse_gap >= 0")
        self.per_request_s, self.per_byte_s = float(per_request_s), float(per_byte_s)
        self.bundle_bytes, self.page_bytes = int(bundle_bytes), int(page_bytes)
        self.collapse_gap = int(collapse_gap)
        self.sample, self.n_sample, self.max_sample = sample, int(n_sample), int(max_sample)
        self.k, self.time_limit = int(k), float(time_limit)

    @property
    def proxy(self) -> tuple[int, float]:
        """(effective gap, gap-bundle cost) of the local-search proxy (module docstring)."""
        gap = max(self.collapse_gap, (self.page_bytes - 1) // self.bundle_bytes)
        a, b = self.per_request_s, self.per_byte_s
        beta = b * self.bundle_bytes / (a + b * self.page_bytes)
        return int(gap), float(beta)

    def _time(self, perm: np.ndarray, act: np.ndarray) -> float:
        return device_time(perm, act, per_request_s=self.per_request_s, per_byte_s=self.per_byte_s,
                           bundle_bytes=self.bundle_bytes, page_bytes=self.page_bytes,
                           collapse_gap=self.collapse_gap)

    def _solve(self, graph: CoactGraph, *, seed: int, time_limit: float | None, init: np.ndarray | None,
               progress: ProgressFn | None, sample: Any = None) -> np.ndarray:
        n = int(graph.n)
        start = (default_start(graph, seed=seed) if init is None else init).copy()
        if n <= 1:
            return start
        sample = self.sample if sample is None else sample
        act = pseudo_sample(graph, self.n_sample, seed) if sample is None else sample_to_bool(sample, n)
        if act.shape[0] > self.max_sample:
            rows = np.sort(np.random.default_rng(seed).choice(act.shape[0], self.max_sample, replace=False))
            act = act[rows]
        gap, beta = self.proxy
        ls = CollapseLocalSearch(gap=gap, bundle_cost=beta, k=self.k, time_limit=float(time_limit))
        perm = ls.solve(graph, seed=seed, init=start, sample=act)
        return perm if self._time(perm, act) <= self._time(start, act) else start
