"""Run the model from flash: a causal LM token by token (batch 1, KV cache) with its FFN up/down weights streamed
from a pack file; the model side of the online engine (the flash side is :mod:`runtime.stream`).

What stays in DRAM: embeddings, attention, norms, the LM head and every layer's **gate** (``up-down`` bundles, as in
CATS: the gate decides which neurons are needed). The up and down matrices are *removed* from the model (each MLP
module is replaced by :class:`StreamedMLP`, which holds only the gate and the activation function); their DRAM is
the cache budget of the :class:`runtime.stream.FlashFFNReader` (plus one layer's read buffers).

Families (:mod:`coact.families`): a **gated** FFN (separate gate/up, or Phi-3's fused gate_up, whose gate half is
copied out and kept) runs as :class:`StreamedMLP`. A **plain** FFN (GPT-2, OPT, BLOOM, NeoX ...) has no gate: the
activation that decides sparsity is ``act(fc1(x) + b1)``, so fc1 and its bias stay resident (they play the gate's
part) and only the down projection is streamed (:class:`StreamedDown` replaces it); the pack's up part is not read
into the computation (it is there so that a pack alone holds the FFN). **Biases**: the per-neuron up bias comes from
the pack with its neuron (``runtime.pack``, ``width = d_model + 1``); the down bias (a d_model vector) and the gate
bias stay resident. In exact mode the streamed bundles are scattered into layer-shaped scratch weights held by
hidden copies of the model's own projection modules, so the model's own forward code (``nn.Linear``, GPT-2's
``Conv1D``, ``FalconLinear``) runs on them: the same float operations as the in-memory sparse model.
**Compact path** (``exact=False``, ``--flash-kw '{"exact": false}'`` in bench/bench_online.py): no scatter; the
FFN is ``down_S @ (a_S * (up_S @ x))`` on the fetched bundles themselves (k-sized matmuls), equal to the in-memory
model up to float32 summation order. Both paths widen fp16 bundles with one torch cast of the fetched rows
(:meth:`runtime.stream.FlashFFNReader.fetch_raw` hands them over in the pack dtype), and a token runs with one
torch thread by default (``threads``; see :class:`FlashModel`).

**Mixture-of-experts** (:mod:`coact.online_moe`; Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): the pack has one unit
region per expert (a dense layer of a mixed stack is one unit), and the reader, the sparsifier thresholds and the
modules here are indexed by pack unit. Resident: the router, a shared expert (Qwen2-MoE) and every expert's gate
rows; streamed: every expert's up rows and down columns. The model's own MoE block still routes (top-k, the
family's normalisation) and combines (router weights, shared expert); only its ``experts`` module is replaced by
:class:`coact.online_moe.StreamedExperts`, which per selected expert masks ``act(gate_e(x))`` with the unit's
threshold, fetches the unit's active bundles and computes the expert from them. Prefetch of an MoE layer: the
predicted neurons of the expert the router predicts first (details there). Exact against the in-memory sparse
model as above (tests/test_online_moe.py); the compact path works too.

Per token and layer (:class:`StreamedMLP`): ``a = act(gate(x))``, ``S = sparsifier.mask(a)``, the reader returns
the bundles of S (cache hits, prefetched bundles, and reads of the rest with collapse and O_DIRECT), and
``y = down[:, S] @ (a[S] * (up[S] @ x))`` is computed from exactly the bytes read. That is term for term what the
in-memory model masked by :func:`coact.accuracy.sparsified` computes (inactive neurons contribute zero there), so
the logits agree up to float32 summation order: caches, collapse and prefetch change which bytes are read when,
never the values (tests/test_online.py measures it).

**Prefetch predictor.** While layer l's attention runs, the reader already reads the bundles of l's *likely*
neurons. The prediction is the sparsifier applied to ``act(gate(norm(h)))``, with h the residual stream entering
layer l (known before attention). Two norms are possible:

- ``post`` (default): the FFN's own ``post_attention_layernorm`` applied to h. The FFN input is
  ``post_attention_layernorm(h + attn(h))``; in a pre-norm transformer the residual h dominates the attention
  update, so this is the FFN input minus the attention update, normalised exactly as the gate expects.
- ``input``: the ``input_layernorm`` output (what attention sees), as first proposed; it carries the attention
  norm's weights instead of the FFN norm's, which the gate was not trained on.

``margin`` scales the predicted activation before the sparsifier (``|a| * margin > t``): margin > 1 predicts more neurons
(higher recall, more wasted bytes). Measured precision/recall of both are in the report (``predictor``).
Prefetched bundles outside the true load set are discarded; misses are read once the true set is known.

**Look-ahead** (``lookahead``, :data:`LOOKAHEADS`; off by default). The same-layer prefetch is in flight only
during layer l's attention (a few ms) while the layer's reads take longer. A look-ahead predicts layer l+1's set
while layer l is still running, so those reads are in flight during layer l's FFN (its misses, its compute) and
layer l+1's attention (cross-layer prediction as in Deja Vu and PowerInfer: the residual stream changes slowly):

- ``mid`` (``lookahead=1``): at layer l's FFN entry (a hook on its FFN norm), ``act(gate_{l+1}(norm_{l+1}(m)))``
  with m the residual after layer l's attention (the FFN norm's input); it lacks only FFN_l's update;
- ``x``: ``act(gate_{l+1}(x_l))`` on layer l's FFN input itself (the norm of layer l instead of l+1's);
- ``entry``: at layer l's entry, ``act(gate_{l+1}(norm_{l+1}(h_l)))`` (lacks attention and FFN of layer l);
- ``+post``: also the same-layer ``post`` prefetch at each layer's entry, adding what the look-ahead did not ask
  for (without it the same-layer predictor runs only for layer 0 and after a mixture-of-experts layer).

``lookahead_margin`` (default: ``margin``) applies to the look-ahead predictor alone: < 1 reads early only the
neurons it is confident about and leaves the rest to the ``+post`` top-up. Measured on SmolLM2 at +20 %
(bench/bench_lookahead_predictor.py, 1,024 held-out tokens): same-layer ``post`` precision 0.90 / recall 0.88;
``mid`` 0.81 / 0.82, ``x`` 0.82 / 0.79, ``entry`` 0.79 / 0.79; ``mid`` at margin 0.8 united with ``post``: 0.85 /
0.91 for 1.07x the active set's bundles. The reader runs a look-ahead's reads behind the current layer's and lets
the current layer's misses overtake it (:class:`runtime.stream.FlashFFNReader`, ``prefetch_chunk``); two layers at
most hold read buffers. In dense mode (dense-from-flash), any look-ahead reads the next layer's whole region while
this one computes (its set is known exactly). The true set still decides what is computed: logits are unchanged
(tests/test_online_lookahead.py).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from coact.accuracy import calibration_activations
from coact.corpus import load_text, token_windows, tokenize
from coact.errors import CoactError, TraceError
from coact.models import ModelHandle, load_model
from coact.online_moe import (
    PREFETCH_SCOPE,
    StreamedExperts,
    expert_alignments,
    stream_moe_layer,
    streamed_expert_weights,
)
from coact.sparsify import Sparsifier, get_sparsifier
from coact.trace import Trace
from runtime.caches import CACHES, get_cache
from runtime.device import CostModel
from runtime.engines import parse_engine
from runtime.layout import Unit
from runtime.pack import PackFile
from runtime.replay import resolve_collapse
from runtime.stream import FlashFFNReader, summarize

PREDICTORS = ("post", "input")
#: Look-ahead modes (``FlashModel(lookahead=...)``, module docstring): which state of layer l predicts layer l+1.
LOOKAHEADS = ("off", "mid", "x", "entry", "mid+post", "x+post", "entry+post")
_clock = time.perf_counter_ns


@dataclass
class TokenTiming:
    """Compute time of one token, nanoseconds: attention (layer entry to FFN entry, incl. norms), the resident gate
    and sparsifier, the predictor, FFN matmuls, time inside ``fetch`` (I/O wait + decode + cache bookkeeping)
    and the token's wall time."""

    attention_ns: int = 0
    gate_ns: int = 0
    predict_ns: int = 0
    ffn_ns: int = 0
    fetch_ns: int = 0
    wall_ns: int = 0


