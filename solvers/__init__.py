"""Placement solvers. Importing this package registers every built-in solver (see solvers.base)."""
from solvers import simple  # noqa: F401
from solvers import ripple  # noqa: F401
