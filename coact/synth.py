"""Synthetic activation traces at any shape, fitted to what coact measures on a real model.

Why: the offline side must be shown to work at 7B shape (32 x 11,008 neurons, 100,000 tokens) on a machine that
cannot run such a model, and a benchmark on planted chains would flatter every solver. So the workload reproduces
the three properties that drive placement, as measured on SmolLM2 (notebooks/01): the per-neuron activation
frequency curve (skewed, roughly power-law with a hot head), the "closest friend" curves (how often a neuron's
k-th most co-activated partner fires with it, "LLM in a flash" App. D), and cluster structure (groups of neurons
that fire together, visible as blocks once ordered), plus token-level activity variation (some tokens wake many
more neurons than others).

Model (per layer; a Gaussian copula with cluster factors, so every marginal is exact by construction):

- each neuron i gets a firing probability p_i drawn from the fitted distribution of logit(p) (a quantile table);
- neurons are split, in random order, into clusters with lognormal sizes (median ``cluster_median``, log-sd
  ``cluster_sigma``);
- per token, a global factor G and a factor Z_c per cluster (standard normal); cluster c's drive is
  F_c = sqrt(g) G + sqrt(1 - g) Z_c (``global_share`` g);
- neuron i fires iff sqrt(w) F_c + sqrt(1 - w) e_i > Phi^-1(1 - p_i) (``loading`` w, e_i independent noise), i.e.
  with probability Phi((sqrt(w) F_c - theta_i) / sqrt(1 - w)). F_c is quantised into :data:`LEVELS` equally likely
  levels and that probability averaged over each level (a table per neuron), so P(i fires) = p_i exactly.

The parameters (w, g, cluster median) are fitted per depth (a few layers of the real trace) by matching summary
curves computed the same way on the real and on a synthetic trace of the same shape (:func:`fit_synth`); depths in
between are interpolated. ``data/synth/*.json`` hold the fits with the command that made them.

Generation is a counter-based hash per (seed, layer, token, neuron) in a numba kernel (layers in parallel threads),
so the output depends only on the seed and the shape, never on block sizes or thread counts, and memory is bounded
by one block of tokens (:data:`BLOCK_TOKENS`); blocks are written straight into an Arrow file and the folder is an
ordinary ``coact trace`` (:func:`write_synthetic_trace`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.features.features import Array2DExtensionType
from numba import njit, prange
from scipy.special import ndtr, ndtri

from common.bits import n_packed_bytes, unpack_bits
from coact.errors import CoactError
from coact.progress import make_progress
from coact.trace import FORMAT, Trace, _features, check_trace_output, content_digest, publish_trace

FIT_FORMAT = "coact-synth-fit"
FIT_VERSION = 1
#: Quantisation levels of a cluster's drive (the per-neuron probability table has this many columns).
LEVELS = 32
#: Quantiles stored for the logit(p) distribution.
N_QUANTILES = 65
#: Tokens generated per block (bounded memory: BLOCK_TOKENS x L x N / 8 bytes, 180 MB at 32 x 11,008).
BLOCK_TOKENS = 4096
#: Summary entries stored per fitted depth (targets and achieved).
SUMMARY_KEYS = ("friend", "friend_nohot", "activity_cv", "density", "hot_share")
#: Friend ranks compared by the fit.
FRIEND_KS = (1, 2, 4, 8, 16, 32)
#: Neurons firing fewer times than this are too noisy for friend statistics (as in notebooks/01).
MIN_FIRES = 10
#: Neurons firing on at least this share of tokens are "hot" (best kept in DRAM; notebooks/01): the fit matches
#: the friend curves without them, where the cluster structure a placement can use shows.
HOT_P = 0.5
#: Built-in fits: name -> file under data/synth/.
BUILTIN_FITS = {"smollm2": "smollm2.json", "smollm2-b20": "smollm2-b20.json"}


class SynthError(CoactError):
    """A bad synthetic-trace request (shape, fit file) or an unusable fitting trace."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def load_fit(spec: str | os.PathLike[str] = "smollm2") -> dict[str, Any]:
    """A fit by built-in name (:data:`BUILTIN_FITS`) or JSON file path; checked for the fields generation needs."""
    s = str(spec)
    path = repo_root() / "data" / "synth" / BUILTIN_FITS[s] if s in BUILTIN_FITS else Path(s)
    try:
        fit = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SynthError(f"cannot read synthetic fit {s!r} ({path}): {e}") from None
    if not isinstance(fit, dict) or fit.get("format") != FIT_FORMAT:
        raise SynthError(f"{path} is not a {FIT_FORMAT} file")
    try:
        d = fit["depths"]
        ok = (len(d) >= 1 and all(len(fit["params"][k]) == len(d) for k in ("loading", "global_share",
                                                                               "cluster_median"))
              and len(fit["logit_p_quantiles"]) == len(d))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise SynthError(f"{path}: malformed fit (depths, params, logit_p_quantiles)")
    return fit