class _Hidden:
    """Holds modules out of ``named_parameters`` (the projections whose weights are the shared flash scratch)."""

    def __init__(self, **mods: nn.Module):
        self.__dict__.update(mods)


class StreamedMLP(nn.Module):
    """A gated MLP whose up/down weights come from flash: holds only the gate (resident), the activation and the
    down bias (resident); ``up``/``down`` are hidden copies of the model's projections whose weights are scratch."""

    def __init__(self, owner: "FlashModel", layer: int, gate_proj: nn.Module, act_fn: nn.Module, up: nn.Module,
                 down: nn.Module):
        super().__init__()
        self.gate_proj = gate_proj
        self.act_fn = act_fn
        self.layer = layer
        self.proj = _Hidden(up=up, down=down)
        self._owner = weakref.ref(owner)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.gate_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fm = self._owner()
        assert fm is not None
        return fm._ffn(self, x)


class StreamedDown(nn.Module):
    """The down projection of a plain FFN, streamed: its input is the activation ``a = act(fc1(x))`` (fc1 stays
    resident); it masks ``a``, fetches the down columns of the active neurons and applies the model's own down
    module (a hidden copy whose weight is scratch; its bias stays resident)."""

    def __init__(self, owner: "FlashModel", layer: int, down: nn.Module):
        super().__init__()
        self.layer = layer
        self.proj = _Hidden(up=None, down=down)
        self._owner = weakref.ref(owner)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        fm = self._owner()
        assert fm is not None
        return fm._ffn_plain(self, a)


