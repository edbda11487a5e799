"""coact.accuracy.allocate: per-layer sparsities within a cost budget (pure function, no model)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coact.accuracy import allocate

LEVELS = (0.3, 0.5, 0.7, 0.9)


def _cost(sens: np.ndarray, sp: np.ndarray) -> float:
    lv = np.concatenate([[0.0], LEVELS])
    return float(sum(np.interp(s, lv, np.maximum.accumulate(np.concatenate([[0.0], row])))
                     for row, s in zip(sens, sp)))


def test_cheap_layers_get_more_sparsity() -> None:
    sens = np.array([[0.01, 0.02, 0.04, 0.08],     # robust layer
                     [1.0, 2.0, 4.0, 8.0]])         # sensitive layer
    sp = allocate(sens, LEVELS, budget_nll=0.1)
    assert sp[0] > sp[1]
    assert _cost(sens, sp) <= 0.1 + 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 2.0), min_size=4, max_size=4), min_size=1, max_size=6),
       st.floats(0.0, 3.0))
def test_budget_is_respected_and_monotone(rows, budget) -> None:
    sens = np.sort(np.array(rows), axis=1)
    sp = allocate(sens, LEVELS, budget)
    assert sp.shape == (len(rows),) and np.all((sp >= 0) & (sp <= 0.95))
    assert _cost(sens, sp) <= budget + 1e-6
    more = allocate(sens, LEVELS, budget * 2 + 0.1)
    assert more.mean() >= sp.mean() - 1e-9
