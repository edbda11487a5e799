"""The one permutation check (placements from solvers, perms in layout and pack files).

Why here: a placement is a bijection ``perm[position] = neuron``; a layout file with a repeated or missing neuron
would make a pack skip neurons silently, so every producer and every loader checks it the same way.
"""
from __future__ import annotations

import numpy as np

from common.errors import PermutationError


def check_permutation(perm: object, n: int | None = None, *, what: str = "placement",
                      error: type[Exception] = PermutationError) -> np.ndarray:
    """Return ``perm`` as a 1-D int64 array after checking it is a permutation of ``range(n)`` (``n`` defaults to
    its length); raise ``error`` (a :class:`PermutationError` by default) with a one-line reason otherwise."""
    p = np.asarray(perm)
    if p.ndim != 1 or (n is not None and p.shape[0] != int(n)):
        want = f"({int(n)},)" if n is not None else "1-D"
        raise error(f"{what} has shape {p.shape}, expected {want}")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise error(f"{what} dtype {p.dtype} is not integer")
    p = p.astype(np.int64, copy=False)
    size = p.shape[0]
    if size and (int(p.min()) < 0 or int(p.max()) >= size):
        raise error(f"{what} has out-of-range neuron ids")
    seen = np.zeros(size, dtype=bool)
    seen[p] = True
    if not seen.all():
        raise error(f"{what} is not a permutation (repeated or missing neurons)")
    return p