class FlashModel:
    """A causal LM whose FFN up/down weights are streamed from a pack file (see the module docstring).

    Args:
        pack: pack file with ``up-down`` bundles written from this model (any layout, fp16 or fp32).
        model: a model spec for :func:`coact.models.load_model` or a loaded :class:`ModelHandle` (deep-copied
            unless ``copy_model=False``, in which case the handle's model is modified in place).
        sparsifier: a calibrated sparsifier (None: every neuron is active).
        budget: DRAM cache budget as a fraction of the pack's FFN bytes, in [0, 1].
        policy: cache policy (:data:`runtime.caches.CACHES`); ``policy_params`` go to its factory.
        engine: I/O engine spec; collapse: access-collapse gap in bundles or ``"auto"`` (needs ``cost_model``).
        prefetch: overlap reads with attention using the predictor (``post`` or ``input``) and ``margin``.
        dense: read every layer's whole region per token (the dense-from-flash baseline; no cache, no prefetch).
        exact: True (default): the streamed bundles are scattered into layer-shaped scratch weights and the model's
            own projection modules run on them: bit-identical to the in-memory sparse model. False: the *compact*
            path, ``down_S @ (a_S * (up_S @ x))`` on the fetched bundles directly (k-sized matmuls, no scatter;
            4-7x less FFN time measured on SmolLM2 at 43 % sparsity), equal to the in-memory model up to float32
            summation order (a CATS threshold decision downstream may then flip, rarely; see
            tests/test_online.py).
        threads: torch intra-op threads while a token runs (restored after it; None: leave torch's setting). 1 by
            default: batch-1 decoding of a small model is a chain of tiny ops, where a second OpenMP thread costs
            more in synchronisation than it computes (3x slower per token measured on 2 shared cores), and the
            I/O completion work needs a core too. Results do not depend on it (each output of a matrix-vector
            product is one dot product, whatever the thread count).
        lookahead: 0 (off), 1 (``mid``) or a name of :data:`LOOKAHEADS`: predict layer l+1's set while layer l
            runs and read it early (dense: read the next layer's region); see the module docstring.
        lookahead_margin: margin of the look-ahead predictor alone (None: ``margin``).
    """

    def __init__(self, pack: str | Path, model: str | ModelHandle = "smollm2", *,
                 sparsifier: Sparsifier | None, budget: float = 0.1, policy: str = "lru",
                 policy_params: dict[str, Any] | None = None, engine: str = "threads:16",
                 collapse: int | str = 0, cost_model: Any = None, prefetch: bool = True, predictor: str = "post",
                 margin: float = 1.0, dense: bool = False, copy_model: bool = True, exact: bool = True,
                 threads: int | None = 1, lookahead: int | str = 0, lookahead_margin: float | None = None):
        budget = check_budget(budget)
        self.lookahead = parse_lookahead(lookahead)
        if predictor not in PREDICTORS:
            raise CoactError(f"unknown predictor {predictor!r}; choose {', '.join(PREDICTORS)}")
        if not margin > 0:
            raise CoactError(f"prefetch margin must be > 0, got {margin}")
        if sparsifier is not None and sparsifier.needs_calibration:
            raise CoactError("missing thresholds: calibrate the sparsifier (--sparsity) or give --thresholds-from")
        CACHES.entry(policy)
        header = check_pack(pack)
        handle = load_model(model) if isinstance(model, str) else model
        check_pack_model(pack, header, handle)
        # Alignments of the weights the scratch stands in for, taken from the caller's model (the reference).
        self._align = [_alignments(handle, layer) for layer in handle.decoder_layers()]
        if copy_model and not isinstance(model, str):
            handle = dataclasses.replace(handle, model=copy.deepcopy(handle.model))  # keeps units, bos, adapter
        self.handle = handle
        self.model = handle.model
        self.sparsifier = sparsifier
        self.prefetch_on = bool(prefetch) and not dense
        self.predictor = predictor
        self.margin = float(margin)
        self.pack_path = Path(pack)
        ffn_bytes = sum(header["layer_nbytes"])
        budget_bytes = int(budget * ffn_bytes)
        bb = int(header["bundle_bytes"])
        self.budget_fraction = budget
        cache = None if dense or policy == "none" else get_cache(policy, budget_bytes, bb, **(policy_params or {}))
        gap = resolve_collapse(collapse, bundle_bytes=bb, cost_model=cost_model,
                               queue_depth=_queue_depth(engine))
        self.reader = FlashFFNReader(pack, cache=cache, engine=engine, collapse_gap=gap, dense=dense)
        self.family = handle.adapter
        self.pack_biases = bool(header.get("biases", False))
        self._layers = handle.decoder_layers()
        self.dropped: list[weakref.ref] = []  # the removed up/down weights (tests check they are freed)
        self._hooks = []
        self._scratch_bufs: dict[tuple, torch.Tensor] = {}
        self._streamed: list[Any] = []
        # Pack units of every decoder layer (one dense unit, or one per expert): the reader's regions and the
        # sparsifier's indices. Without units (every FFN dense and equally wide) unit i is layer i.
        units = handle.units or [Unit(li, None, handle.n_neurons) for li in range(len(self._layers))]
        self._layer_units: dict[int, dict[int | None, int]] = {}
        for u, unit in enumerate(units):
            self._layer_units.setdefault(unit.layer, {})[unit.expert] = u
        self._predict: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # per dense unit
        for i, layer in enumerate(self._layers):
            streamed = self._stream_layer(i, layer)
            self._streamed.append(streamed)
            if isinstance(streamed, StreamedExperts):  # its own entry: prefetch of the predicted top expert
                entry = streamed.layer_entry
            else:
                entry = (lambda mod, args, kwargs, u=streamed.layer: self._layer_entry(u, mod, args, kwargs))
            self._hooks.append(layer.register_forward_pre_hook(entry, with_kwargs=True))
        gc.collect()
        self._pred: dict[int, np.ndarray] = {}
        self._attn_start = 0
        self.timings: list[TokenTiming] = []
        self._pred_stats = np.zeros(3, dtype=np.int64)  # predicted, active, predicted & active
        self._cache_arg = _cache_kwarg(self.model)
        self.exact = bool(exact)
        if threads is not None and int(threads) < 1:
            raise CoactError(f"threads must be >= 1, got {threads}")
        self.threads = None if threads is None else int(threads)
        self._bos_kv: Any = None
        self._install_lookahead(lookahead_margin)

    # ------------------------------------------------------------------------------------------------ set-up
    def _scratch(self, role: str, shape: tuple[int, ...], mod: int) -> torch.Tensor:
        """A scratch tensor of ``shape`` whose address has the same offset modulo 64 bytes as ``like`` (the weight
        it stands in for): CPU BLAS kernels peel differently for differently aligned operands, and only the same
        alignment gives the same float results. Shared by layers of equal shape and alignment (for SmolLM2: one
        up and one down matrix, one layer's worth of fp32 weights)."""
        key = (role, shape, mod)
        if key not in self._scratch_bufs:
            size = int(np.prod(shape))
            flat = torch.zeros(size + 16)
            shift = ((mod - flat.data_ptr() % 64) % 64) // 4
            self._scratch_bufs[key] = flat[shift : shift + size].view(shape)
        return self._scratch_bufs[key]

    def _hide(self, layer: int, role: str, mod: nn.Module, bias_from_pack: bool) -> nn.Module:
        """A shallow copy of projection ``mod`` whose weight (and, from the pack, bias) is scratch; the original
        weight is dropped from the model."""
        self.dropped.append(weakref.ref(mod.weight))
        hidden = copy.copy(mod)
        hidden._parameters = dict(mod._parameters)
        align = self._align[layer]
        hidden.weight = nn.Parameter(self._scratch(role, tuple(mod.weight.shape), align[role]), requires_grad=False)
        if bias_from_pack and getattr(mod, "bias", None) is not None:
            if not self.pack_biases:
                raise CoactError(f"{self.pack_path}: the model's FFN has biases but the pack does not carry them; "
                                 "re-pack it with this coact")
            hidden.bias = nn.Parameter(self._scratch(role + "_bias", tuple(mod.bias.shape), align[role + "_bias"]),
                                       requires_grad=False)
        return hidden

    def _stream_layer(self, i: int, layer: nn.Module) -> nn.Module:
        """Replace layer i's streamed projections (gated: up and down; plain: down; mixture-of-experts: every
        expert's up and down, :mod:`coact.online_moe`) by flash-backed modules. The modules are keyed by pack unit
        (= layer i without units)."""
        fam = self.family
        assert fam is not None
        if fam.moe_block(layer) is not None:
            return stream_moe_layer(self, i, layer, {e: u for e, u in self._layer_units[i].items() if e is not None},
                                    self._align[i])
        i, li = self._layer_units[i][None], i  # the dense unit of layer li
        ffn = fam.ffn_module(layer)
        act = fam.module(layer, "act")
        down = self._hide(li, "down", fam.module(layer, "down"), bias_from_pack=False)
        if fam.gated:
            if fam.fused:
                gu = fam.module(layer, "gate_up")
                n = gu.weight.shape[0] // 2
                gate = nn.Linear(gu.in_features, n, bias=gu.bias is not None)
                up = nn.Linear(gu.in_features, n, bias=gu.bias is not None)
                with torch.no_grad():
                    gate.weight.copy_(gu.weight[:n])
                    up.weight = nn.Parameter(gu.weight[n:], requires_grad=False)
                    if gu.bias is not None:
                        gate.bias.copy_(gu.bias[:n])
                        up.bias = nn.Parameter(gu.bias[n:], requires_grad=False)
                up = self._hide(li, "up", up, bias_from_pack=True)
                self.dropped.append(weakref.ref(gu.weight))
                del gu
            else:
                gate = fam.module(layer, "gate")
                up = self._hide(li, "up", fam.module(layer, "up"), bias_from_pack=True)
            streamed = StreamedMLP(self, i, gate, act, up, down)
            parent, _, name = fam.ffn.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, name, streamed)
            self._predict[i] = streamed.activation
            return streamed
        streamed = StreamedDown(self, i, down)
        setattr(ffn, fam.down, streamed)
        first = fam.module(layer, "up")
        self._predict[i] = lambda x, first=first, act=act: act(first(x))
        return streamed

    # ---------------------------------------------------------------------------------------------- per layer
    def _install_lookahead(self, margin: float | None) -> None:
        """Wire the look-ahead (its predictor's ``margin``: None = the prefetch margin) (:data:`LOOKAHEADS`, module docstring): dense mode lets the reader read the next
        layer's region ahead; otherwise every dense layer l followed by a dense layer gets a hook on its FFN norm
        (whose input is the residual after attention, whose output is the FFN input) that predicts layer l+1's set
        and puts its reads in flight (``entry``: from :meth:`_layer_entry` instead)."""
        self._la_pred: dict[int, np.ndarray] = {}  # look-ahead predictions not yet scored, per unit
        self._la_stats = np.zeros(3, dtype=np.int64)  # predicted, active, predicted & active (look-ahead only)
        self._la_next: dict[int, tuple[int, Any]] = {}  # unit of layer l -> (unit of layer l+1, its FFN norm)
        self.lookahead_margin = self.margin if margin is None else float(margin)
        if not self.lookahead_margin > 0:
            self.close()
            raise CoactError(f"lookahead margin must be > 0, got {margin}")
        if self.lookahead == "off":
            return
        if self.reader.dense:
            if not getattr(self.handle, "units", None):  # one region per layer, read in layer order
                self.reader.lookahead = 1
            return
        # the misses of layer l overtake a look-ahead of l+1 after at most one chunk (runtime.stream)
        self.reader.prefetch_chunk = 2 * max(1, int(self.reader.queue_depth))
        fam = self.family
        assert fam is not None
        units = getattr(self, "_layer_units", None) or {li: {None: li} for li in range(len(self._layers))}
        for li, layer in enumerate(self._layers):
            u, nxt = units.get(li, {}).get(None), units.get(li + 1, {}).get(None)
            if u is None or nxt is None or nxt not in self._predict:
                continue  # a mixture-of-experts layer on either side: no look-ahead across it
            self._la_next[u] = (nxt, fam.norm(self._layers[li + 1], "post"))
            if self.lookahead.startswith("entry"):
                continue
            norm = fam.norm(layer, "post")
            if isinstance(norm, nn.Module):
                self._hooks.append(norm.register_forward_hook(
                    lambda mod, args, out, u=u: self._lookahead_ffn(u, args[0], out)))
            else:  # no FFN norm (post-norm blocks): the FFN input is the residual itself
                self._hooks.append(fam.ffn_module(layer).register_forward_pre_hook(
                    lambda mod, args, u=u: self._lookahead_ffn(u, args[0], args[0])))

    def _predict_next(self, u: int, state: torch.Tensor, *, normed: bool) -> None:
        """Predict the set of the unit after ``u`` from ``state`` (a residual, normalised here by that layer's FFN
        norm, or an FFN input when ``normed``) and put its reads in flight."""
        nxt, norm = self._la_next[u]
        with torch.no_grad():
            x = state.reshape(1, -1)
            a = self._predict[nxt](x if normed else norm(x))
            ids = np.flatnonzero(self._mask(nxt, a * self.lookahead_margin)[0].numpy())
        self._la_pred[nxt] = ids
        self._pred[nxt] = ids
        self.reader.prefetch(nxt, ids)

    def _lookahead_ffn(self, u: int, mid: torch.Tensor, x: torch.Tensor) -> None:
        """FFN entry of unit ``u`` (hook on its FFN norm): the look-ahead of the next layer, from the residual after
        attention (``mid``) or the FFN input (``x``). Its time counts as predictor time, not attention."""
        if not self.prefetch_on or mid.shape[0] * mid.shape[1] != 1:
            return
        t0 = _clock()
        if self.lookahead.startswith("x"):
            self._predict_next(u, x, normed=True)
        else:
            self._predict_next(u, mid, normed=False)
        dt = _clock() - t0
        if self.timings:
            self.timings[-1].predict_ns += dt
        self._attn_start += dt

    def _layer_entry(self, idx: int, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """Layer entry (before attention): the same-layer prefetch (``post``/``input`` predictor) of unit ``idx``,
        unless a look-ahead already predicted it and the look-ahead mode has no ``+post`` top-up (then only the
        bundles the look-ahead did not ask for are added); the ``entry`` look-ahead of the next layer."""
        t0 = _clock()
        if self.prefetch_on:
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[0] * h.shape[1] == 1:
                la = self.lookahead
                if la == "off" or la.endswith("+post") or idx not in self._la_pred:
                    with torch.no_grad():
                        assert self.family is not None
                        norm = self.family.norm(layer, self.predictor)
                        a = self._predict[idx](norm(h.reshape(1, -1)))
                        pred = self._mask(idx, a * self.margin)[0]
                    ids = np.flatnonzero(pred.numpy())
                    early = self._pred.get(idx)
                    self._pred[idx] = ids if early is None else np.union1d(early, ids)
                    self.reader.prefetch(idx, ids)
                if la.startswith("entry") and idx in self._la_next:
                    self._predict_next(idx, h, normed=False)
        t1 = _clock()
        if self.timings:
            self.timings[-1].predict_ns += t1 - t0
        self._attn_start = t1

    def _mask(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        if self.sparsifier is None:
            return torch.ones_like(a, dtype=torch.bool)
        return self.sparsifier.mask(layer, a)

    def _ffn(self, mlp: StreamedMLP, x: torch.Tensor) -> torch.Tensor:
        t0 = _clock()
        tm = self.timings[-1] if self.timings else TokenTiming()
        tm.attention_ns += t0 - self._attn_start
        self.reader.poll()  # attention is over: note whether the layer's prefetch already completed
        a = mlp.activation(x)  # the same ops on the same shapes as the in-memory model
        keep = self._mask(mlp.layer, a)
        am = a * keep.to(a.dtype)
        tm.gate_ns += _clock() - t0
        return self._streamed_out(mlp, x, am, keep, tm)

    def _ffn_plain(self, mod: StreamedDown, a: torch.Tensor) -> torch.Tensor:
        t0 = _clock()
        tm = self.timings[-1] if self.timings else TokenTiming()
        tm.attention_ns += t0 - self._attn_start
        self.reader.poll()
        keep = self._mask(mod.layer, a)
        am = a * keep.to(a.dtype)
        tm.gate_ns += _clock() - t0
        return self._streamed_out(mod, None, am, keep, tm)

    def _streamed_out(self, mod: Any, x: torch.Tensor | None, am: torch.Tensor, keep: torch.Tensor,
                      tm: TokenTiming) -> torch.Tensor:
        """Per token: fetch the bundles of the kept neurons and compute the FFN output from them. ``x`` is the FFN
        input of a gated FFN (None for plain FFNs, whose ``am`` already is the masked activation)."""
        n = am.shape[-1]
        d = self.reader.d_model
        up_mod, down_mod = mod.proj.up, mod.proj.down
        rows = am.reshape(-1, n)
        lead = am.shape[:-1]
        xs = None if x is None else x.reshape(-1, x.shape[-1])
        outs = []
        pred = self._pred.pop(mod.layer, None)
        la_pred = self._la_pred.pop(mod.layer, None)
        bias_up = self.pack_biases and up_mod is not None and getattr(up_mod, "bias", None) is not None
        for t in range(rows.shape[0]):
            ids = np.flatnonzero(keep.reshape(-1, n)[t].numpy())
            if pred is not None:
                self._pred_stats += (pred.size, ids.size, np.intersect1d(pred, ids, assume_unique=True).size)
            if la_pred is not None:
                self._la_stats += (la_pred.size, ids.size, np.intersect1d(la_pred, ids, assume_unique=True).size)
            f0 = _clock()
            raw = self.reader.fetch_raw(mod.layer, ids)
            f1 = _clock()
            # One vectorised widening of the fetched bundles (torch's fp16 -> fp32 cast; numpy's is scalar code):
            # exact values, the pack holds them in its dtype.
            w = torch.from_numpy(raw).float()
            sel = torch.from_numpy(ids)
            am_t = rows[t : t + 1].reshape(*([1] * (len(lead) - 1)), 1, n)
            x_t = None if xs is None else xs[t : t + 1].reshape(*([1] * (len(lead) - 1)), 1, -1)
            if self.exact:
                # Scatter the bundles into the dense-shaped scratch weights of hidden copies of the model's own
                # projection modules and run them: rows/columns outside S hold stale values that meet a zero of
                # `am`, so every float operation is the one the in-memory sparse model performs (bit-identical
                # FFN output, so no CATS threshold decision downstream can flip).
                self._scatter(down_mod, sel, w[:, -1, :d], column=True)
                h = am_t
                if x_t is not None:
                    self._scatter(up_mod, sel, w[:, 0, :d], column=False)
                    if bias_up:
                        up_mod.bias.data.index_copy_(0, sel, w[:, 0, d])
                    h = am_t * up_mod(x_t)
                outs.append(down_mod(h))
            else:  # k-sized matmuls on the fetched bundles: fewer FLOPs, no scatter; equal up to summation order
                h = am_t.reshape(-1).index_select(0, sel)
                if x_t is not None:
                    u = torch.mv(w[:, 0, :d], x_t.reshape(-1))
                    if bias_up:
                        u = u + w[:, 0, d]
                    h = h * u
                y = h @ w[:, -1, :d]
                if getattr(down_mod, "bias", None) is not None:
                    y = y + down_mod.bias
                outs.append(y.reshape(am_t.shape[:-1] + (d,)))
            tm.fetch_ns += f1 - f0
            tm.ffn_ns += _clock() - f1
        return torch.cat(outs, dim=-2).reshape(*lead, d) if len(outs) > 1 else outs[0].reshape(*lead, d)

    def _scatter(self, mod: nn.Module, ids: torch.Tensor, rows: torch.Tensor, *, column: bool) -> None:
        """Write the fetched parts of neurons ``ids`` into the scratch weight of projection ``mod`` (down: columns of
        ``[d, N]``, or rows of a Conv1D's ``[N, d]``; up: rows of ``[N, d]``, or columns of a Conv1D's ``[d, N]``).
        The column scatter is the exact path's main extra cost (strided writes; ~1-3 ms per SmolLM2 layer); the
        compact path (``exact=False``) has none."""
        assert self.family is not None
        w = mod.weight.data
        if column != self.family.conv1d:
            w[:, ids] = rows.t()
        else:
            w.index_copy_(0, ids, rows)

    # ----------------------------------------------------------------------------------------------- per token
    def new_kv(self) -> Any:
        """An empty KV cache, or for a model that expects a BOS (:attr:`coact.models.ModelHandle.bos`) one that
        holds the BOS position, computed once with a dense FFN (as :meth:`coact.models.ModelHandle.forward` does)
        and copied for every window/prompt; the BOS step is not a measured token."""
        from transformers import DynamicCache

        kv = DynamicCache(config=self.model.config)
        if self.handle.bos is None:
            return kv
        if self._bos_kv is None:
            sp, pre = self.sparsifier, self.prefetch_on
            self.sparsifier, self.prefetch_on = None, False
            try:
                self.step(int(self.handle.bos), kv)
            finally:
                self.sparsifier, self.prefetch_on = sp, pre
            self.timings.pop()
            self.reader.tokens.pop()
            self._bos_kv = kv
        return copy.deepcopy(self._bos_kv)

    def step(self, token: int, kv: Any) -> torch.Tensor:
        """Run one token through the model (appending to `kv`); returns float32 logits [vocab]."""
        self.reader.begin_token()
        tm = TokenTiming()
        self.timings.append(tm)
        prev = torch.get_num_threads()
        if self.threads is not None and self.threads != prev:
            torch.set_num_threads(self.threads)
        t0 = _clock()
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[int(token)]]), use_cache=True, **{self._cache_arg: kv})
            logits = out.logits[0, -1]
        finally:
            tm.wall_ns = _clock() - t0
            if torch.get_num_threads() != prev:
                torch.set_num_threads(prev)
        return logits

    def generate(self, prompt_ids: Sequence[int], max_tokens: int, *, keep_logits: bool = False) -> dict[str, Any]:
        """Greedy generation: the prompt token by token, then `max_tokens` new tokens."""
        return greedy(self.step, self.new_kv(), prompt_ids, max_tokens, keep_logits=keep_logits)

    def perplexity(self, stream: np.ndarray, *, start: int, tokens: int, ctx: int = 256) -> dict[str, Any]:
        """Teacher-forced perplexity of tokens [start, start + tokens), windows as :mod:`coact.accuracy`."""
        return stepwise_perplexity(self.step, self.new_kv, stream, start=start, tokens=tokens, ctx=ctx)

    # ----------------------------------------------------------------------------------------------- reporting
    def reset_stats(self) -> None:
        self.timings.clear()
        self.reader.tokens.clear()
        self._pred_stats[:] = 0
        self._la_stats[:] = 0

    def report(self, skip: int = 0) -> dict[str, Any]:
        """Speed, compute/I/O split per token, bytes, cache and prefetch figures, DRAM used (first `skip` tokens
        left out, e.g. warm-up)."""
        tms = self.timings[skip:]
        ios = self.reader.tokens[skip:]
        n = len(tms)
        io = summarize(ios)
        wall = np.array([t.wall_ns for t in tms], dtype=np.float64) / 1e6
        ms = {f: (sum(getattr(t, f) for t in tms) / n / 1e6 if n else None) for f in
              ("attention_ns", "gate_ns", "predict_ns", "ffn_ns", "fetch_ns", "wall_ns")}
        per = io["per_token"]
        wait_ms = per["wait_ns"] / 1e6
        compute_ms = None if not n else (ms["wall_ns"] - wait_ms)
        p, q = self._pred_stats, self._la_stats
        resident = sum(x.numel() * x.element_size() for x in self.model.parameters())
        resident += sum(x.numel() * x.element_size() for x in self.model.buffers())
        return {
            "tokens": n,
            "tokens_per_s": (n / (wall.sum() / 1e3)) if n and wall.sum() > 0 else None,
            "ms_per_token": {
                "wall": ms["wall_ns"], "p50": float(np.percentile(wall, 50)) if n else None,
                "p99": float(np.percentile(wall, 99)) if n else None,
                "compute": compute_ms, "attention": ms["attention_ns"], "gate": ms["gate_ns"],
                "predict": ms["predict_ns"], "ffn": ms["ffn_ns"],
                "fetch": ms["fetch_ns"], "io_wait": wait_ms, "io_total": per["io_ns"] / 1e6,
                "io_hidden": per["hidden_ns"] / 1e6,
                "decode_and_cache": None if not n else ms["fetch_ns"] - wait_ms,
            },
            "per_token": {"bytes_read": per["bytes_read"], "bytes_requested": per["bytes_requested"],
                          "reads": per["reads"], "active": per["active"], "hits": per["hits"],
                          "loaded": per["loaded"], "wasted_bytes": per["wasted_bytes"],
                          "covered": per.get("covered", 0)},
            "hit_rate": io["hit_rate"],
            "prefetch": {"on": self.prefetch_on, "predictor": self.predictor, "margin": self.margin,
                         "precision_vs_load": io["prefetch_precision"], "recall_vs_load": io["prefetch_recall"],
                         "predictor_precision": (p[2] / p[0]) if p[0] else None,
                         "predictor_recall": (p[2] / p[1]) if p[1] else None,
                         "hidden_fraction": io["hidden_fraction"], "lookahead": self.lookahead,
                         "lookahead_margin": self.lookahead_margin,
                         # the look-ahead predictor alone (layers 1..L-1; all tokens of the run, like the above)
                         "lookahead_precision": (q[2] / q[0]) if q[0] else None,
                         "lookahead_recall": (q[2] / q[1]) if q[1] else None},
            "dram": {"cache_bytes": self.reader.cache_bytes, "read_buffers": self.reader.dram_bytes
                     - self.reader.cache_bytes, "ffn_streamed_bytes": self.reader.dram_bytes,
                     "compute_scratch_bytes": sum(u.numel() * 4 for u in self._scratch_bufs.values()),
                     "resident_model_bytes": int(resident), "ffn_bytes_on_flash": self.reader.ffn_bytes,
                     "budget_fraction": self.budget_fraction},
            "config": self.reader.describe(),
            "moe": self._moe_report(),
        }

    def _moe_report(self) -> dict[str, Any] | None:
        """Mixture-of-experts layers (None for a dense model): how many, experts (pack units) in them, and what
        the prefetch covers (:mod:`coact.online_moe`)."""
        moe = [m for m in self._streamed if isinstance(m, StreamedExperts)]
        if not moe:
            return None
        return {"moe_layers": len(moe), "experts": sum(len(m.units) for m in moe),
                "dense_layers": len(self._streamed) - len(moe), "prefetch": PREFETCH_SCOPE}

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "FlashModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- helpers
def parse_lookahead(lookahead: int | str) -> str:
    """The look-ahead mode of :class:`FlashModel` (:data:`LOOKAHEADS`): 0 or ``"off"``, 1 (= ``"mid"``, the most
    precise cross-layer predictor measured, bench/results/online_lookahead.md) or a variant name."""
    if isinstance(lookahead, bool) or not isinstance(lookahead, (int, str)):
        raise CoactError(f"lookahead is 0, 1 or one of {', '.join(LOOKAHEADS)}; got {lookahead!r}")
    mode = {0: "off", 1: "mid", "0": "off", "1": "mid"}.get(lookahead, lookahead)
    if mode not in LOOKAHEADS:
        raise CoactError(f"unknown lookahead {lookahead!r}; choose 0, 1 or one of {', '.join(LOOKAHEADS)}")
    return mode


