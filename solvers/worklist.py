"""The work queue of the local searches (``local-search`` and ``collapse-ls``): "don't-look bits" (Bentley 1992,
"Fast algorithms for geometric traveling salesman problems").

Why: a local search that retried every neuron after every applied move would spend nearly all its time on
neurons whose neighbourhood did not change. Instead each neuron waits in a FIFO queue; a neuron whose best move does
not improve leaves it, and the neurons a move touches re-enter it (at most once: ``inq``). The search is at a local
optimum when the queue is empty. The queue is a ring buffer of capacity n (every neuron at most once), with its head
and length in ``qstate = [head, length]`` so a compiled kernel can stop after a chunk of work and resume later
(the time limit is checked between chunks, in Python).
"""
from __future__ import annotations

import numpy as np
from numba import njit


def new_queue(perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pos, queue, inq, qstate)`` for a search starting at ``perm``: ``pos`` the inverse placement, every neuron
    queued in placement order."""
    n = perm.shape[0]
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n, dtype=np.int64)
    return pos, perm.copy(), np.ones(n, dtype=np.bool_), np.array([0, n], dtype=np.int64)


@njit(cache=True)
def pop(queue, inq, qstate):
    """Take the neuron at the head of the queue (the queue must not be empty)."""
    x = queue[qstate[0]]
    qstate[0] = (qstate[0] + 1) % queue.shape[0]
    qstate[1] -= 1
    inq[x] = False
    return x


@njit(cache=True)
def push(x, queue, inq, qstate):
    """Queue neuron ``x`` unless it is queued already or is -1 (a free path end)."""
    if x >= 0 and not inq[x]:
        queue[(qstate[0] + qstate[1]) % queue.shape[0]] = x
        inq[x] = True
        qstate[1] += 1
