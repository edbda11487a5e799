"""Bit-packing of active sets.

Why: a trace holds one active set per (token, layer). Stored as booleans that is N bytes; bit-packed it is N/8,
which keeps a 20k-token trace of SmolLM2 (30 x 1536 neurons) at ~115 MB instead of ~920 MB, and numpy's
`packbits`/`unpackbits` convert at memory speed. Bit order is little-endian within a byte (neuron i is bit i % 8 of
byte i // 8), fixed here so every part of coact (trace, stats, runtime, solvers) agrees.
"""
from __future__ import annotations

import numpy as np

BITORDER = "little"


def n_packed_bytes(n_neurons: int) -> int:
    """Bytes needed to hold `n_neurons` bits."""
    return (int(n_neurons) + 7) // 8


def pack_bits(active: np.ndarray) -> np.ndarray:
    """Pack a boolean array (..., N) into uint8 (..., ceil(N/8)) along the last axis."""
    return np.packbits(np.asarray(active, dtype=bool), axis=-1, bitorder=BITORDER)


def unpack_bits(packed: np.ndarray, n_neurons: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 (..., ceil(N/8)) -> bool (..., N)."""
    out = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=int(n_neurons), bitorder=BITORDER)
    return out.view(bool)


def active_indices(packed_row: np.ndarray, n_neurons: int) -> np.ndarray:
    """Sorted neuron ids set in one packed active set (1-D uint8)."""
    return np.flatnonzero(unpack_bits(packed_row, n_neurons))