def check_budget(budget: float) -> float:
    b = float(budget)
    if not 0.0 <= b <= 1.0:
        raise CoactError(f"--budget is a fraction of the FFN bytes in [0, 1], got {budget}")
    return b


def check_pack(pack: str | Path) -> dict[str, Any]:
    """The pack's header, or a user error if it is not one the online engine can run (``up-down`` bundles)."""
    p = Path(pack)
    if not p.exists():
        raise CoactError(f"pack file {p} not found")
    with PackFile(p) as pf:
        header = dict(pf.header)
    check_pack_header(p, header)
    return header


def check_pack_header(path: str | Path, header: dict[str, Any]) -> None:
    """A user error unless the online engine can run a pack with this header: ``up-down`` bundles (dense layers,
    or one unit per expert of a mixture-of-experts layer: :mod:`coact.online_moe`)."""
    if header["bundle"] != "up-down":
        raise CoactError(f"{path}: bundle schema {header['bundle']!r} is not supported from flash; the online "
                         "engine needs 'up-down' packs (the gate stays in DRAM to choose the neurons)")


def check_pack_model(pack: str | Path, header: dict[str, Any], handle: ModelHandle) -> None:
    """A user error unless the pack holds this model's FFN units: same model id, d_model, and the same units
    (layer, expert, width) in the same order (one dense unit per layer when neither lists units)."""
    if header.get("model_id") and header["model_id"] != handle.model_id:
        raise CoactError(f"{pack}: pack is for model {header['model_id']!r}, not {handle.model_id!r}")
    pack_units = [(u["layer"], u["expert"], u["n"]) for u in header["units"]] if header.get("units") else \
        [(li, None, n) for li, n in enumerate(header["n_neurons"])]
    model_units = [(u.layer, u.expert, u.n) for u in handle.units] if handle.units else \
        [(li, None, handle.n_neurons) for li in range(handle.n_layers)]
    if pack_units != model_units or header["d_model"] != handle.d_model:
        raise CoactError(f"{pack}: pack has {_units_text(pack_units)} x d_model {header['d_model']}, the model "
                         f"{_units_text(model_units)} x d_model {handle.d_model}")