# ------------------------------------------------------------------------------------------------ layer parameters
def _interp(depth: float, depths: Sequence[float], values: Any) -> Any:
    """Linear interpolation in relative depth of scalars or vectors given at ``depths``."""
    v = np.asarray(values, dtype=np.float64)
    d = np.asarray(depths, dtype=np.float64)
    if v.ndim == 1:
        return float(np.interp(depth, d, v))
    return np.array([np.interp(depth, d, v[:, j]) for j in range(v.shape[1])])


def layer_params(fit: dict[str, Any], depth: float) -> dict[str, Any]:
    """The parameters of a layer at relative depth ``depth`` in [0, 1] (interpolated between fitted depths)."""
    p = fit["params"]
    return {
        "logit_q": _interp(depth, fit["depths"], fit["logit_p_quantiles"]),
        "loading": _interp(depth, fit["depths"], p["loading"]),
        "global_share": _interp(depth, fit["depths"], p["global_share"]),
        "cluster_median": _interp(depth, fit["depths"], p["cluster_median"]),
        "cluster_sigma": float(p.get("cluster_sigma", 1.0)),
    }


def _rng(seed: int, layer: int, what: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(layer), int(what), 0x5EED])


def _probability_table(p: np.ndarray, w: float) -> np.ndarray:
    """uint32 [N, LEVELS] thresholds: P(fire | drive in level m) * 2^32, averaged over 8 points per level."""
    sub = 8
    u = (np.arange(LEVELS * sub) + 0.5) / (LEVELS * sub)
    f = ndtri(u)  # drive values, equally likely
    theta = ndtri(1.0 - np.clip(p, 1e-9, 1 - 1e-9))
    w = float(np.clip(w, 0.0, 0.98))
    cond = ndtr((math.sqrt(w) * f[None, :] - theta[:, None]) / math.sqrt(1.0 - w))  # [N, LEVELS*sub]
    prob = cond.reshape(len(p), LEVELS, sub).mean(axis=2)
    return np.minimum(np.round(prob * 2.0**32), 2.0**32 - 1).astype(np.uint32)


def build_layer(fit_params: dict[str, Any], n_neurons: int, seed: int, layer: int) -> dict[str, Any]:
    """Draw one layer's neurons: probabilities, cluster ids (random order), probability table."""
    N = int(n_neurons)
    q = np.asarray(fit_params["logit_q"])
    u = _rng(seed, layer, 1).random(N)
    logit = np.interp(u, np.linspace(0, 1, len(q)), q)
    p = 1.0 / (1.0 + np.exp(-logit))
    rng = _rng(seed, layer, 2)
    med, sig = max(1.0, fit_params["cluster_median"]), fit_params["cluster_sigma"]
    draws = np.maximum(1, np.round(rng.lognormal(math.log(med), sig, size=N))).astype(np.int64)
    n_cl = int(np.searchsorted(np.cumsum(draws), N)) + 1  # clusters until N neurons are covered
    sizes = draws[:n_cl].tolist()
    sizes[-1] -= sum(sizes) - N
    cluster = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)[rng.permutation(N)]
    return {"p": p, "cluster": cluster, "n_clusters": len(sizes),
            "table": _probability_table(p, fit_params["loading"]),
            "g": float(np.clip(fit_params["global_share"], 0.0, 1.0))}


