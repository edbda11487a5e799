"""I/O engines (sync, threads, uring): the importable conformance suite (:mod:`runtime.testing`) over every
registered engine and a third-party one, same counts as the simulator, O_DIRECT always, page cache not used; and
the fio reference (iolog v2 export; a real fio run when fio is installed)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common.bits import pack_bits
from common.errors import RegistryError, UserError
from runtime.caches import get_cache
from runtime.direct import aligned_buffer, direct_io_supported, drop_page_cache, has_o_direct, resident_pages
from runtime.engines import (
    ENGINES,
    EngineError,
    EngineUnavailable,
    SyncEngine,
    available_engines,
    engine_queue_depth,
    engine_status,
    get_engine,
    parse_engine,
    register_engine,
    uring_status,
)
from runtime.errors import FioError
from runtime.fio import IOLOG_HEADER, compare_with_fio, fio_binary, flatten_reads, read_iolog, run_fio, write_iolog
from runtime.layout import Layout
from runtime.pack import PackFile, write_pack
from runtime.replay import replay, simulate
from runtime.testing import check_engine, make_check_file, parametrize_with_engine_checks

L, N, D = 3, 256, 576

URING_OK, URING_WHY = uring_status()
SPECS = ["sync", "threads:1", "threads:4", "uring:8"]


def _usable(spec: str) -> None:
    if spec.startswith("uring") and not URING_OK:
        pytest.skip(f"uring engine unavailable here: {URING_WHY}")


def weights_fn(layer: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(layer)
    return {"up": rng.standard_normal((N, D)).astype(np.float32),
            "down": rng.standard_normal((D, N)).astype(np.float32)}


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("engines")
    if not direct_io_supported(d):
        repo = Path(__file__).resolve().parent.parent
        import tempfile

        tmp = tempfile.mkdtemp(prefix=".pytest-odirect-", dir=repo)
        d = Path(tmp)
        if not direct_io_supported(d):
            pytest.skip("no directory with O_DIRECT support")
        yield d
        import shutil

        shutil.rmtree(d, ignore_errors=True)
        return
    yield d


@pytest.fixture(scope="module")
def toy_pack(pack_dir):
    layout = Layout([np.random.default_rng(20 + i).permutation(N) for i in range(L)], model_id="toy", solver="rnd")
    path = write_pack(pack_dir / "toy.pack", weights_fn, layout, d_model=D)
    return path, layout


def trace(T: int = 24, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hot = rng.random((L, N)) < 0.15
    act = (rng.random((T, L, N)) < 0.1) | (hot[None] & (rng.random((T, L, N)) < 0.5))
    return pack_bits(act)


def test_engine_specs_and_registry():
    assert {"sync", "threads", "uring"} <= set(available_engines())
    assert parse_engine("threads") == ("threads", {})
    assert parse_engine("threads:16") == ("threads", {"queue_depth": 16})
    for bad in ("threads:x", "threads:0"):
        with pytest.raises(EngineError, match="bad engine spec"):
            parse_engine(bad)
    assert engine_status("sync") == (True, "ok") and not engine_status("nope")[0]
    assert engine_status("uring") == (URING_OK, URING_WHY)
    assert all(ENGINES.describe().values()), "every engine has a one-line description"
    with pytest.raises(RegistryError, match="registered already"):
        register_engine("sync")(SyncEngine)


def test_bad_engine_input_is_a_user_error(toy_pack):
    with pytest.raises(EngineError, match="queue depth 1"):
        get_engine("sync:4", toy_pack[0])
    with pytest.raises(RegistryError, match="unknown I/O engine 'warp'"):
        get_engine("warp", toy_pack[0])
    with pytest.raises(RegistryError, match="bad parameters"):
        get_engine("threads", toy_pack[0], depth=3)
    with pytest.raises(EngineError, match="queue_depth"):
        get_engine("threads", toy_pack[0], queue_depth=0)
    for exc in (EngineError, EngineUnavailable, RegistryError):
        assert issubclass(exc, UserError)


# ----------------------------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def check_file(pack_dir):
    return make_check_file(pack_dir / "check.bin", 320 * 4096)


@pytest.mark.disk
@parametrize_with_engine_checks(SPECS)
def test_engine_conformance(make, check, check_file, request):
    _usable(request.node.callspec.id)
    check(make, check_file)


class PreadEngine:
    """A third-party engine (not registered by coact): plain buffered-API preadv on an O_DIRECT descriptor."""

    name = "pread-example"

    def __init__(self, path, queue_depth: int = 1):
        self.queue_depth = queue_depth
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        self._buf, self._view = aligned_buffer(1 << 22)

    def fileno(self) -> int:
        return self._fd

    def submit(self, offsets, sizes, out=None) -> None:
        for j, (off, n) in enumerate(zip(offsets, sizes)):
            view = self._view if out is None else memoryview(out[j])
            if os.preadv(self._fd, [view[: int(n)]], int(off)) != n:
                raise OSError(f"short read at {off}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@pytest.mark.disk
def test_third_party_engine_passes_the_suite(check_file):
    check_engine(PreadEngine, check_file)


@pytest.mark.disk
def test_engine_that_reads_nothing_fails_the_suite(check_file):
    class Lazy(PreadEngine):
        def submit(self, offsets, sizes, out=None) -> None:
            return None

    with pytest.raises(AssertionError):
        check_engine(Lazy, check_file)


@pytest.mark.disk
@pytest.mark.parametrize("spec", SPECS)
def test_engine_reads_and_errors(toy_pack, spec: str):
    _usable(spec)
    path, _ = toy_pack
    size = path.stat().st_size
    with get_engine(spec, path) as eng:
        assert has_o_direct(eng.fileno()), "engine file descriptor lacks O_DIRECT"
        assert engine_queue_depth(eng) == (1 if spec == "sync" else int(spec.split(":")[1]))
        rng = np.random.default_rng(0)
        offs = (rng.integers(0, size // 4096 - 4, size=200) * 4096).tolist()
        sizes = rng.choice([4096, 8192, 3 * 4096], size=200).tolist()
        eng.submit(offs, sizes)  # many reads, mixed sizes
        eng.submit(np.array(offs[:7]), np.array(sizes[:7]))  # numpy inputs
        eng.submit([0], [size // 4096 * 4096])  # one read larger than the initial 1 MiB buffers
        eng.submit([], [])
        with pytest.raises(OSError, match="short read"):
            eng.submit([size, 0, 4096], [4096, 4096, 4096])  # past the end of file
        eng.submit([0, 4096], [4096, 4096])  # still usable after an error


@pytest.mark.disk
@pytest.mark.parametrize("spec", SPECS)
def test_every_engine_gives_simulator_counts_and_bypasses_page_cache(toy_pack, spec: str):
    _usable(spec)
    path, layout = toy_pack
    packed = trace()
    with PackFile(path) as pf:
        bb = pf.bundle_bytes
        region = (pf.layer_offset(0), pf.layer_offset(L - 1) + pf.layer_nbytes(L - 1) - pf.layer_offset(0))
    sim = simulate(layout, packed, N, bundle_bytes=bb, collapse_gap=2, cache=get_cache("s3fifo", 60 * bb, bb))
    drop_page_cache(path)
    assert resident_pages(path, *region)[0] == 0
    log: list = []
    rep = replay(path, layout, packed, collapse_gap=2, engine=spec, cache=get_cache("s3fifo", 60 * bb, bb),
                 read_log=log)
    assert rep.counts_dict() == sim.counts_dict()
    assert rep.config["o_direct"] and rep.config["queue_depth"] == engine_queue_depth(get_engine(spec, path))
    # O_DIRECT reads never populate the page cache: the bundle regions are still not resident afterwards
    resident, total = resident_pages(path, *region)
    assert total > 0 and resident == 0
    offs, sizes = flatten_reads(log)
    assert offs.size == rep.reads and int(sizes.sum()) == rep.bytes_read


def test_resident_pages_sees_buffered_reads(tmp_path: Path):
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(64 * 1024))
    drop_page_cache(p)
    before = resident_pages(p)[0]
    p.read_bytes()  # buffered read fills the page cache
    after, total = resident_pages(p)
    assert total == 16 and after >= before and after > 0
    assert resident_pages(p, 4096 * 4, 4096 * 2)[1] == 2
    with pytest.raises(ValueError, match="page size"):
        resident_pages(p, 100)


def test_uring_unavailable_is_a_clear_error(toy_pack, monkeypatch):
    import runtime.engines.uring as ru

    monkeypatch.setattr(ru, "_URING_STATUS", (False, "no binding (test)"))
    with pytest.raises(EngineUnavailable, match="no binding"):
        get_engine("uring", toy_pack[0])


# ------------------------------------------------------------------------------------------------------- fio


def test_iolog_v2_export_format(tmp_path: Path):
    target = tmp_path / "pack.bin"
    target.write_bytes(b"\0" * 8192)
    log = write_iolog(tmp_path / "a.iolog", target, [8192, 0, 4096], [4096, 4096, 8192])
    lines = log.read_text().splitlines()
    name = str(target.resolve())
    assert lines == [IOLOG_HEADER, f"{name} add", f"{name} open", f"{name} read 8192 4096",
                     f"{name} read 0 4096", f"{name} read 4096 8192", f"{name} close"]
    t, o, s = read_iolog(log)
    assert t == name and o.tolist() == [8192, 0, 4096] and s.tolist() == [4096, 4096, 8192]
    with pytest.raises(ValueError, match="same length"):
        write_iolog(tmp_path / "b.iolog", target, [0], [4096, 4096])
    with pytest.raises(FioError, match="white space"):
        write_iolog(tmp_path / "c.iolog", tmp_path / "a b", [0], [4096])
    (tmp_path / "bad.iolog").write_text("fio version 3 iolog\n")
    with pytest.raises(FioError, match="not a fio v2 iolog"):
        read_iolog(tmp_path / "bad.iolog")
    o, s = flatten_reads([([1, 2], [3, 4]), ([], []), (np.array([5]), np.array([6]))])
    assert o.tolist() == [1, 2, 5] and s.tolist() == [3, 4, 6]


@pytest.mark.disk
@pytest.mark.skipif(fio_binary() is None, reason="fio is not installed (.ci/setup installs it: apt-get install fio)")
def test_fio_replays_the_same_list(toy_pack, tmp_path: Path):
    path, layout = toy_pack
    log: list = []
    replay(path, layout, trace(T=6), engine="sync", read_log=log)
    offs, sizes = flatten_reads(log)
    iolog = write_iolog(tmp_path / "r.iolog", path, offs, sizes)
    res = run_fio(iolog, queue_depth=1, expect_reads=int(offs.size))
    assert res["reads"] == offs.size and res["bytes"] == int(sizes.sum()) and res["ioengine"] == "psync"
    res4 = run_fio(iolog, queue_depth=4)
    assert res4["ioengine"] == "libaio" and res4["reads"] == offs.size
    with pytest.raises(FioError, match="issued"):
        run_fio(iolog, expect_reads=int(offs.size) + 1)
    cmp = compare_with_fio(path, log, engine="threads", queue_depth=4, repeats=1, workdir=tmp_path)
    assert cmp["reads"] == offs.size and cmp["queue_depth"] == 4 and cmp["fio_ioengine"] == "libaio"
    assert cmp["runtime_over_fio"] is None or cmp["runtime_over_fio"] > 0
    assert set(cmp["runs"]) == {"runtime_batched_s", "runtime_flat_s", "fio_s"}