def _units_text(units: list[tuple[int, int | None, int]]) -> str:
    """``"30 layers x 1536 neurons"``, or for units ``"8 units (2 layers, 8 experts)"``."""
    if all(e is None for _, e, _ in units) and len({n for _, _, n in units}) <= 1:
        return f"{len(units)} layers x {units[0][2] if units else 0} neurons"
    n_exp = sum(e is not None for _, e, _ in units)
    return f"{len(units)} units ({len({li for li, _, _ in units})} layers, {n_exp} experts)"


def _alignments(handle: ModelHandle, layer: Any) -> dict[str, int]:
    """Address modulo 64 of the weights a layer's streamed projections hold (``up``, ``down``, ``up_bias``; an
    MoE layer: every expert's, :func:`coact.online_moe.expert_alignments`)."""
    fam = handle.adapter
    assert fam is not None
    if fam.moe_block(layer) is not None:
        return expert_alignments(fam, layer)
    n = fam.n_neurons(layer)
    down = fam.module(layer, "down")
    up = fam.module(layer, "gate_up" if fam.fused else "up")
    out = {"down": down.weight.data_ptr() % 64, "up": (up.weight[n:] if fam.fused else up.weight).data_ptr() % 64}
    if getattr(up, "bias", None) is not None:
        out["up_bias"] = (up.bias[n:] if fam.fused else up.bias).data_ptr() % 64
    return out


