"""DRAM caches of neuron bundles, in front of the flash reads.

Every policy shares one byte budget over all layers and is picked by name with ``get_cache(name, budget_bytes,
bundle_bytes, **params)``:

- ``none``, ``lru``, ``window`` (:mod:`runtime.caches.simple`);
- ``s3fifo``, ``ripple`` (:mod:`runtime.caches.s3fifo`);
- ``pinned``, ``pinned+lru``, ``pinned+s3fifo``, ``pinned+window``, ``pinned+ripple`` (:mod:`runtime.caches.pinned`).

The protocol, the registry and the loop that drives a cache over a trace are in :mod:`runtime.caches.base`.
"""
from runtime.caches.base import (
    CACHES,
    Cache,
    CacheBase,
    CacheFactory,
    available_caches,
    get_cache,
    load_masks,
    register_cache,
)
from runtime.caches.pinned import DYNAMIC_POLICIES, PinnedCache, PinnedPlusCache
from runtime.caches.s3fifo import RippleCache, S3FIFOCache
from runtime.caches.simple import LRUCache, NoCache, WindowCache
from runtime.errors import CacheError

__all__ = [
    "CACHES", "Cache", "CacheBase", "CacheFactory", "available_caches", "get_cache", "load_masks", "register_cache",
    "DYNAMIC_POLICIES", "PinnedCache", "PinnedPlusCache", "RippleCache", "S3FIFOCache", "LRUCache", "NoCache",
    "WindowCache", "CacheError",
]
