"""The user-facing failures of the flash side, all under one root, :class:`FlashError`.

Why a hierarchy: the CLI turns exactly :class:`common.errors.UserError` into a one-line ``error: ...`` and exit code
2; anything else is a bug and keeps its traceback. So every failure caused by the user's input or machine (a foreign
layout file, a pack written for another layout, an engine spec like ``threads:x``, a budget outside [0, 1], a file
system without O_DIRECT, a corrupt cost model) raises one of these classes, while broken internal invariants stay
``AssertionError`` / ``RuntimeError``. Unknown *names* (cache policy, engine, pipeline) raise the registry's
:class:`common.errors.RegistryError`, which is a ``UserError`` too.

Second bases keep older ``except`` clauses working: layout, pack, cache, pipeline, device and plan errors are still
``ValueError``, an unavailable engine is still a ``RuntimeError`` and missing O_DIRECT support is still an
``OSError``.
"""
from __future__ import annotations

from common.errors import UserError


class FlashError(UserError):
    """Root of the runtime's user errors (bad layout, pack, engine, cache, pipeline or device input)."""


class LayoutError(FlashError, ValueError):
    """A layout that is malformed, corrupt, or does not fit the model it is used with (one-line message)."""


class PackError(FlashError, ValueError):
    """A pack file that is foreign, truncated, inconsistent or does not match the layout (one-line message)."""


class EngineError(FlashError, ValueError):
    """A bad I/O engine spec or parameter (``threads:x``, a queue depth out of range)."""


class EngineUnavailable(FlashError, RuntimeError):
    """A registered engine cannot run on this machine (e.g. no working io_uring binding); the message says why."""


class DirectIOUnsupported(FlashError, OSError):
    """The platform or the file system does not support O_DIRECT reads (e.g. tmpfs before Linux 6.6)."""


class CacheError(FlashError, ValueError):
    """Bad cache-policy parameters: a negative budget, a missing ``freq`` for a pinned policy, ``k < 1``, ..."""


class PlanError(FlashError, ValueError):
    """Inputs a read plan cannot be made from: a trace that does not fit the layout, a bad collapse gap."""


class PipelineError(FlashError, ValueError):
    """A pipeline comparison that cannot run as asked: a budget fraction outside [0, 1], a missing layout, pack or
    cost model."""


class DeviceError(FlashError, ValueError):
    """Bad device-profile parameters or a cost-model file that is not one."""


class FioError(FlashError, RuntimeError):
    """fio is missing or failed, or an iolog file is not fio's trace format v2."""


__all__ = ["FlashError", "LayoutError", "PackError", "EngineError", "EngineUnavailable", "DirectIOUnsupported",
           "CacheError", "PlanError", "PipelineError", "DeviceError", "FioError"]