def _queue_depth(engine: str) -> int:
    _, params = parse_engine(engine)
    return int(params.get("queue_depth", 1))


def _cache_kwarg(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def greedy(step: Callable[[int, Any], torch.Tensor], kv: Any, prompt_ids: Sequence[int], max_tokens: int, *,
           keep_logits: bool = False) -> dict[str, Any]:
    """Greedy decoding with a per-token `step(token, kv) -> logits`; the prompt is fed token by token.

    Returns {"prompt_ids", "tokens" (generated ids), "logits" (float32 [len(prompt) + max_tokens - 1, V] of every
    step when keep_logits)}.
    """
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise CoactError("empty prompt: give at least one token of text")
    if int(max_tokens) <= 0:
        raise CoactError(f"--max-tokens must be > 0, got {max_tokens}")
    rows: list[torch.Tensor] = []
    logits = None
    for t in prompt:
        logits = step(t, kv)
        if keep_logits:
            rows.append(logits.clone())
    out: list[int] = []
    for i in range(int(max_tokens)):
        assert logits is not None
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        if i + 1 < int(max_tokens):
            logits = step(nxt, kv)
            if keep_logits:
                rows.append(logits.clone())
    res: dict[str, Any] = {"prompt_ids": prompt, "tokens": out}
    if keep_logits:
        res["logits"] = torch.stack(rows)
    return res


def stepwise_perplexity(step: Callable[[int, Any], torch.Tensor], new_kv: Callable[[], Any], stream: np.ndarray, *,
                        start: int, tokens: int, ctx: int = 256) -> dict[str, Any]:
    """Teacher-forced perplexity token by token with a KV cache (same windows and predictions as
    :func:`coact.accuracy.perplexity`: c - 1 predictions per window of c tokens)."""
    nll, n = 0.0, 0
    for w in token_windows(stream, int(start), int(tokens), int(ctx)):
        kv = new_kv()
        for j in range(len(w) - 1):
            logits = step(int(w[j]), kv).double()
            nll -= float(torch.log_softmax(logits, -1)[int(w[j + 1])])
            n += 1
    if n == 0:
        raise CoactError("no token to predict: every window has fewer than 2 tokens")
    return {"ppl": float(np.exp(nll / n)), "nll": nll / n, "n_predicted": n, "n_tokens": int(tokens),
            "ctx": int(ctx), "token_start": int(start)}


def model_step(model: Any) -> Callable[[int, Any], torch.Tensor]:
    """`step(token, kv) -> logits` of an in-memory HF model (the reference the flash model is compared with)."""
    arg = _cache_kwarg(model)

    def step(token: int, kv: Any) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([[int(token)]]), use_cache=True, **{arg: kv}).logits[0, -1]

    return step


