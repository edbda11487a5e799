"""User errors of the application side (models, corpora, traces, statistics), under the project's one root.

Why: the CLI maps exactly :class:`common.errors.UserError` to ``error: ...`` and exit code 2; anything else is a bug
and keeps its traceback. ``ValueError`` stays a second base so that library callers catching it keep working.
"""
from __future__ import annotations

from common.errors import UserError


class CoactError(UserError, ValueError):
    """Base class of errors caused by bad input on the application side (missing files, wrong model, bad
    parameters)."""


class ModelError(CoactError):
    """The model cannot be found or is not a supported causal LM with an MLP."""


class CorpusError(CoactError):
    """The corpus cannot be found or has too few tokens."""


class TraceError(CoactError):
    """A trace is missing, corrupt, or does not match what it is used with."""