# ----------------------------------------------------------------------------------------------------- generation
@njit(cache=True, inline="always")
def _mix(z):  # pragma: no cover - compiled
    """splitmix64 finaliser: a well-mixed 64-bit hash of a counter."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


#: Lookup tables of the generator: standard-normal quantiles at 4,096 equally likely points (a normal draw from 12
#: hash bits), and Phi on a grid of [-PHI_RANGE, PHI_RANGE] (the level of a cluster's drive). Quantisation is far
#: below the LEVELS resolution of the drive, and marginals stay exact: the table averages over each level.
NORM_Q = ndtri((np.arange(4096) + 0.5) / 4096)
PHI_RANGE = 8.0
PHI_GRID = ndtr(np.linspace(-PHI_RANGE, PHI_RANGE, 8193))
#: Set bits of every byte value (numpy < 2 has no bitwise_count).
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@njit(cache=True, parallel=True, boundscheck=False)
def _generate(keys, t0, order, starts, tables, gs, norm_q, phi_grid, phi_range, out):  # pragma: no cover
    """out[r, l, :] = packed active set of layer l for token t0 + r (see the module docstring).

    Neurons are visited in cluster order (``order[l, s]`` = the neuron at sorted position s; cluster c holds
    positions ``starts[l, c]:starts[l, c + 1]``) so that ``tables[l, level, s]`` is read contiguously; each
    neuron's bit is OR-ed into its own place of the (L1-resident) packed row.
    """
    T, L, nb = out.shape
    M = tables.shape[1]
    golden = np.uint64(0x9E3779B97F4A7C15)
    mul = np.uint64(0xD6E8FEB86659FD93)
    s32 = np.uint64(32)
    ng = phi_grid.shape[0] - 1
    for l in prange(L):
        sg = math.sqrt(gs[l])
        sl = math.sqrt(1.0 - gs[l])
        n_cl = starts.shape[1] - 1
        for r in range(T):
            t = np.uint64(t0 + r)
            base = _mix(keys[l] ^ (t * golden))
            G = norm_q[base >> np.uint64(52)]
            hb = _mix(base ^ np.uint64(0xA4093822299F31D0))
            for c in range(n_cl):
                s0 = starts[l, c]
                s1 = starts[l, c + 1]
                if s1 <= s0:
                    break
                F = sg * G + sl * norm_q[_mix(base + np.uint64(c + 1) * golden) >> np.uint64(52)]
                x = int((F + phi_range) / (2.0 * phi_range) * ng + 0.5)
                lv = min(M - 1, int(phi_grid[min(ng, max(0, x))] * M))
                for s in range(s0, s1):
                    z = hb + np.uint64(s) * golden
                    z = (z ^ (z >> s32)) * mul
                    z = (z ^ (z >> s32)) * mul
                    if (z >> s32) < tables[l, lv, s]:
                        i = order[l, s]
                        out[r, l, i >> 3] |= np.uint8(1 << (i & 7))


class SyntheticModel:
    """The per-layer neuron parameters of a synthetic trace; :meth:`block` generates packed token blocks."""

    def __init__(self, fit: dict[str, Any], n_layers: int, n_neurons: int, seed: int = 0) -> None:
        if not (1 <= int(n_layers) <= 1 << 14 and 1 <= int(n_neurons) <= 1 << 20):
            raise SynthError(f"implausible shape {n_layers} layers x {n_neurons} neurons")
        self.fit, self.n_layers, self.n_neurons, self.seed = fit, int(n_layers), int(n_neurons), int(seed)
        L, N = self.n_layers, self.n_neurons
        layers = [build_layer(layer_params(fit, l / max(1, L - 1)), N, seed, l) for l in range(L)]
        self.p = np.stack([x["p"] for x in layers])
        self.clusters = np.stack([x["cluster"] for x in layers])
        self.n_clusters = np.array([x["n_clusters"] for x in layers], dtype=np.int64)
        self.order = np.argsort(self.clusters, axis=1, kind="stable")
        self.starts = np.full((L, int(self.n_clusters.max()) + 1), N, dtype=np.int64)
        for l in range(L):
            self.starts[l, : self.n_clusters[l] + 1] = np.searchsorted(
                self.clusters[l][self.order[l]], np.arange(self.n_clusters[l] + 1))
        self.tables = np.stack([x["table"][o].T for x, o in zip(layers, self.order)])  # [L, LEVELS, N] uint32
        self.gs = np.array([x["g"] for x in layers], dtype=np.float64)
        self.keys = np.array([int.from_bytes(hashlib.sha256(f"coact-synth/{seed}/{l}".encode()).digest()[:8],
                                             "little") for l in range(L)], dtype=np.uint64)

    def block(self, t0: int, t1: int) -> np.ndarray:
        """Packed active sets uint8 [t1 - t0, L, ceil(N/8)] of tokens [t0, t1)."""
        out = np.zeros((int(t1) - int(t0), self.n_layers, n_packed_bytes(self.n_neurons)), dtype=np.uint8)
        if out.shape[0]:
            _generate(self.keys, int(t0), self.order, self.starts, self.tables, self.gs, NORM_Q, PHI_GRID,
                      PHI_RANGE, out)
        return out


def write_synthetic_trace(
    out: str | os.PathLike[str],
    *,
    n_layers: int,
    n_neurons: int,
    n_tokens: int,
    seed: int = 0,
    fit: str | os.PathLike[str] = "smollm2",
    d_model: int = 4096,
    progress: bool = True,
) -> Trace:
    """Write an ordinary ``coact trace`` folder of synthetic activations (see the module docstring).

    The folder is built in ``OUT.partial`` and renamed into place when complete (never over an existing path);
    the metadata has the same fields as a captured trace (``model_id`` names the fit and seed, ``sparsifier`` is
    ``{"name": "synthetic", ...}``, ``d_model`` for packing) plus ``synth`` (shape, seed, fit name and digest).
    """
    datasets.disable_progress_bars()
    out = Path(out)
    check_trace_output(out)
    if int(n_tokens) < 1 or int(d_model) < 1:
        raise SynthError(f"--tokens and --d-model must be >= 1, got {n_tokens} and {d_model}")
    fit_doc = load_fit(fit)
    fit_digest = hashlib.sha256(json.dumps(fit_doc, sort_keys=True).encode()).hexdigest()[:16]
    model = SyntheticModel(fit_doc, n_layers, n_neurons, seed)
    L, N, T = model.n_layers, model.n_neurons, int(n_tokens)
    partial = Path(str(out) + ".partial")
    if partial.exists() or partial.is_symlink():
        if not partial.is_dir() or partial.is_symlink():
            raise SynthError(f"{partial} exists and is not a folder; remove it")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    feats = _features(L, n_packed_bytes(N))
    raw = partial / "raw.arrow"
    active = np.zeros(L, dtype=np.int64)
    with make_progress(disable=not progress) as prog:
        task = prog.add_task("synthetic trace", total=T)
        with ArrowWriter(features=feats, path=str(raw)) as writer:
            for s in range(0, T, BLOCK_TOKENS):
                e = min(T, s + BLOCK_TOKENS)
                blk = model.block(s, e)
                active += _popcount_layers(blk)
                writer.write_table(_arrow_block(blk, s))
                prog.advance(task, e - s)
            writer.finalize()
    ds = datasets.Dataset.from_file(str(raw))
    final = partial / "final"
    ds.save_to_disk(str(final))
    del ds
    raw.unlink()
    staged = Trace.__new__(Trace)
    staged.path, staged._ds = final, datasets.load_from_disk(str(final))
    staged.meta = {"n_tokens": T, "n_layers": L, "n_neurons": N}
    meta = {
        **FORMAT,
        "model_id": f"synthetic:{Path(str(fit)).stem}/seed{seed}/{L}x{N}",
        "corpus": "synthetic",
        "corpus_digest": fit_digest,
        "token_start": 0,
        "n_tokens": T,
        "ctx": T,
        "method": "synthetic",
        "sparsity": round(float(1.0 - active.sum() / (T * L * N)), 6),
        "n_layers": L,
        "n_neurons": N,
        "d_model": int(d_model),
        "sparsifier": {"name": "synthetic", "fit": str(fit), "fit_digest": fit_digest},
        "achieved_sparsity": [round(float(1.0 - a / (T * N)), 6) for a in active],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "synth": {"seed": int(seed), "fit": str(fit), "fit_digest": fit_digest, "model": "cluster-copula/1"},
        "content_digest": content_digest(staged),
    }
    del staged
    return publish_trace(final, meta, out, partial)


def _arrow_block(blk: np.ndarray, t0: int) -> Any:
    """A block [t, L, nb] as an Arrow table of the trace schema, built from the numpy buffer without per-row
    Python conversion (datasets' ``write_batch`` of a list of arrays costs ~3 ms per token at 32 x 11,008)."""
    T, L, nb = blk.shape
    values = pa.array(np.ascontiguousarray(blk).reshape(-1), type=pa.uint8())
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, T * L * nb + 1, nb, dtype=np.int32)), values)
    outer = pa.ListArray.from_arrays(pa.array(np.arange(0, T * L + 1, L, dtype=np.int32)), inner)
    active = pa.ExtensionArray.from_storage(Array2DExtensionType(shape=(L, nb), dtype="uint8"), outer)
    return pa.table({"active": active, "token_id": pa.array(np.zeros(T, np.int32)),
                     "pos": pa.array(np.arange(t0, t0 + T, dtype=np.int64))})


