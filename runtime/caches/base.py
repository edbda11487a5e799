"""The DRAM cache protocol, its registry, and what every policy shares.

Why a cache changes the picture: the load set of a token is its active set minus what DRAM already holds
(docs/DESIGN.md §2), so a cache both removes bytes and breaks runs apart. Comparisons between placements are only
fair at the same DRAM budget, so the budget is in bytes, shared by all layers (one pool, as in a real inference
engine), and every policy guarantees ``resident bundles * bundle_bytes <= budget`` at all times.

Protocol (per token, layers in order): ``S = cache.filter(layer, A)`` gives the neurons still to load (and marks the
hits as used); after reading them ``cache.admit(layer, S, run_lengths)`` offers them to the cache. `run_lengths`
(optional, same length as S) is, for every loaded neuron, the length in bundles of the run of consecutive flash
positions it was read in; it is computed only for policies that set ``wants_runs = True`` (``ripple``), so a policy
that ignores it costs nothing extra. :func:`load_masks` is that loop, shared by the simulator, the replay and the
pipelines' cache choice, so all three drive a cache identically.

Built-in policies register themselves in :data:`CACHES` from :mod:`runtime.caches.simple` (none, lru, window),
:mod:`runtime.caches.s3fifo` (s3fifo, ripple) and :mod:`runtime.caches.pinned` (pinned, pinned+X); the registry
imports those modules on its first lookup, so this module imports none of them (no import cycle). Third parties
add theirs with :func:`register_cache`; ``runtime.testing.check_cache`` checks one against the protocol.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from common.registry import Registry
from runtime.errors import CacheError
from runtime.planner import load_run_lengths


@runtime_checkable
class Cache(Protocol):
    """A DRAM bundle cache shared by all layers.

    Attributes:
        name: registry name (reported in the configuration).
        budget_bytes: DRAM budget for cached bundles, all layers together.
        bundle_bytes: size of one bundle (so capacity = budget_bytes // bundle_bytes bundles).
    """

    name: str
    budget_bytes: int
    bundle_bytes: int

    def filter(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """Neurons of `neurons` that are not resident (the load set), in input order; hits count as a use."""
        ...

    def admit(self, layer: int, loaded: np.ndarray, run_lengths: np.ndarray | None = None) -> None:
        """Offer the bundles just read; the policy may keep them (evicting others) or not.

        `run_lengths[i]` (optional) is the length in bundles of the run of positions `loaded[i]` was read in.
        """
        ...

    @property
    def resident_bundles(self) -> int:
        """Number of bundles held now (all layers)."""
        ...

    def resident(self, layer: int) -> np.ndarray:
        """Sorted neuron ids of `layer` held now."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able configuration for reports."""
        ...


CacheFactory = Callable[..., Cache]

#: name -> factory ``factory(budget_bytes, bundle_bytes, **params) -> Cache``; built-ins load on the first lookup.
CACHES: Registry = Registry("cache policy", modules=("runtime.caches.simple", "runtime.caches.s3fifo",
                                                     "runtime.caches.pinned"))


#: Decorator adding a policy ``factory(budget_bytes, bundle_bytes, **params) -> Cache`` under a name:
#: ``@register_cache("name", "one-line description")``; a taken name is refused
#: (:class:`common.errors.RegistryError`), the description defaults to the docstring's first line.
register_cache = CACHES.register
#: Registered policy names, sorted.
available_caches = CACHES.names


def get_cache(name: str | None, budget_bytes: int, bundle_bytes: int, **params: Any) -> Cache:
    """A fresh cache of policy `name` (``None`` means ``"none"``). Caches are stateful: use one per replay.

    Raises :class:`common.errors.RegistryError` for an unknown policy or parameter name and
    :class:`runtime.errors.CacheError` for a bad budget or parameter value.
    """
    key = "none" if name is None else str(name)
    if int(budget_bytes) < 0 or int(bundle_bytes) <= 0:
        raise CacheError(f"budget_bytes must be >= 0 and bundle_bytes > 0, got {budget_bytes} and {bundle_bytes}")
    return CACHES.create(key, int(budget_bytes), int(bundle_bytes), **params)


def load_masks(cache: Cache, active: Sequence[np.ndarray], layers: Sequence[int],
               inverses: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Drive `cache` over a chunk of tokens: the load set of every (token, layer) as boolean masks.

    `active[j]` is bool [T, N] for layer ``layers[j]``; tokens are visited in order and, within a token, layers in
    the given order (the order a model runs them, which is what the cache state must follow). `inverses[layer]`
    maps neurons to flash positions, for the run lengths of run-aware policies. The cache's state carries over
    between calls, so a trace can be fed chunk by chunk.
    """
    load = [np.zeros_like(a) for a in active]
    wants_runs = bool(getattr(cache, "wants_runs", False))
    for t in range(active[0].shape[0] if len(active) else 0):
        for j, layer in enumerate(layers):
            s = cache.filter(layer, np.flatnonzero(active[j][t]))
            if wants_runs:
                cache.admit(layer, s, load_run_lengths(inverses[layer], s))
            else:
                cache.admit(layer, s)
            load[j][t, s] = True
    return load


# --------------------------------------------------------------------------------------------- for implementations


class CacheBase:
    """What the built-in policies share: the budget arithmetic, the base of ``describe()``, and lookups in
    [layers, neurons] state tables that grow as new layers and neurons are seen.

    Why tables that grow: a policy does not know the model's shape when it is created (``get_cache`` takes only a
    budget), and per-(layer, neuron) numpy tables make every filter/admit call a handful of vectorised operations
    instead of per-neuron Python work.
    """

    name = "base"
    wants_runs = False  # whether admit() uses run_lengths (the planner only computes them when asked)

    def __init__(self, budget_bytes: int, bundle_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self.bundle_bytes = int(bundle_bytes)
        self.capacity = self.budget_bytes // self.bundle_bytes

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "budget_bytes": self.budget_bytes, "capacity_bundles": self.capacity}


def grow_table(arr: np.ndarray, layer: int, max_neuron: int, fill: int) -> np.ndarray:
    """`arr` [layers, neurons] grown (new cells = `fill`) to hold row `layer` and column `max_neuron`; columns grow
    to a power of two so that growth is rare."""
    rows, cols = arr.shape
    if layer < rows and max_neuron < cols:
        return arr
    new = np.full((max(rows, layer + 1), max(cols, 1 << int(max_neuron).bit_length())), fill, dtype=arr.dtype)
    new[:rows, :cols] = arr
    return new


def table_values(table: np.ndarray, layer: int, neurons: np.ndarray, fill: Any) -> np.ndarray:
    """``table[layer, neurons]``, with `fill` for a layer or neuron the table has not grown to yet."""
    out = np.full(neurons.size, fill, dtype=table.dtype)
    if layer < table.shape[0]:
        inside = neurons < table.shape[1]
        out[inside] = table[layer, neurons[inside]]
    return out


def table_members(mask_row: Callable[[np.ndarray], np.ndarray], table: np.ndarray, layer: int) -> np.ndarray:
    """Sorted neuron ids of `layer` whose table cell passes `mask_row` (none for a layer not seen yet)."""
    if layer >= table.shape[0]:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(mask_row(table[layer])).astype(np.int64)
