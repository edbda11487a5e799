"""Fault injection: SIGKILL `trace`, `stats`, `solve` and `pack` at random points, then check that the previous
good artefact is intact or the new one complete, that a rerun resumes or restarts correctly, and that the final
artefacts equal an uninterrupted run's (digests).

How: one "zygote" subprocess imports coact once (the imports alone take ~10 s on a small machine) and forks a child
per job; a job is a CLI command line (`coact trace`, `coact solve`) or a short library snippet (statistics of four
layers of the committed sample, a pack of synthetic weights). The test kills the child with SIGKILL after a random
delay drawn from the uninterrupted run's duration. The zygote never runs torch before forking, so the children
start clean. Kills per kind are few (3) so that the whole module stays well under 90 s.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from coact.stats import CoactStats
from coact.trace import Trace, verify_trace
from common.atomic import TMP_MARK
from runtime.layout import load_layout
from runtime.pack import PackFile

KILLS = 3
ROOT = Path(__file__).resolve().parent.parent

ZYGOTE = r'''
import json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
from coact.cli import app
print("ready", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if "argv" in job:
                try:
                    app(job["argv"], prog_name="coact")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            else:
                exec(job["code"], {"__name__": "__job__"})
                code = 0
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"status {status}", flush=True)
'''


class Zygote:
    def __init__(self, tmp: Path):
        script = tmp / "zygote.py"
        script.write_text(ZYGOTE)
        self.log = tmp / "jobs.log"
        env = {**os.environ, "COACT_CACHE": str(tmp / "cache")}
        self.proc = subprocess.Popen([sys.executable, str(script), str(ROOT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=tmp, env=env)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, job: dict, kill_after: float | None = None) -> tuple[bool, int, float]:
        """Run a job; SIGKILL it after ``kill_after`` seconds. Returns (killed, exit code, seconds)."""
        self.proc.stdin.write(json.dumps({**job, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline().split()[1])
        t0 = time.monotonic()
        if kill_after is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], kill_after)
            if not ready:
                os.kill(pid, signal.SIGKILL)  # our own forked child
        status = int(self.proc.stdout.readline().split()[1])
        return os.WIFSIGNALED(status), os.waitstatus_to_exitcode(status), time.monotonic() - t0

    def ok(self, job: dict) -> float:
        killed, code, secs = self.run(job)
        assert not killed and code == 0, self.log.read_text()[-3000:]
        return secs

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def ours(folder: Path) -> list[str]:
    """Temporaries of our naming left in ``folder``."""
    return [n for n in os.listdir(folder) if TMP_MARK in n]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_points(rng: np.random.Generator, secs: float) -> list[float]:
    return sorted(float(x) for x in rng.uniform(0.05, 1.1, KILLS) * secs)


def kill_loop(zygote: "Zygote", job: dict, rng: np.random.Generator, secs: float,
              check: Callable[[], None]) -> int:
    """Run ``job`` killed at random points of a run of ``secs`` seconds, calling ``check`` after each; returns how
    many runs were really killed. Reference runs can be much slower than later ones (caches warm up), so when no
    planned point killed a run, later points are taken at falling fractions of the fastest run seen (at most 6)."""
    killed, fastest = 0, secs
    points = kill_points(rng, secs)
    extra = 0
    while points:
        was_killed, _, took = zygote.run(job, kill_after=points.pop(0))
        check()
        killed += was_killed
        if not was_killed:
            fastest = min(fastest, took)
        if not points and not killed and extra < 6:
            extra += 1
            points.append(fastest * 0.5 ** extra)
    return killed


STATS_CODE = """
from coact.sample import layer_stats, sample_dir
from coact.trace import Trace
layer_stats(Trace.load(sample_dir() / "heldout"), [0, 1, 2, 3], start=0, stop={stop}).save({out!r})
"""

PACK_CODE = """
import numpy as np
from runtime.layout import Layout
from runtime.pack import write_pack
rng = np.random.default_rng({seed})
lay = Layout([rng.permutation(2048) for _ in range(8)], model_id="toy")
def weights(l):
    r = np.random.default_rng(l)
    return {{"up": r.standard_normal((2048, 256), dtype=np.float32),
             "down": r.standard_normal((256, 2048), dtype=np.float32)}}