def new_kv_for(model: Any) -> Callable[[], Any]:
    from transformers import DynamicCache

    return lambda: DynamicCache(config=model.config)


@contextmanager
def rounded_ffn(handle: ModelHandle, dtype: str) -> Iterator[None]:
    """Within the block, the FFN weights the online engine reads from a pack are rounded to the pack dtype
    (``fp16``: the values an fp16 pack holds; ``fp32``: unchanged); restored afterwards. Gated FFNs: up (and its
    bias) and down; plain FFNs: down only. What stays resident (gate, fc1 of a plain FFN, the down bias) is never
    rounded."""
    if dtype == "fp32":
        yield
        return
    if dtype != "fp16":
        raise CoactError(f"unknown pack dtype {dtype!r}")
    saved = []
    fam = handle.adapter
    assert fam is not None
    n = handle.n_neurons
    for layer in handle.decoder_layers():
        targets = streamed_expert_weights(fam, layer)  # an MoE layer: every expert's up half and down
        if not targets:
            targets = [fam.module(layer, "down").weight]
        if fam.gated and fam.moe_block(layer) is None:
            up = fam.module(layer, "gate_up" if fam.fused else "up")
            targets += [up.weight[n:] if fam.fused else up.weight]
            if getattr(up, "bias", None) is not None:
                targets.append(up.bias[n:] if fam.fused else up.bias)
        for w in targets:
            saved.append((w, w.data.clone()))
            w.data.copy_(w.data.half().float())
    try:
        yield
    finally:
        for w, old in saved:
            w.data.copy_(old)


