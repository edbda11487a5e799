"""I/O engines: how the replay issues the O_DIRECT reads of one (token, layer).

All engines give the same bytes and counts; only the speed differs:

- ``sync`` (:mod:`runtime.engines.sync`): one blocking preadv at a time (queue depth 1), the simplest baseline;
- ``threads`` (:mod:`runtime.engines.threads`): a fixed pool of threads, up to ``queue_depth`` preadv in flight;
- ``uring`` (:mod:`runtime.engines.uring`): io_uring through the optional ``liburing`` binding (imported only when
  the engine is used).

The protocol and the registry are in :mod:`runtime.engines.base`; pick an engine with
``get_engine("threads:16", path)``.
"""
from runtime.engines.base import (
    ENGINES,
    Engine,
    EngineFactory,
    SlotEngine,
    available_engines,
    engine_queue_depth,
    engine_status,
    get_engine,
    parse_engine,
    register_engine,
)
from runtime.engines.sync import SyncEngine
from runtime.engines.threads import ThreadsEngine
from runtime.engines.uring import UringEngine, uring_status
from runtime.errors import EngineError, EngineUnavailable

__all__ = [
    "ENGINES", "Engine", "EngineFactory", "SlotEngine", "available_engines", "engine_queue_depth", "engine_status",
    "get_engine", "parse_engine", "register_engine", "SyncEngine", "ThreadsEngine", "UringEngine", "uring_status",
    "EngineError", "EngineUnavailable",
]