write_pack({out!r}, weights, lay, d_model=256)
"""


def test_killed_stats_and_solve(zygote: Zygote, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    ref, out = tmp_path / "ref", tmp_path / "s"
    secs = zygote.ok({"code": STATS_CODE.format(stop=256, out=str(ref))})
    new = CoactStats.load(ref).digest
    zygote.ok({"code": STATS_CODE.format(stop=128, out=str(out))})  # the previous good artefact
    old = CoactStats.load(out).digest
    assert old != new
    def stats_intact() -> None:
        assert CoactStats.load(out).digest in (old, new)  # old intact or new complete, never a mix

    assert kill_loop(zygote, {"code": STATS_CODE.format(stop=256, out=str(out))}, rng, secs, stats_intact)
    zygote.ok({"code": STATS_CODE.format(stop=256, out=str(out))})
    assert CoactStats.load(out).digest == new
    assert not ours(tmp_path), "stale temporaries of killed runs were not cleaned"

    # solve: the previous layout survives every kill; the final one equals an uninterrupted run's
    lay_ref, lay_dir = tmp_path / "lay-ref", tmp_path / "lay"
    secs = zygote.ok({"argv": ["solve", str(ref), "--solver", "ripple", "--out", str(lay_ref), "--json"]})
    want = load_layout(lay_ref / "ripple.safetensors").digest
    zygote.ok({"argv": ["solve", str(tmp_path / "s"), "--solver", "frequency", "--out", str(lay_dir)]})
    (lay_dir / "frequency.safetensors").rename(lay_dir / "ripple.safetensors")  # a different previous layout
    prev = load_layout(lay_dir / "ripple.safetensors").digest
    def layout_intact() -> None:
        assert load_layout(lay_dir / "ripple.safetensors").digest in (prev, want)

    kill_loop(zygote, {"argv": ["solve", str(ref), "--solver", "ripple", "--out", str(lay_dir)]}, rng, secs,
              layout_intact)
    zygote.ok({"argv": ["solve", str(ref), "--solver", "ripple", "--out", str(lay_dir)]})
    assert load_layout(lay_dir / "ripple.safetensors").digest == want
    assert not ours(lay_dir)


def test_killed_pack(zygote: Zygote, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    ref, out = tmp_path / "ref.pack", tmp_path / "p.pack"
    secs = zygote.ok({"code": PACK_CODE.format(seed=2, out=str(ref))})
    zygote.ok({"code": PACK_CODE.format(seed=1, out=str(out))})
    good = {sha(out), sha(ref)}
    def pack_intact() -> None:
        with PackFile(out) as pf:
            pf.verify()
        assert sha(out) in good

    assert kill_loop(zygote, {"code": PACK_CODE.format(seed=2, out=str(out))}, rng, secs, pack_intact)
    zygote.ok({"code": PACK_CODE.format(seed=2, out=str(out))})
    assert sha(out) == sha(ref)
    assert not ours(tmp_path)


def test_killed_trace(zygote: Zygote, tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = np.random.default_rng(13)

    def argv(out: Path) -> list[str]:
        return ["trace", "--model", str(tiny_model_dir), "--tokens", "4096", "--ctx", "256", "--calib-tokens",
                "256", "--sparsity", "0.5", "--out", str(out), "--json"]

    ref, out = tmp_path / "ref", tmp_path / "t"
    secs = zygote.ok({"argv": argv(ref)})
    want = verify_trace(ref)["content_digest"]
    def trace_whole() -> None:
        if out.exists():  # completed before the kill: it must be whole
            assert verify_trace(out)["content_digest"] == want

    assert kill_loop(zygote, {"argv": argv(out)}, rng, secs, trace_whole)
    if not out.exists():
        zygote.ok({"argv": argv(out)})  # resumes (or restarts) from whatever the kills left
    assert verify_trace(out)["content_digest"] == want
    assert Trace.load(out).meta["sparsifier"] == Trace.load(ref).meta["sparsifier"]
    assert not Path(str(out) + ".partial").exists() or not (Path(str(out) + ".partial") / "run.json").exists()
    assert not ours(tmp_path)
