"""Executors: where independent per-layer work runs (this process, a local process pool, or a Ray cluster).

Why one small protocol: statistics, solving, bounds and packing are loops over layers whose iterations share
nothing, so a 7B model (32 layers) or a 70B one (80 layers) can use every core of one machine or every node of a
cluster without the loops knowing which. Each loop calls ``executor.map(fn, items)``; the executor decides where
``fn(item)`` runs. The contract that makes the choice safe:

- ``map`` returns ``[fn(x) for x in items]`` **in input order**, whichever executor runs it and whichever item
  finishes first, so results are identical to the serial loop as long as ``fn`` is deterministic (solvers are:
  every layer gets its own seed, see :func:`solvers.base.solve_layers`).
- ``items`` may be a lazy iterable: pool and Ray executors keep at most a few items per worker in flight, so a
  caller that builds each layer's input on demand holds only ``O(workers)`` of them at once.
- ``fn`` and the items must be picklable for the pool and Ray executors (module-level functions, plain data).
- An exception raised by ``fn`` is re-raised by ``map`` (the first one in input order).

Built-ins (:data:`EXECUTORS`, selected by :func:`get_executor` from a spec string as on the command line
``--executor``): ``serial`` (a plain loop in this process: no pickling, the reference), ``local`` / ``local:N``
(a ``concurrent.futures`` process pool, N workers, default: the CPU count; ``spawn`` start method, because the
parent may hold BLAS/numba threads that ``fork`` would copy in a locked state), ``ray`` / ``ray:N`` (start a
local Ray instance with N CPUs, or use the one already initialised in this process) and ``ray:ADDRESS``
(connect to an existing cluster, e.g. ``ray:auto`` or ``ray:ray://head:10001``). Ray is optional and imported only
inside :class:`RayExecutor`, so ``common`` still needs nothing but the standard library and numpy.

Why processes rather than threads: the per-layer kernels are numba/numpy loops that mostly hold the GIL (the greedy,
union-find, local search), and HiGHS is called through scipy with the GIL held for its Python glue.

**One thread per worker.** A worker runs one layer on one CPU, so every worker process (pool and local Ray) gets
:data:`WORKER_THREAD_ENV` (OpenMP, OpenBLAS, MKL, numexpr, numba threads = 1) before it imports the job's modules, and
torch's intra-op threads are set to 1 if torch is loaded: with N workers on N cores, a BLAS or ``prange`` call inside
a job would otherwise start N threads per worker (N² threads fighting for N cores).

**Workers at the caller's priority.** Ray starts its workers at ``nice 15`` by default (to keep its own daemons
responsive). On a 2-core machine that made every niced background job (a bound run at ``nice 10``) win the CPU
against coact's Ray workers but not against the process pool's (which inherit the caller's priority): measured,
the same 32 solves took 40 % more CPU wall time per layer with 2 Ray workers than with 1, and Ray's 2-vs-1 speed-up
was 1.47x against the pool's 1.97x. A local instance started here therefore sets ``worker_niceness`` to 0 (Ray's
``_system_config``); an existing cluster (``ray:ADDRESS``) keeps its own setting (``RAY_worker_niceness`` when the
cluster is started).

**Measuring a speed-up on a shared machine.** The ratio of two wall times is only meaningful when both runs see the
same background load: measure them interleaved and repeated (``bench/bench_scale.py --steps ray``), and report the
load next to each number. Under a load of 15 on 2 cores, a per-layer CPU time of 0.5 s becomes 5 s of wall time.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from typing import Any, Callable, Iterable, Protocol, TypeVar, runtime_checkable

from common.errors import UserError
from common.progress import ProgressFn, notify
from common.registry import Registry

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "SerialExecutor",
           "WORKER_THREAD_ENV", "executor_names", "get_executor"]

T = TypeVar("T")

#: Environment of every worker process: one thread per library (see the module docstring).
WORKER_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _worker_init() -> None:
    """Pool worker initializer: one thread per library (libraries loaded later in the worker read the environment;
    torch, if already loaded, is told directly)."""
    os.environ.update(WORKER_THREAD_ENV)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
R = TypeVar("R")


class ExecutorError(UserError):
    """A bad executor spec, or Ray missing / unreachable."""


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn`` over items somewhere; see the module docstring for the contract."""

    name: str
    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: ProgressFn | None = None,
            description: str = "", total: int | None = None) -> list[R]:
        """``[fn(x) for x in items]`` in input order; reports each completed item to ``progress``."""
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...


def _total(items: Iterable[Any], total: int | None) -> int | None:
    if total is not None:
        return int(total)
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Base:
    name = ""
    workers = 1

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Base":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<executor {self.name} workers={self.workers}>"


class SerialExecutor(_Base):
    """A plain loop in this process (the reference every other executor must match)."""

    name = "serial"

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: ProgressFn | None = None,
            description: str = "", total: int | None = None) -> list[R]:
        tot = _total(items, total)
        notify(progress, description, 0, tot)
        out: list[R] = []
        for x in items:
            out.append(fn(x))
            notify(progress, description, len(out), tot)
        if tot is None:
            notify(progress, description, len(out), len(out))
        return out


