"""A mixin for objects that own an OS resource: `with` support and a best-effort close on garbage collection.

Why: file handles, O_DIRECT buffers, thread pools and io_uring rings must be released even when a caller forgets
`close()`; every such class needs the same three methods, so they live here once.
"""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound="Closing")


class Closing:
    """Subclasses implement an idempotent `close()`."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net only
        try:
            self.close()
        except Exception:
            pass
