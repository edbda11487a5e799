"""One exception family for bad user input, so the CLI can turn any of them into a one-line error and exit 2."""
from __future__ import annotations


class CoactError(ValueError):
    """Base class of errors caused by bad input (missing files, wrong model, bad parameters)."""


class ModelError(CoactError):
    """The model cannot be found or is not a supported causal LM with an MLP."""


class CorpusError(CoactError):
    """The corpus cannot be found or has too few tokens."""


class TraceError(CoactError):
    """A trace is missing, corrupt, or does not match what it is used with."""
