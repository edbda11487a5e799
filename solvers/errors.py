"""The errors of the solvers package.

Why their own module, under :class:`common.errors.UserError`: a bad solver name, a bad parameter, a malformed graph
or an instance a solver refuses is the *user's* input, so the CLI prints one line and exits 2 instead of a
traceback; and ``solvers/`` may not import ``coact/`` (docs/ARCHITECTURE.md), so these cannot derive from
``coact.errors``. They also derive from ``ValueError``, which is what they are and what callers written before the
common root caught.
"""
from __future__ import annotations

from common.errors import UserError


class SolverError(UserError, ValueError):
    """Bad solver name or parameters, a bad argument to ``solve`` (e.g. a negative time limit), or an instance a
    solver refuses (e.g. too large)."""


class GraphError(SolverError):
    """Malformed graph input (not square, not symmetric, negative or fractional counts, unknown weight kind)."""
