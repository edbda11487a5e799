"""The root of every user-facing failure.

Why one root: the CLI must tell *bad input* (a missing file, a wrong model, an unknown solver name, an engine that
cannot run here) from a *bug*. Every package defines its own user-error classes under :class:`UserError`; the CLI
maps exactly these to ``error: ...`` and exit code 2, and lets any other exception keep its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class of failures caused by the user's input or environment, never by a bug in coact."""


class RegistryError(UserError, KeyError):
    """An unknown name, a duplicate registration, or bad parameters for a registered factory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PermutationError(UserError, ValueError):
    """An array that should be a permutation of range(n) is not."""


class OutputExistsError(UserError, FileExistsError):
    """An output path holds something a writer may not replace: an unrelated file or folder, an input of the same
    run, a symbolic link (dangling or not). Only an artefact of the same kind (recognised by its metadata) is
    replaced; see :func:`common.atomic.check_output`."""

    def __str__(self) -> str:  # OSError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""
