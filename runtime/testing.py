"""Conformance suites for cache policies and I/O engines, importable by third parties (in the style of
scikit-learn's ``check_estimator``).

Why importable: a cache or an engine registered by someone else is compared against the built-ins in the same
reports, so it must keep the same promises: a cache never exceeds its byte budget and never reports a hit on a
neuron it was not given, an engine returns exactly the file's bytes. Writing those checks once, here, means the
built-ins and a plug-in are held to the same definition, and ``tests/test_caches.py`` / ``tests/test_engines.py``
are just these suites run over every registered name.

- :func:`check_cache` runs every check of :func:`cache_checks` on a policy name or a factory
  ``factory(budget_bytes, bundle_bytes, **params) -> Cache``;
- :func:`check_engine` runs every check of :func:`engine_checks` on an engine name (``"threads:4"``) or a factory
  ``factory(path, **params) -> Engine``, against a file on a file system with O_DIRECT (:func:`make_check_file`
  writes a suitable one);
- :func:`parametrize_with_checks` / :func:`parametrize_with_engine_checks` turn them into one pytest case per
  (implementation, check), so a failure names both.

The cache checks drive a policy over seeded random access sequences on :data:`CHECK_LAYERS` x
:data:`CHECK_NEURONS` neurons; when ``hypothesis`` is installed, :func:`check_cache_properties` also runs the same
invariants over hypothesis-generated sequences. Each check raises ``AssertionError`` naming what broke.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from runtime.caches import Cache, get_cache
from runtime.direct import ALIGN, aligned_buffer, has_o_direct
from runtime.engines import Engine, engine_queue_depth, get_engine
from runtime.planner import load_run_lengths

try:  # optional: property-based sequences for the cache suite
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

try:  # optional: only the parametrize helpers need pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

CHECK_LAYERS = 3
CHECK_NEURONS = 48
CHECK_BUNDLE = 100
#: Budget slack added to ``capacity * bundle`` so a policy must round the capacity down, not up.
CHECK_SLACK = 37

CacheMaker = Callable[[int], Cache]  # capacity in bundles -> a fresh cache
Steps = Sequence[tuple[int, Sequence[int]]]  # (layer, active neuron ids) per call


# ------------------------------------------------------------------------------------------------------ caches


def check_freq(seed: int = 0) -> np.ndarray:
    """Activation counts [CHECK_LAYERS, CHECK_NEURONS] for policies that need ``freq`` (pinned ones)."""
    return np.random.default_rng(seed).integers(0, 50, size=(CHECK_LAYERS, CHECK_NEURONS))


def _maker(name_or_factory: str | Callable[..., Cache], params: dict[str, Any]) -> CacheMaker:
    def make(capacity: int) -> Cache:
        budget = capacity * CHECK_BUNDLE + (CHECK_SLACK if capacity else 0)
        if isinstance(name_or_factory, str):
            return get_cache(name_or_factory, budget, CHECK_BUNDLE, **params)
        return name_or_factory(budget, CHECK_BUNDLE, **params)

    return make


def _runs_of(neurons: np.ndarray) -> np.ndarray:
    """Run lengths under the identity placement (positions = neuron ids)."""
    return load_run_lengths(np.arange(CHECK_NEURONS, dtype=np.int64), np.asarray(neurons, dtype=np.int64))


def _random_steps(seed: int, n: int = 60) -> list[tuple[int, list[int]]]:
    """Access sequences with reuse (a hot set per layer) so that caches actually hit."""
    rng = np.random.default_rng(seed)
    hot = [rng.choice(CHECK_NEURONS, size=12, replace=False) for _ in range(CHECK_LAYERS)]
    steps = []
    for _ in range(n):
        layer = int(rng.integers(CHECK_LAYERS))
        ids = np.concatenate([hot[layer][rng.random(12) < 0.6], rng.choice(CHECK_NEURONS, size=6)])
        steps.append((layer, [int(x) for x in dict.fromkeys(rng.permutation(ids).tolist())]))
    return steps


def drive(cache: Cache, steps: Steps) -> list[list[int]]:
    """Run the cache protocol over `steps`, asserting the invariants after every call; return the load sets.

    Invariants: the load set is exactly the active set minus what was resident just before, in input order (so it
    is a subset of the request); a hit is only on a neuron loaded before in the same layer or resident from the
    start (pinned); ``resident_bundles * bundle_bytes <= budget_bytes``; ``resident_bundles`` equals the sum of
    ``resident(layer)`` sizes.
    """
    loaded_ever: set[tuple[int, int]] = set()
    start = {(layer, int(n)) for layer in range(CHECK_LAYERS) for n in cache.resident(layer)}
    outs = []
    budget = cache.budget_bytes
    for layer, active in steps:
        a = np.asarray(active, dtype=np.int64)
        before = set(cache.resident(layer).tolist())
        s = cache.filter(layer, a)
        assert isinstance(s, np.ndarray) and (s.size == 0 or np.issubdtype(s.dtype, np.integer)), \
            "filter() must return an integer numpy array"
        assert s.tolist() == [x for x in a.tolist() if x not in before], "load set != active - resident (in order)"
        for h in set(a.tolist()) - set(s.tolist()):
            assert (layer, h) in loaded_ever or (layer, h) in start, "hit on a neuron never loaded nor pinned"
        cache.admit(layer, s, _runs_of(s) if getattr(cache, "wants_runs", False) else None)
        loaded_ever |= {(layer, int(x)) for x in s.tolist()}
        assert cache.resident_bundles * cache.bundle_bytes <= budget, "budget exceeded"
        assert cache.resident_bundles == sum(cache.resident(x).size for x in range(CHECK_LAYERS)), \
            "resident_bundles != sum of resident(layer) sizes"
        outs.append(s.tolist())
    return outs


def check_cache_protocol(make: CacheMaker) -> None:
    """The object has the :class:`runtime.caches.Cache` attributes and methods, and the budget it was given."""
    c = make(10)
    assert isinstance(c, Cache), "not a runtime.caches.Cache (name, budget_bytes, bundle_bytes, filter, admit, ...)"
    assert isinstance(c.name, str) and c.name, "name must be a non-empty str"
    assert c.budget_bytes == 10 * CHECK_BUNDLE + CHECK_SLACK and c.bundle_bytes == CHECK_BUNDLE


def check_cache_invariants(make: CacheMaker) -> None:
    """:func:`drive` over seeded sequences at several capacities (subset, order, budget, no phantom hits)."""
    for capacity in (1, 5, 20, 200):
        for seed in range(3):
            drive(make(capacity), _random_steps(seed))


def check_cache_deterministic(make: CacheMaker) -> None:
    """The same sequence gives the same load sets (seeds included): a replay must be repeatable."""
    steps = _random_steps(7)
    assert drive(make(15), steps) == drive(make(15), steps), "two fresh caches gave different load sets"


def check_cache_zero_budget(make: CacheMaker) -> None:
    """Budget 0 caches nothing: every request is loaded in full and nothing is ever resident."""
    c = make(0)
    for layer, active in _random_steps(3, 20):
        a = np.asarray(active, dtype=np.int64)
        assert c.filter(layer, a).tolist() == a.tolist(), "a zero-budget cache reported a hit"
        c.admit(layer, a, _runs_of(a) if getattr(c, "wants_runs", False) else None)
        assert c.resident_bundles == 0, "a zero-budget cache holds bundles"


def check_cache_layers_separate(make: CacheMaker) -> None:
    """Neuron i of layer 0 is not neuron i of layer 1: what layer 0 holds is no hit in another layer."""
    c = make(CHECK_NEURONS)
    start1 = set(c.resident(1).tolist())
    ids = np.arange(10, dtype=np.int64)
    for _ in range(3):
        s = c.filter(0, ids)
        c.admit(0, s, _runs_of(s) if getattr(c, "wants_runs", False) else None)
    s1 = c.filter(1, ids)
    assert set(ids.tolist()) - set(s1.tolist()) <= start1, "a neuron cached for layer 0 was a hit in layer 1"


def check_cache_empty_calls(make: CacheMaker) -> None:
    """Empty requests and empty admits are fine (a token may activate nothing in a layer)."""
    c = make(5)
    empty = np.empty(0, dtype=np.int64)
    assert c.filter(0, empty).size == 0
    c.admit(0, empty, empty if getattr(c, "wants_runs", False) else None)
    assert c.resident(CHECK_LAYERS + 5).size == 0, "resident() of a layer never seen must be empty"


def check_cache_describe(make: CacheMaker) -> None:
    """``describe()`` is a JSON-able dict (it goes into every report's configuration)."""
    c = make(10)
    for layer, active in _random_steps(1, 10):
        s = c.filter(layer, np.asarray(active, dtype=np.int64))
        c.admit(layer, s, _runs_of(s) if getattr(c, "wants_runs", False) else None)
    d = c.describe()
    assert isinstance(d, dict), "describe() must return a dict"
    json.dumps(d)


def check_cache_properties(make: CacheMaker, *, max_examples: int = 25) -> None:
    """:func:`drive` and determinism over hypothesis-generated sequences (skipped when hypothesis is missing)."""
    if given is None:  # pragma: no cover
        return
    steps_st = st.lists(st.tuples(st.integers(0, CHECK_LAYERS - 1),
                                  st.lists(st.integers(0, CHECK_NEURONS - 1), max_size=20, unique=True)),
                        max_size=30)

    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(capacity=st.integers(0, 40), steps=steps_st)
    def prop(capacity: int, steps: Steps) -> None:
        assert drive(make(capacity), steps) == drive(make(capacity), steps), "not deterministic"

    prop()


_CACHE_CHECKS = (check_cache_protocol, check_cache_invariants, check_cache_deterministic, check_cache_zero_budget,
                 check_cache_layers_separate, check_cache_empty_calls, check_cache_describe, check_cache_properties)


def cache_checks() -> Iterator[Callable[[CacheMaker], None]]:
    """Every cache check, each taking a maker ``make(capacity_in_bundles) -> fresh Cache``."""
    yield from _CACHE_CHECKS


def check_cache(name_or_factory: str | Callable[..., Cache], **params: Any) -> None:
    """Run every cache check on policy `name_or_factory` (a registered name or a factory
    ``factory(budget_bytes, bundle_bytes, **params)``); `params` go to every construction (pinned policies need
    ``freq=check_freq()``). Raises ``AssertionError`` at the first broken promise."""
    make = _maker(name_or_factory, params)
    for check in cache_checks():
        check(make)


# ----------------------------------------------------------------------------------------------------- engines


EngineMaker = Callable[[Path], Engine]


def make_check_file(path: str | os.PathLike[str], nbytes: int = 64 * ALIGN, *, seed: int = 0) -> Path:
    """A file of `nbytes` random bytes (a multiple of 4 KiB) for :func:`check_engine`; put it on a file system
    with O_DIRECT (not tmpfs)."""
    p = Path(path)
    p.write_bytes(np.random.default_rng(seed).bytes(-(-int(nbytes) // ALIGN) * ALIGN))
    return p


def _engine_maker(name_or_factory: str | Callable[..., Engine], params: dict[str, Any]) -> EngineMaker:
    if isinstance(name_or_factory, str):
        return lambda path: get_engine(name_or_factory, path, **params)
    return lambda path: name_or_factory(path, **params)


def _read_list(size: int, seed: int, n: int = 64) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    blocks = size // ALIGN
    lengths = rng.choice([1, 2, 3], size=n)
    offs = (rng.integers(0, blocks - 3, size=n) * ALIGN).tolist()
    return offs, (lengths * ALIGN).tolist()


@contextmanager
def _opened(make: EngineMaker, path: Path) -> Iterator[Engine]:
    """An engine that is closed afterwards (the protocol asks for close(), not for ``with`` support)."""
    eng = make(path)
    try:
        yield eng
    finally:
        eng.close()


def check_engine_bytes(make: EngineMaker, path: Path) -> None:
    """``submit(offsets, sizes, out=buffers)`` puts exactly the file's bytes at those offsets into the buffers,
    for many mixed-size reads (in any order, overlapping allowed) and for one read larger than 1 MiB."""
    data = path.read_bytes()
    offs, sizes = _read_list(len(data), 0)
    bufs = [aligned_buffer(n) for n in sizes]
    with _opened(make, path) as eng:
        eng.submit(offs, sizes, out=[v for _, v in bufs])
        for o, n, (_, v) in zip(offs, sizes, bufs):
            assert bytes(v[:n]) == data[o : o + n], f"wrong bytes for the read at offset {o} ({n} bytes)"
        big = len(data) // ALIGN * ALIGN
        buf, view = aligned_buffer(big)
        eng.submit(np.array([0]), np.array([big]), out=[view])
        assert bytes(view[:big]) == data[:big], "wrong bytes for one large read (numpy inputs)"
        del buf, bufs


def check_engine_plain_submit(make: EngineMaker, path: Path) -> None:
    """``submit`` without buffers (the replay's timed path) accepts lists and numpy arrays, and an empty list."""
    offs, sizes = _read_list(path.stat().st_size, 1)
    with _opened(make, path) as eng:
        eng.submit(offs, sizes)
        eng.submit(np.asarray(offs[:5]), np.asarray(sizes[:5]))
        eng.submit([], [])
        eng.submit(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))


def check_engine_short_read(make: EngineMaker, path: Path) -> None:
    """A read past the end of the file raises ``OSError`` (an engine that reads nothing cannot pass), and the
    engine is still usable afterwards."""
    size = path.stat().st_size
    with _opened(make, path) as eng:
        try:
            eng.submit([size, 0], [ALIGN, ALIGN])
        except OSError:
            pass
        else:
            raise AssertionError("a read past the end of the file did not raise OSError")
        eng.submit([0, ALIGN], [ALIGN, ALIGN])


def check_engine_o_direct_and_depth(make: EngineMaker, path: Path) -> None:
    """The engine reads with O_DIRECT (when it exposes ``fileno()``) and reports a queue depth >= 1."""
    with _opened(make, path) as eng:
        assert isinstance(eng, Engine), "not a runtime.engines.Engine (name, submit, close)"
        fileno = getattr(eng, "fileno", None)
        if fileno is not None:
            assert has_o_direct(fileno()), "engine file descriptor lacks O_DIRECT"
        assert engine_queue_depth(eng) >= 1, "queue_depth must be >= 1"


def check_engine_close_idempotent(make: EngineMaker, path: Path) -> None:
    """``close()`` may be called twice (``with`` blocks and garbage collection both close)."""
    eng = make(path)
    eng.submit([0], [ALIGN])
    eng.close()
    eng.close()


_ENGINE_CHECKS = (check_engine_o_direct_and_depth, check_engine_bytes, check_engine_plain_submit,
                  check_engine_short_read, check_engine_close_idempotent)


def engine_checks() -> Iterator[Callable[[EngineMaker, Path], None]]:
    """Every engine check, each taking a maker ``make(path) -> fresh Engine`` and the file to read."""
    yield from _ENGINE_CHECKS


def check_engine(name_or_factory: str | Callable[..., Engine], path: str | os.PathLike[str], **params: Any) -> None:
    """Run every engine check on `name_or_factory` (a spec such as ``"threads:4"`` or a factory
    ``factory(path, **params)``) reading the file at `path` (at least 16 KiB, a multiple of 4 KiB, on a file system
    with O_DIRECT: see :func:`make_check_file`). Raises ``AssertionError`` at the first broken promise."""
    p = Path(path)
    if p.stat().st_size < 4 * ALIGN or p.stat().st_size % ALIGN:
        raise ValueError(f"{p}: the check file must be a multiple of {ALIGN} bytes and at least {4 * ALIGN}")
    make = _engine_maker(name_or_factory, params)
    for check in engine_checks():
        check(make, p)


# ------------------------------------------------------------------------------------------------------ pytest


def _label(obj: Any) -> str:
    return obj if isinstance(obj, str) else getattr(obj, "__name__", type(obj).__name__)


def _parametrize(items: Sequence[Any], maker: Callable[[Any, dict[str, Any]], Any],
                 checks: Callable[[], Iterator[Callable[..., None]]]) -> Any:
    if pytest is None:  # pragma: no cover
        raise ImportError("the parametrize helpers need pytest")
    cases = []
    for item in items:
        target, params = item if isinstance(item, tuple) else (item, {})
        make = maker(target, dict(params))
        cases += [pytest.param(make, check, id=f"{_label(target)}-{check.__name__}") for check in checks()]
    return pytest.mark.parametrize("make, check", cases)


def parametrize_with_checks(caches: Sequence[str | Callable[..., Cache] | tuple[Any, dict[str, Any]]]) -> Any:
    """A ``pytest.mark.parametrize("make, check", ...)`` decorator with one case per (cache, check).

    Items are policy names, factories, or ``(name_or_factory, params)`` pairs; the test body is ``check(make)``.
    """
    return _parametrize(caches, _maker, cache_checks)


def parametrize_with_engine_checks(engines: Sequence[str | Callable[..., Engine] | tuple[Any, dict[str, Any]]]
                                   ) -> Any:
    """A ``pytest.mark.parametrize("make, check", ...)`` decorator with one case per (engine, check); the test body
    is ``check(make, path)`` with a file from :func:`make_check_file`."""
    return _parametrize(engines, _engine_maker, engine_checks)


__all__ = [
    "CHECK_LAYERS", "CHECK_NEURONS", "CHECK_BUNDLE", "check_freq", "drive", "cache_checks", "check_cache",
    "make_check_file", "engine_checks", "check_engine", "parametrize_with_checks", "parametrize_with_engine_checks",
    *[c.__name__ for c in _CACHE_CHECKS], *[c.__name__ for c in _ENGINE_CHECKS],
]
