"""Placement solvers. Importing this package registers every built-in solver (see solvers.base)."""
from solvers import simple  # noqa: F401
from solvers import ripple  # noqa: F401
from solvers import local_search  # noqa: F401
from solvers import path_cover  # noqa: F401
from solvers import ortools_tsp  # noqa: F401
from solvers import leiden  # noqa: F401
from solvers import spectral  # noqa: F401
from solvers import collapse  # noqa: F401