def _popcount_layers(block: np.ndarray) -> np.ndarray:
    """Active neurons per layer in a packed block [t, L, nb]."""
    return _POP8[block].sum(axis=(0, 2), dtype=np.int64)


# --------------------------------------------------------------------------------------------------------- fitting
def summary(active: np.ndarray, *, ks: Sequence[int] = FRIEND_KS, min_fires: int = MIN_FIRES) -> dict[str, Any]:
    """Summary curves of one layer's active sets (bool [T, N]) — what the fit matches and the tests check.

    ``logit_q``: quantiles of logit(p) (p smoothed as (f + 0.5) / (T + 1)); ``friend``: median over neurons with
    >= ``min_fires`` activations of P(k-th closest friend fires | neuron fires) at ``ks``; ``activity_cv``:
    coefficient of variation of the number of active neurons per token.
    """
    x = np.asarray(active, dtype=np.float32)
    T, N = x.shape
    f = x.sum(axis=0).astype(np.int64)
    p = (f + 0.5) / (T + 1.0)
    q = np.quantile(np.log(p / (1 - p)), np.linspace(0, 1, N_QUANTILES))
    C = (x.T @ x).astype(np.int64)
    np.fill_diagonal(C, -1)
    hot = f >= HOT_P * T
    curves = {}
    for name, ex in (("friend", np.zeros(N, bool)), ("friend_nohot", hot)):
        keep = np.flatnonzero((f >= min_fires) & ~ex)
        kmax = max(ks)
        curves[name] = [float("nan")] * len(ks)
        if keep.size and N - ex.sum() > kmax:
            rows = C[keep]
            rows[:, ex] = -1
            top = -np.sort(-np.partition(rows, N - kmax, axis=1)[:, N - kmax:], axis=1)
            P = np.maximum(top, 0) / f[keep, None]
            curves[name] = [float(np.median(P[:, k - 1])) for k in ks]
    act = x.sum(axis=1)
    cv = float(act.std() / max(act.mean(), 1e-9))
    return {"logit_q": q.tolist(), **curves, "activity_cv": cv, "density": float(f.sum() / (T * N)),
            "hot_share": float(hot.mean())}


