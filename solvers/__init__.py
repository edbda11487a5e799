"""Placement solvers: order the neurons of one layer so co-activated neurons are adjacent in flash.

Solvers take plain data (a symmetric co-activation count matrix and per-neuron activation counts, or a
:class:`CoactGraph`) and return a permutation. The built-in solvers register themselves in :data:`SOLVERS` when the
registry first needs them (its ``modules=``), so importing this package imports none of them.
"""
from solvers.base import (
    SOLVERS,
    ChainSolver,
    SolveResult,
    Solver,
    SolverBase,
    available_solvers,
    check_permutation,
    get_solver,
    objective,
    register,
    solve_layers,
)
from solvers.errors import GraphError, SolverError
from solvers.graph import CoactGraph, as_graph

__all__ = ["SOLVERS", "ChainSolver", "CoactGraph", "GraphError", "SolveResult", "Solver", "SolverBase",
           "SolverError", "as_graph", "available_solvers", "check_permutation", "get_solver", "objective",
           "register", "solve_layers"]