# --------------------------------------------------------------------------------------------- application
def resolve_sparsifier(handle: ModelHandle, *, method: str | None = "cats", sparsity: float | None = None,
                       thresholds_from: str | Path | None = None, corpus: str = "pydoc", calib_tokens: int = 1024,
                       ctx: int = 256, stream: np.ndarray | None = None) -> Sparsifier | None:
    """The sparsifier for the online engine: thresholds of a trace of the same model, or calibrated like
    :func:`coact.workflow.measure_perplexity` on corpus tokens [0, calib_tokens) (needs the full model: call it
    before the up/down weights are removed). ``method=None``: dense (no sparsifier)."""
    if method is None:
        return None
    if thresholds_from is not None:
        p = Path(thresholds_from)
        if not p.exists():
            raise CoactError(f"trace {p} not found")
        ref = Trace.load(p)
        if ref.model_id != handle.model_id:
            raise TraceError(f"{p} was captured from {ref.model_id!r}, not {handle.model_id!r}")
        sp_meta = ref.meta.get("sparsifier") or {}
        thresholds = sp_meta.get("thresholds")
        if not thresholds:
            raise CoactError(f"missing thresholds: trace {p} records no CATS thresholds (sparsifier "
                             f"{sp_meta.get('name')!r})")
        return get_sparsifier("cats", sparsity=float(sp_meta.get("sparsity", 0.5)), thresholds=thresholds)
    if sparsity is None:
        raise CoactError("missing thresholds: give --thresholds-from TRACE or --sparsity S")
    sp = get_sparsifier(method, sparsity=sparsity)
    if sp.needs_calibration:
        if stream is None:
            stream = tokenize(load_text(corpus), handle.tokenizer)
        # per unit: an expert calibrates on the tokens routed to it (as `coact trace` does); dense: every token
        sp.calibrate(calibration_activations(handle, token_windows(stream, 0, int(calib_tokens), int(ctx))))
    return sp


def open_flash_model(pack: str | Path, *, model: str = "smollm2", method: str | None = "cats",
                     sparsity: float | None = None, thresholds_from: str | Path | None = None,
                     corpus: str = "pydoc", calib_tokens: int = 1024, budget: float = 0.1, policy: str = "lru",
                     policy_params: dict[str, Any] | None = None, engine: str = "threads:16", collapse: int | str = 0, cost: str | Path | None = None,
                     prefetch: bool = True, predictor: str = "post", margin: float = 1.0,
                     dense: bool = False) -> FlashModel:
    """Validate the cheap inputs, load the model, resolve the sparsifier (with the full model), then build the
    :class:`FlashModel` (which removes up/down from DRAM)."""
    check_budget(budget)
    CACHES.entry(policy)
    header = check_pack(pack)
    if method is not None and thresholds_from is None and sparsity is None:
        raise CoactError("missing thresholds: give --thresholds-from TRACE or --sparsity S")
    cost_model = None
    if cost is not None:
        cost_model = CostModel.load(cost)
    handle = load_model(model)
    check_pack_model(pack, header, handle)
    sp = resolve_sparsifier(handle, method=method, sparsity=sparsity, thresholds_from=thresholds_from,
                            corpus=corpus, calib_tokens=calib_tokens)
    return FlashModel(pack, handle, sparsifier=sp, budget=budget, policy=policy, policy_params=policy_params,
                      engine=engine, collapse=collapse,
                      cost_model=cost_model, prefetch=prefetch, predictor=predictor, margin=margin, dense=dense,
                      copy_model=False)


def run_generate(pack: str | Path, prompt: str, max_tokens: int, **kw: Any) -> dict[str, Any]:
    """`coact generate --from PACK`: greedy generation from flash; the text and the speed report."""
    if not prompt or not prompt.strip():
        raise CoactError("empty prompt: give --prompt TEXT")
    if int(max_tokens) <= 0:
        raise CoactError(f"--max-tokens must be > 0, got {max_tokens}")
    with open_flash_model(pack, **kw) as fm:
        ids = fm.handle.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise CoactError("empty prompt: the text has no tokens")
        res = fm.generate(ids, max_tokens)
        text = fm.handle.tokenizer.decode(res["tokens"])
        return {"prompt": prompt, "text": text, "tokens": res["tokens"], "n_prompt": len(ids),
                "report": fm.report()}


def run_flash_perplexity(pack: str | Path, *, corpus: str = "pydoc", tokens: int = 512, start: int | None = None,
                         ctx: int = 256, calib_tokens: int = 1024, **kw: Any) -> dict[str, Any]:
    """`coact perplexity --from PACK`: teacher-forced perplexity computed from flash, plus the speed report."""
    with open_flash_model(pack, corpus=corpus, calib_tokens=calib_tokens, **kw) as fm:
        fm.handle.check_inputs(ctx=int(ctx))
        sp = fm.sparsifier
        if start is None:
            start = calib_tokens
        if (sp is not None and kw.get("thresholds_from") is None and kw.get("method", "cats") is not None
                and int(start) < int(calib_tokens)):
            raise CoactError(f"evaluated tokens [{start}, {start + tokens}) overlap the calibration tokens "
                             f"[0, {calib_tokens}); use --start >= {calib_tokens} or --thresholds-from")
        stream = tokenize(load_text(corpus), fm.handle.tokenizer)
        res = fm.perplexity(stream, start=int(start), tokens=int(tokens), ctx=int(ctx))
        return {"corpus": corpus, "flash": res, "sparsifier": None if sp is None else sp.params(),
                "report": fm.report()}


__all__ = ["FlashModel", "StreamedMLP", "TokenTiming", "PREDICTORS", "LOOKAHEADS", "parse_lookahead",
           "check_budget", "check_pack",
           "check_pack_header", "greedy",
           "stepwise_perplexity", "model_step", "new_kv_for", "rounded_ffn", "resolve_sparsifier",
           "open_flash_model", "run_generate", "run_flash_perplexity"]
