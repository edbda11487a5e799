"""Executors (common/executors.py): results in input order and identical whichever executor runs the work; solving
layers through a local process pool or a local Ray instance gives exactly the serial placements."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from common.executors import Executor, ExecutorError, SerialExecutor, executor_names, get_executor
from solvers.base import solve_layers

try:
    from tests.synthetic import planted_chain_graph
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from synthetic import planted_chain_graph


def _slow_square(x: int) -> int:
    """Later items finish first (so completion order differs from input order)."""
    import time

    time.sleep(0.02 * (5 - x % 5))
    return x * x


def _niceness(_: int) -> int:
    import os

    return os.nice(0)


def _thread_env(_: int) -> dict:
    import os

    from common.executors import WORKER_THREAD_ENV

    return {k: os.environ.get(k) for k in WORKER_THREAD_ENV}


def _boom(x: int) -> int:
    if x == 3:
        raise ValueError("item 3")
    return x


@pytest.fixture(scope="module")
def graphs():
    return [planted_chain_graph(300, seed=s).graph for s in range(3)]


@pytest.fixture(scope="module")
def local2():
    """One 2-worker process pool for the module (spawning workers costs seconds)."""
    with get_executor("local:2") as ex:
        yield ex


@pytest.fixture(scope="module")
def serial_perms(graphs):
    return {spec: solve_layers(graphs, spec, seed=5, time_limit=1.0).perms for spec in ("ripple", "local-search")}


@pytest.fixture(scope="module")
def ray_executor():
    """ONE local Ray instance (2 CPUs) for the whole module; shut down at the end."""
    pytest.importorskip("ray")
    ex = get_executor("ray:2")
    yield ex
    ex.close()


def test_specs_and_errors():
    assert set(executor_names()) >= {"serial", "local", "ray"}
    assert isinstance(get_executor("serial"), SerialExecutor)
    assert get_executor("local:3").workers == 3
    ex = SerialExecutor()
    assert get_executor(ex) is ex and isinstance(ex, Executor)
    for bad in ("nope", "local:x", "local:0", "serial:2"):
        with pytest.raises(ExecutorError) as e:
            get_executor(bad)
        assert isinstance(e.value, UserError)


@pytest.mark.parametrize("spec", ["serial", "local:2"])
def test_map_in_input_order_with_progress(spec, local2):
    seen = []
    ex = local2 if spec == "local:2" else get_executor(spec)
    out = ex.map(_slow_square, iter(range(9)), progress=lambda d, done, tot: seen.append((done, tot)),
                     description="sq", total=9)
    assert out == [x * x for x in range(9)]
    assert seen[0] == (0, 9) and seen[-1] == (9, 9) and len(seen) == 10


def test_workers_run_one_thread_per_library(local2):
    """Each worker runs one layer on one CPU: BLAS/OpenMP/numba pools of 1 thread (no N workers x N threads)."""
    for env in local2.map(_thread_env, range(2)):
        assert set(env.values()) == {"1"}


def test_local_map_reraises_worker_error(local2):
    with pytest.raises(ValueError, match="item 3"):
        local2.map(_boom, range(6))


def test_solve_layers_local_identical_to_serial(graphs, serial_perms, local2):
    for solver, want in serial_perms.items():
        got = solve_layers(graphs, solver, seed=5, time_limit=1.0, executor=local2).perms
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_ray_identical_to_serial(ray_executor, graphs, serial_perms):
    assert ray_executor.workers == 2
    assert ray_executor.map(_slow_square, range(7)) == [x * x for x in range(7)]
    assert all(set(env.values()) == {"1"} for env in ray_executor.map(_thread_env, range(2)))
    # Ray's default runs workers at nice 15; a local instance started by coact runs them at the caller's priority
    # (as the process pool does), so any niced background job does not starve them.
    assert set(ray_executor.map(_niceness, range(4))) == {_niceness(0)}
    with pytest.raises(ValueError, match="item 3"):
        ray_executor.map(_boom, range(6))
    for solver, want in serial_perms.items():
        got = solve_layers(graphs, solver, seed=5, time_limit=1.0, executor=ray_executor).perms
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_bound_layers_identical_across_executors(graphs, local2):
    from solvers.bounds import bound_layers

    serial = bound_layers(graphs, time_limit=None)
    assert bound_layers([lambda g=g: g for g in graphs[:0]] + list(graphs), executor=local2, time_limit=None) == serial