def _loss(a: dict[str, Any], b: dict[str, Any]) -> float:
    fa, fb = np.asarray(a["friend_nohot"]), np.asarray(b["friend_nohot"])
    return float(np.nanmean((fa - fb) ** 2) + (a["activity_cv"] - b["activity_cv"]) ** 2)


def simulate_layer(params: dict[str, Any], N: int, T: int, seed: int) -> dict[str, Any]:
    """:func:`summary` of one synthetic layer with ``params`` (:func:`layer_params`) at shape (N, T)."""
    fit = {"depths": [0.0], "logit_p_quantiles": [list(params["logit_q"])],
           "params": {k: [params[k]] for k in ("loading", "global_share", "cluster_median")}}
    fit["params"]["cluster_sigma"] = params["cluster_sigma"]
    m = SyntheticModel(fit, 1, N, seed)
    return summary(unpack_bits(m.block(0, T)[:, 0, :], N))


def fit_layer(target: dict[str, Any], N: int, T: int, *, seed: int = 0, sigma: float = 1.0) -> tuple[dict, dict]:
    """Fit (loading, global_share, cluster_median) of one layer to ``target`` (:func:`summary` of the real layer)
    by a coarse grid, then a finer grid around the best point; same shape (N, T) as the real layer so the
    estimators have the same bias. Returns (params, summary of the fitted synthetic layer)."""
    base = {"logit_q": target["logit_q"], "cluster_sigma": sigma}
    best: tuple[float, dict, dict] | None = None

    def consider(w: float, g: float, m: float) -> None:
        nonlocal best
        prm = {**base, "loading": w, "global_share": g, "cluster_median": m}
        s = simulate_layer(prm, N, T, seed)
        loss = _loss(s, target)
        if best is None or loss < best[0]:
            best = (loss, prm, s)

    for w in (0.2, 0.4, 0.6, 0.8):
        for g in (0.0, 0.1, 0.3):
            for m in (4.0, 16.0, 64.0):
                consider(w, g, m)
    assert best is not None
    _, b, _ = best
    for w in np.clip(b["loading"] + np.array([-0.1, 0, 0.1]), 0.02, 0.95):
        for g in np.clip(b["global_share"] + np.array([-0.05, 0, 0.05]), 0.0, 0.9):
            for m in (b["cluster_median"] / 2, b["cluster_median"], b["cluster_median"] * 2):
                consider(float(w), float(g), float(m))
    return best[1], best[2]