def _windowed(submit: Callable[[Any], Any], wait_one: Callable[[list], Any], result: Callable[[Any], Any],
              items: Iterable[Any], window: int, progress: ProgressFn | None, description: str,
              tot: int | None) -> list[Any]:
    """Shared driver of the parallel executors: at most ``window`` items in flight, results stored by index, so the
    output is in input order whatever the completion order."""
    notify(progress, description, 0, tot)
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    it = enumerate(items)
    exhausted = False
    done = 0
    while True:
        while not exhausted and len(pending) < window:
            try:
                i, x = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[submit(x)] = i
        if not pending:
            break
        for h in wait_one(list(pending)):
            results[pending.pop(h)] = h
            done += 1
            notify(progress, description, done, tot)
    if tot is None:
        notify(progress, description, done, done)
    # re-raise the first failure in input order (result() raises it)
    return [result(results[i]) for i in range(len(results))]


class LocalExecutor(_Base):
    """A pool of ``workers`` processes on this machine (``spawn``; see the module docstring)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        w = (os.cpu_count() or 1) if workers is None else int(workers)
        if w < 1:
            raise ExecutorError(f"local executor needs >= 1 worker, got {workers}")
        self.workers = w
        self._pool: cf.ProcessPoolExecutor | None = None

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                initializer=_worker_init)
        return self._pool

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: ProgressFn | None = None,
            description: str = "", total: int | None = None) -> list[R]:
        pool = self._get_pool()

        def wait_one(fs: list) -> Any:
            return cf.wait(fs, return_when=cf.FIRST_COMPLETED).done

        return _windowed(lambda x: pool.submit(fn, x), wait_one, lambda f: f.result(), items, 2 * self.workers,
                         progress, description, _total(items, total))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(_Base):
    """Tasks on Ray: a local instance (``workers`` CPUs), the one already initialised in this process, or an existing
    cluster at ``address``. Only an instance this executor started is shut down by :meth:`close`."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray: pip install 'coact[ray]' (or pip install ray)") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = int(workers) if workers else (os.cpu_count() or 1)
                kw["_system_config"] = {"worker_niceness": 0}
                # a local instance's workers see this process's import path (as the spawn pool's do), so functions
                # defined in scripts and test modules unpickle there too
                path = [p for p in sys.path if p and os.path.isdir(p)]
                kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(path), **WORKER_THREAD_ENV}}
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(f"could not start or reach Ray ({address or 'local'}): {e}") from None
            self._started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.address = address

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: ProgressFn | None = None,
            description: str = "", total: int | None = None) -> list[R]:
        ray = self._ray
        task = ray.remote(num_cpus=1, max_retries=0)(fn)

        def wait_one(refs: list) -> Any:
            ready, _ = ray.wait(refs, num_returns=1)
            return ready

        return _windowed(lambda x: task.remote(x), wait_one, ray.get, items, 2 * self.workers, progress,
                         description, _total(items, total))

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


#: name -> factory(arg) where arg is the text after ':' in the spec (or None).
EXECUTORS: Registry = Registry("executor")


def _int_arg(name: str, arg: str | None) -> int | None:
    if arg is None or arg == "":
        return None
    try:
        return int(arg)
    except ValueError:
        raise ExecutorError(f"executor {name!r}: expected a worker count after ':', got {arg!r}") from None


def _serial(arg: str | None = None) -> SerialExecutor:
    if arg:
        raise ExecutorError(f"executor 'serial' takes no argument, got {arg!r}")
    return SerialExecutor()


def _local(arg: str | None = None) -> LocalExecutor:
    return LocalExecutor(_int_arg("local", arg))


def _ray(arg: str | None = None) -> RayExecutor:
    if arg and arg.isdigit():
        return RayExecutor(workers=int(arg))
    return RayExecutor(address=arg or None)


EXECUTORS.add("serial", _serial, "a plain loop in this process (the reference)")
EXECUTORS.add("local", _local, "a local process pool; local:N for N workers (default: all CPUs)")
EXECUTORS.add("ray", _ray, "Ray: ray (start a local instance), ray:N (N local CPUs), ray:ADDRESS (existing cluster)")


def executor_names() -> list[str]:
    return EXECUTORS.names()


def get_executor(spec: "str | Executor | None" = None) -> Executor:
    """An executor from a spec string (``serial``, ``local``, ``local:4``, ``ray``, ``ray:2``, ``ray:auto``,
    ``ray:ray://head:10001``); an :class:`Executor` comes back unchanged; None = ``local``."""
    if spec is None:
        spec = "local"
    if not isinstance(spec, str):
        if isinstance(spec, Executor):
            return spec
        raise ExecutorError(f"not an executor spec: {spec!r}")
    name, _, arg = spec.strip().partition(":")
    try:
        factory = EXECUTORS.get(name)
    except UserError as e:
        raise ExecutorError(str(e)) from None
    return factory(arg or None)