def fit_synth(trace: Trace | str | os.PathLike[str], *, n_depths: int = 5, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit the synthetic model to ``n_depths`` evenly spaced layers of a real trace; return the fit document
    (targets, fitted parameters and the achieved summaries per depth, and how it was obtained)."""
    tr = trace if isinstance(trace, Trace) else Trace.load(trace)
    L, N, T = tr.n_layers, tr.n_neurons, tr.n_tokens
    if T < 4 * MIN_FIRES or N <= max(FRIEND_KS):
        raise SynthError(f"a fit needs at least {4 * MIN_FIRES} tokens and {max(FRIEND_KS) + 1} neurons")
    layers = sorted({int(round(x)) for x in np.linspace(0, L - 1, max(1, min(n_depths, L)))})
    depths, qs, params, targets, achieved = [], [], {"loading": [], "global_share": [], "cluster_median": []}, [], []
    for l in layers:
        if progress:
            progress(f"fitting layer {l}")
        tgt = summary(tr.active(l))
        prm, ach = fit_layer(tgt, N, T, seed=seed)
        depths.append(l / max(1, L - 1))
        qs.append(tgt["logit_q"])
        for k in params:
            params[k].append(round(float(prm[k]), 4))
        targets.append({k: tgt[k] for k in SUMMARY_KEYS})
        achieved.append({k: ach[k] for k in SUMMARY_KEYS})
    params["cluster_sigma"] = 1.0
    return {
        "format": FIT_FORMAT, "version": FIT_VERSION,
        "model": "cluster-copula/1 (coact/synth.py)",
        "source": {"trace": str(tr.path), "model_id": tr.model_id, "n_layers": L, "n_neurons": N, "n_tokens": T,
                   "sparsifier": tr.meta.get("sparsifier", {}).get("name"),
                   "achieved_sparsity": float(np.mean(tr.meta.get("achieved_sparsity", [float("nan")]))),
                   "content_digest": tr.meta.get("content_digest")},
        "method": (f"per fitted layer: logit(p) quantiles copied; (loading, global_share, cluster_median) by grid "
                   f"search minimising the squared error of the median closest-friend curve without hot neurons (P >= {HOT_P}) at k={list(FRIEND_KS)} "
                   f"(neurons with >= {MIN_FIRES} fires) plus that of the per-token activity CV, synthetic layer "
                   f"simulated at the same shape ({N} neurons x {T} tokens, seed {seed})"),
        "fit_layers": layers, "depths": depths, "friend_ks": list(FRIEND_KS),
        "logit_p_quantiles": qs, "params": params, "targets": targets, "achieved": achieved,
    }
