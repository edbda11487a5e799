"""Activation traces: capture from a real model, store as a Hugging Face `datasets` dataset, read back fast.

A trace has one row per token: `active` (uint8 [n_layers, ceil(N/8)], the bit-packed active set of every unit,
see :mod:`common.bits`), `token_id` and `pos` (index of the token in the corpus stream). Its metadata
(`coact_trace.json` beside the arrow files) says what produced it: model id and shape, sparsifier with its
thresholds, corpus spec and digest, token range and window size, achieved sparsity per layer.

Why `datasets`: memory-mapped arrow files, `save_to_disk`/`load_from_disk`, and users can open a trace with the
library they already know. Why shards: capture is the slow step; it is written in shards of whole windows under
`OUT.partial/`, so an interrupted capture resumes where it stopped (same command again) and the final folder
appears only when complete (written inside `OUT.partial/`, then renamed).

Resuming (version 2): `OUT.partial/run.json` (written atomically, after calibration) records the full capture
config, the calibrated thresholds and a run id; every finished shard has a `done` marker naming that run id and
its row count. A capture resumes only when run.json is complete and its config equals the new one; a different
config is refused (delete `OUT.partial` to start over); a missing or unreadable run.json means nothing in the
folder can be trusted, so its contents are deleted and the capture starts clean. Two captures into the same
`--out` at once are refused: each holds `fcntl.flock` on `OUT.partial/lock` for its whole run.

Integrity (version 2 metadata): `content_digest` (sha256 of the decoded columns: active sets, token ids,
positions; equal for equal data), `files` (sha256 of every file of the folder except the metadata) and
`meta_digest` (sha256 of the metadata itself). :meth:`Trace.load` checks the metadata (types, plausible sizes,
`meta_digest`), that `state.json` names only files inside the folder, and the shapes of the arrow data against
the metadata, cheaply; :func:`verify_trace` recomputes every digest, so one flipped byte anywhere is detected.
Version 1 traces (no digests) still load.

Units (version 3): the rows of ``active`` are *placement units* (:class:`runtime.layout.Unit`), not necessarily
decoder layers: a dense FFN layer is one unit, a mixture-of-experts layer one unit per expert ``(layer, expert)``.
Metadata ``units`` lists them (``{"layer", "expert", "n"}``; ``n`` = the unit's width N_u) and ``n_neurons`` is the
largest width; each row is bit-packed to ``ceil(n_neurons / 8)`` bytes and the bits of a unit beyond its N_u are
always 0 (capture writes them so; :meth:`Trace.active` and the statistics cut them off). Why padding and not one
ragged column per unit: ``datasets``' fixed-shape ``Array2D`` keeps the memory-mapped, zero-copy reads of
:meth:`Trace.packed` and every reader of the ``[T, L, nb]`` array (stats, replay, synth) keeps working; the cost is
the padding bytes when widths differ (none for equal widths, e.g. the experts of one MoE layer). For backward
compatibility ``n_layers`` still names the row count (= the number of units); :attr:`Trace.units` gives the
meaning; a trace without ``units`` (version 1, 2, and dense captures of version 3) has one dense unit per layer.
``achieved_sparsity`` of an expert unit is over all tokens (a token not routed to the expert counts as inactive
there). An MoE capture also stores ``routing``: per MoE layer the exact expert co-routing counts ``C[e, f]`` = tokens
routed to both e and f (the router's top-k), which ``coact pack --expert-order coactivation`` uses.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import torch

from common.atomic import atomic_path, fsync_path
from common.bits import n_packed_bytes, pack_bits, unpack_bits
from common.fileio import read_json_small
from coact.corpus import token_windows
from coact.errors import TraceError
from coact.progress import make_progress
from coact.families.units import unit_hooks
from coact.sparsify import get_sparsifier
from runtime.layout import Unit, default_units, parse_units

META_FILE = "coact_trace.json"
FORMAT = {"format": "coact-trace", "version": 3}
READ_VERSIONS = (1, 2, 3)
RUN_FILE = "run.json"
RUN_FORMAT = "coact-capture-run"
LOCK_FILE = "lock"
#: Plausibility bounds of trace metadata (checked before anything is allocated from it).
MAX_LAYERS = 1 << 14
MAX_NEURONS = 1 << 24
MAX_TOKENS = 1 << 40
_REQUIRED = {"model_id": str, "n_layers": int, "n_neurons": int, "n_tokens": int, "sparsifier": dict}
_DIGEST_CHUNK = 4096
FORWARDS = ("dense", "sparse")


def _features(n_layers: int, nb: int) -> Any:
    return datasets.Features(
        {
            "active": datasets.Array2D(shape=(n_layers, nb), dtype="uint8"),
            "token_id": datasets.Value("int32"),
            "pos": datasets.Value("int64"),
        }
    )


def handle_units(handle: Any) -> list[Unit]:
    """The placement units of a model handle: its ``units`` (MoE, mixed widths) or one dense unit per layer."""
    units = getattr(handle, "units", None)
    return list(units) if units is not None else default_units([int(handle.n_neurons)] * int(handle.n_layers))


@contextmanager
def capture_activations(handle: Any, sparsifier: Any = None,
                        routes: list[list[torch.Tensor]] | None = None) -> Iterator[list[list[torch.Tensor]]]:
    """Forward hooks that collect act(gate(x)) of every unit: yields `bufs[u]`, a list of [B*S, N_u] tensors.

    With ``sparsifier``, the model computes sparsely while recording (each unit's output is masked as the sparse
    model masks it), so deeper layers see the inputs the sparse model gives them; the recorded activations are the
    unmasked ones, from which the sparsifier's mask is re-derived exactly. An expert unit's activation is 0 on the
    tokens its router did not pick; with ``routes`` (a list per unit), ``routes[u]`` collects the bool [B*S] routing
    masks of every expert unit (dense units collect nothing: every token reaches them).
    """
    bufs: list[list[torch.Tensor]] = [[] for _ in range(handle.n_layers)]

    def record(layer: int, out: torch.Tensor) -> torch.Tensor | None:
        bufs[layer].append(out.detach().reshape(-1, out.shape[-1]).float())
        if sparsifier is None:
            return None
        return out * sparsifier.mask(layer, out).to(out.dtype)

    if getattr(handle, "units", None) is not None:
        on_route = None if routes is None else (lambda u, r: routes[u].append(r.reshape(-1)))
        hooks = unit_hooks(handle, record, routes=on_route)
    else:
        hooks = handle.act_hooks(record)
    with hooks:
        yield bufs


def forward_activations(handle: Any, windows: list[np.ndarray], batch: int = 4, *,
                        sparsifier: Any = None, routes: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """Run windows and return per-unit activations [T, N_u] in window order (of the sparse forward with
    ``sparsifier``, see :func:`capture_activations`).

    ``routes``, an empty list, receives per unit the bool [T] routing mask (None for dense units).
    Consecutive windows of equal length run as one batch (bigger matmuls, ~1.5x faster on CPU); windows are
    independent sequences, so batching does not change any activation.
    """
    rbufs: list[list[torch.Tensor]] = [[] for _ in range(handle.n_layers)]
    with capture_activations(handle, sparsifier, rbufs) as bufs, torch.inference_mode():
        i = 0
        while i < len(windows):
            j = i + 1
            while j < len(windows) and j - i < batch and len(windows[j]) == len(windows[i]):
                j += 1
            x = torch.as_tensor(np.stack(windows[i:j]), dtype=torch.long)
            handle.forward(x) if hasattr(handle, "forward") else handle.model(x, use_cache=False)  # BOS if expected
            i = j
        if routes is not None:
            routes.extend(torch.cat(r) if r else None for r in rbufs)
        return [torch.cat(b) for b in bufs]


def routed_samples(acts: list[torch.Tensor], routes: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Calibration samples per unit: an expert unit's rows of the tokens routed to it (its thresholds are
    calibrated on them, not on the zeros of tokens it never saw); a unit no calibration token reached gets one
    zero row (threshold 0: every activation it ever computes counts as active)."""
    out = []
    for a, r in zip(acts, routes):
        if r is not None:
            a = a[r]
            if a.shape[0] == 0:
                a = torch.zeros(1, a.shape[-1])
        out.append(a)
    return out


def unit_masks(sp: Any, acts: list[torch.Tensor], routes: list[torch.Tensor | None], n_max: int) -> np.ndarray:
    """bool [T, U, n_max]: per unit the sparsifier's mask AND (expert units) the routing mask; bits past a unit's
    width are 0."""
    T = acts[0].shape[0] if acts else 0
    out = np.zeros((T, len(acts), n_max), dtype=bool)
    for u, (a, r) in enumerate(zip(acts, routes)):
        m = sp.mask(u, a)
        if r is not None:
            m = m & r[:, None]
        out[:, u, : a.shape[-1]] = m.numpy()
    return out


def co_routing(units: list[Unit], routes: list[torch.Tensor | None]) -> dict[str, list[list[int]]]:
    """Per MoE layer (key: the layer as a string) the int co-routing counts ``C[e][f]`` = tokens routed to both
    experts e and f (diagonal: tokens routed to e), from the routing masks of its expert units."""
    by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for u, r in zip(units, routes):
        if u.expert is not None and r is not None:
            by_layer.setdefault(u.layer, []).append((u.expert, r))
    out = {}
    for layer, items in by_layer.items():
        n_exp = max(e for e, _ in items) + 1
        R = np.zeros((items[0][1].shape[0], n_exp), dtype=np.int64)
        for e, r in items:
            R[:, e] = r.numpy()
        out[str(layer)] = (R.T @ R).tolist()
    return out


def _add_routing(acc: dict[str, list[list[int]]], part: dict[str, list[list[int]]]) -> None:
    for k, m in part.items():
        acc[k] = (np.asarray(acc[k]) + np.asarray(m)).tolist() if k in acc else m


@dataclass
class CaptureConfig:
    """Everything that determines a trace; a resumed capture must match it exactly."""

    model_id: str
    corpus: str
    corpus_digest: str
    token_start: int
    n_tokens: int
    ctx: int
    method: str
    sparsity: float
    calib_tokens: int
    shard_tokens: int
    #: "dense": record the dense model's activations (every layer sees dense inputs); "sparse": record while the
    #: model computes sparsely, so layer l's active sets are those the sparse model (and the flash engine) meets.
    forward: str = "dense"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def capture_trace(
    handle: Any,
    stream: np.ndarray,
    config: CaptureConfig,
    out: str | Path,
    *,
    thresholds: list[float] | None = None,
    accuracy: Callable[[Any], dict[str, Any]] | None = None,
    progress: bool = True,
) -> "Trace":
    """Capture a trace of tokens [start, start + n) of `stream` into `out` (resumable; see module docstring).

    ``accuracy(sparsifier)``, called once after calibration, measures what the sparsifier costs (held-out
    perplexity, :func:`coact.workflow.capture`); its result is kept in ``run.json`` (a resumed capture does not
    measure again) and stored as ``meta["accuracy"]``.
    """
    datasets.disable_progress_bars()

    out = Path(out)
    check_trace_output(out)
    for name in ("n_tokens", "ctx", "shard_tokens"):
        if int(getattr(config, name)) < 1:
            raise TraceError(f"{name} must be >= 1, got {getattr(config, name)}")
    sp = get_sparsifier(config.method, sparsity=config.sparsity, thresholds=thresholds)
    if config.forward not in FORWARDS:
        raise TraceError(f"forward must be one of {', '.join(FORWARDS)}, got {config.forward!r}")
    if sp.needs_calibration and int(config.calib_tokens) < 1:
        raise TraceError(f"--calib-tokens must be >= 1 for {config.method} (its thresholds are calibrated on them), "
                         f"got {config.calib_tokens}")
    windows = token_windows(stream, config.token_start, config.n_tokens, config.ctx)  # checks the range fits
    if hasattr(handle, "check_inputs"):  # position table and vocabulary, before the .partial folder exists
        handle.check_inputs(ctx=config.ctx, tokens=stream[config.token_start : config.token_start + config.n_tokens])
    partial = Path(str(out) + ".partial")
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise TraceError(f"{partial} exists and is not a capture folder; remove it")
    with _capture_lock(partial, out):
        return _capture_locked(handle, stream, config, out, partial, sp, windows, progress, accuracy)


def check_trace_output(out: Path) -> None:
    """A trace is never written over anything: refuse an existing path or a (dangling) symbolic link."""
    if out.is_symlink():
        raise TraceError(f"{out} is a {'dangling ' if not out.exists() else ''}symbolic link; give the real "
                         "output path")
    if out.exists():
        raise TraceError(f"{out} exists; remove it or choose another --out")


@contextmanager
def _capture_lock(partial: Path, out: Path) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``partial/lock`` (created if needed); refuse if another capture holds it."""
    partial.mkdir(parents=True, exist_ok=True)
    lock = partial / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TraceError(f"another capture is writing {out} right now (lock {lock} is held); wait for it or "
                             "choose another --out") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the other capture finished and removed the folder between our open and our lock
            raise TraceError(f"another capture just finished writing {out}; choose another --out")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def _read_run(partial: Path) -> dict[str, Any] | None:
    """The run record of an interrupted capture if it is complete and ours, else None."""
    try:
        run = read_json_small(partial / RUN_FILE, TraceError, "capture record")
    except TraceError:
        return None
    ok = (isinstance(run, dict) and run.get("format") == RUN_FORMAT and isinstance(run.get("config"), dict)
          and isinstance(run.get("sparsifier"), dict) and isinstance(run.get("run_id"), str))
    return run if ok else None


def _clear_partial(partial: Path) -> None:
    """Remove everything but the lock: leftovers without a valid run record cannot be trusted."""
    for entry in partial.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _shard_done(sdir: Path, run_id: str, rows: int) -> dict[str, Any] | None:
    """The shard's ``done`` record if the shard is complete and of this run, else None."""
    try:
        done = json.loads((sdir / "done").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(done, dict) and done.get("run_id") == run_id and done.get("rows") == rows
    return done if ok else None


def _capture_locked(handle: Any, stream: np.ndarray, config: CaptureConfig, out: Path, partial: Path, sp: Any,
                    windows: list[np.ndarray], progress: bool,
                    accuracy: Callable[[Any], dict[str, Any]] | None = None) -> "Trace":
    check_trace_output(out)  # again, under the lock
    run_file = partial / RUN_FILE
    run = _read_run(partial)
    if run is not None and run["config"] != config.to_dict():
        raise TraceError(f"{partial} holds an interrupted capture with other settings; delete it to start over")
    if run is not None:
        sp = get_sparsifier(config.method, sparsity=config.sparsity, thresholds=run["sparsifier"].get("thresholds"))
    else:
        _clear_partial(partial)
        if sp.needs_calibration:
            calib = token_windows(stream, config.token_start, min(config.calib_tokens, config.n_tokens), config.ctx)
            calib_routes: list[torch.Tensor | None] = []
            calib_acts = forward_activations(handle, calib, routes=calib_routes)
            sp.calibrate(routed_samples(calib_acts, calib_routes))
        run = {"format": RUN_FORMAT, "version": 1, "run_id": uuid.uuid4().hex, "config": config.to_dict(),
               "sparsifier": sp.params(), "n_layers": handle.n_layers, "n_neurons": handle.n_neurons,
               "accuracy": None if accuracy is None else accuracy(sp)}
        with atomic_path(run_file) as tmp_run:
            tmp_run.write_text(json.dumps(run))
    run_id = run["run_id"]

    # Shards are groups of whole windows, so the shard boundaries depend only on the config.
    per_shard = max(1, config.shard_tokens // config.ctx)
    shards = [windows[i : i + per_shard] for i in range(0, len(windows), per_shard)]
    nb = n_packed_bytes(handle.n_neurons)
    feats = _features(handle.n_layers, nb)
    units = handle_units(handle)
    moe = any(u.expert is not None for u in units)
    routing: dict[str, list[list[int]]] = {}
    pos0 = config.token_start
    with make_progress(disable=not progress) as prog:
        task = prog.add_task("capture", total=config.n_tokens)
        for k, shard in enumerate(shards):
            n_shard = sum(len(w) for w in shard)
            sdir = partial / f"shard_{k:05d}"
            done = _shard_done(sdir, run_id, n_shard)
            if done is None:
                routes: list[torch.Tensor | None] = []
                acts = forward_activations(handle, shard, sparsifier=sp if config.forward == "sparse" else None,
                                           routes=routes)
                masks = unit_masks(sp, acts, routes, handle.n_neurons)  # [T, U, N], padding bits 0
                ds = datasets.Dataset.from_dict(
                    {
                        "active": pack_bits(masks),
                        "token_id": np.concatenate(shard).astype(np.int32),
                        "pos": np.arange(pos0, pos0 + n_shard, dtype=np.int64),
                    },
                    features=feats,
                )
                if sdir.exists():
                    shutil.rmtree(sdir)
                ds.save_to_disk(str(sdir))
                for f in sdir.iterdir():
                    fsync_path(f)
                done = {"run_id": run_id, "rows": n_shard}
                if moe:
                    done["routing"] = co_routing(units, routes)
                with atomic_path(sdir / "done") as tmp_done:
                    tmp_done.write_text(json.dumps(done))
            if moe:
                _add_routing(routing, done.get("routing") or {})
            pos0 += n_shard
            prog.advance(task, n_shard)

    parts = [datasets.load_from_disk(str(partial / f"shard_{k:05d}")) for k in range(len(shards))]
    full = datasets.concatenate_datasets(parts)
    if len(full) != config.n_tokens:
        raise TraceError(f"{partial}: shards hold {len(full)} tokens, expected {config.n_tokens}; delete it")
    # Achieved sparsity per layer and the content digest, from the stored bits (one pass, chunked).
    staged = Trace(partial, {"n_tokens": len(full), "n_layers": handle.n_layers, "n_neurons": handle.n_neurons}, full)
    active_counts = np.zeros(handle.n_layers, dtype=np.int64)
    for i in range(0, len(full), _DIGEST_CHUNK):
        chunk = staged.packed(i, min(i + _DIGEST_CHUNK, len(full)))
        active_counts += unpack_bits(chunk, handle.n_neurons).sum(axis=(0, 2))
    widths = np.array([max(u.n, 1) for u in units], dtype=np.float64)
    inactive = 1.0 - active_counts / (len(full) * widths)
    meta = {
        **FORMAT,
        **config.to_dict(),
        "n_layers": handle.n_layers,
        "n_neurons": handle.n_neurons,
        "d_model": handle.d_model,
        # Which FFN parts carry a per-neuron bias (gate/up): packs store it with the neuron (width d_model + 1), so
        # simulated byte counts need it too (coact.workflow.bundle_bytes).
        "neuron_bias_parts": sorted(k[: -len("_bias")] for k in handle.ffn_weights(0)
                                    if k.endswith("_bias") and k != "down_bias"),
        "sparsifier": sp.params(),
        "achieved_sparsity": [round(float(x), 6) for x in inactive],
        **({"units": [u.to_dict() for u in units]} if getattr(handle, "units", None) is not None else {}),
        **({"routing": routing} if moe else {}),
        "accuracy": run.get("accuracy"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "content_digest": content_digest(staged),
    }
    final = partial / "final"
    if final.exists():
        shutil.rmtree(final)
    full.save_to_disk(str(final))
    return publish_trace(final, meta, out, partial)


def publish_trace(final: Path, meta: dict[str, Any], out: Path, partial: Path) -> "Trace":
    """Seal a complete trace folder ``final`` (inside ``partial``): file and metadata digests, the metadata file,
    fsync, then one rename to ``out`` and the partial folder removed. Every writer of traces (capture, synth) ends
    here, so a trace appears complete and sealed or not at all."""
    meta["files"] = file_digests(final)
    meta["meta_digest"] = meta_digest(meta)
    (final / META_FILE).write_text(json.dumps(meta, indent=1))
    for f in final.iterdir():
        fsync_path(f)
    fsync_path(final)
    check_trace_output(out)
    os.rename(final, out)
    fsync_path(out.parent)
    shutil.rmtree(partial)
    return Trace.load(out)


# -------------------------------------------------------------------------------------------------- integrity
def content_digest(trace: "Trace") -> str:
    """sha256 of a trace's decoded columns (shape, active bits, token ids, positions), chunk by chunk."""
    h = hashlib.sha256()
    nb = n_packed_bytes(trace.n_neurons)
    h.update(f"coact-trace-content/1;{trace.n_tokens};{trace.n_layers};{nb};".encode())
    table = trace._ds.data
    for i in range(0, trace.n_tokens, _DIGEST_CHUNK):
        j = min(i + _DIGEST_CHUNK, trace.n_tokens)
        h.update(np.ascontiguousarray(trace.packed(i, j)).tobytes())
        part = table.slice(i, j - i)
        h.update(np.ascontiguousarray(part.column("token_id").to_numpy(), dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(part.column("pos").to_numpy(), dtype="<i8").tobytes())
    return h.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in a trace folder except the metadata file, by name."""
    out = {}
    for f in sorted(Path(folder).iterdir()):
        if f.name == META_FILE:
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name] = h.hexdigest()
    return out


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of the metadata without its own ``meta_digest`` entry (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify_trace(path: str | Path) -> dict[str, Any]:
    """Check a trace completely: everything :meth:`Trace.load` checks, then (version 2) the sha256 of every file
    and the content digest of the decoded data. Returns a summary; raises :class:`TraceError` (one line)."""
    tr = Trace.load(path)
    summary = {"version": tr.meta["version"], "model_id": tr.model_id, "n_tokens": tr.n_tokens,
               "n_layers": tr.n_layers, "n_neurons": tr.n_neurons}
    if tr.meta["version"] < 2:
        summary["content_digest"] = None
        summary["note"] = "version 1 trace: no digests recorded; structure checked only"
        return summary
    want = tr.meta["files"]
    got = file_digests(tr.path)
    if set(got) != set(want):
        extra = sorted(set(got) ^ set(want))
        raise TraceError(f"{tr.path}: files differ from the recorded list ({', '.join(extra[:3])})")
    for name, digest in want.items():
        if got[name] != digest:
            raise TraceError(f"{tr.path}: {name} does not match its recorded sha256 (file corrupt or modified)")
    if content_digest(tr) != tr.meta["content_digest"]:
        raise TraceError(f"{tr.path}: content digest mismatch (data corrupt or modified)")
    summary["content_digest"] = tr.meta["content_digest"]
    return summary


def _check_meta(p: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT["format"]:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise TraceError(f"{p}: unknown trace format {fmt!r}")
    if meta.get("version") not in READ_VERSIONS:
        raise TraceError(f"{p}: unsupported trace version {meta.get('version')!r} (this coact reads "
                         f"{', '.join(map(str, READ_VERSIONS))})")
    for key, typ in _REQUIRED.items():
        v = meta.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise TraceError(f"{p}: trace metadata {key!r} missing or not {typ.__name__}")
    bounds = {"n_layers": MAX_LAYERS, "n_neurons": MAX_NEURONS, "n_tokens": MAX_TOKENS}
    for key, top in bounds.items():
        if not 1 <= meta[key] <= top:
            raise TraceError(f"{p}: implausible trace metadata {key}={meta[key]}")
    if meta["version"] >= 2:
        if not isinstance(meta.get("content_digest"), str) or not isinstance(meta.get("files"), dict):
            raise TraceError(f"{p}: version 2 trace metadata without content_digest/files")
        if meta.get("meta_digest") != meta_digest(meta):
            raise TraceError(f"{p}: metadata does not match its meta_digest (file corrupt or modified)")
    if "units" in meta:
        units = parse_units(meta["units"], error=TraceError)
        assert units is not None
        if len(units) != meta["n_layers"] or any(not 0 < u.n <= meta["n_neurons"] for u in units) \
                or max(u.n for u in units) != meta["n_neurons"]:
            raise TraceError(f"{p}: trace metadata lists {len(units)} units whose widths do not fit "
                             f"{meta['n_layers']} rows of {meta['n_neurons']} neurons")
    return meta


def _check_state(p: Path) -> None:
    """``state.json`` may only name plain files inside the trace folder (datasets opens what it names)."""
    sf = p / "state.json"
    if not sf.exists() and not sf.is_symlink():
        return
    state = read_json_small(sf, TraceError, "dataset state")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise TraceError(f"{p}: state.json lists no data files")
    root = p.resolve()
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise TraceError(f"{p}: state.json names {name!r}, which is not a file inside the trace folder")
        target = p / name
        if target.is_symlink() or target.resolve().parent != root or not target.is_file():
            raise TraceError(f"{p}: state.json names {name!r}, which is not a regular file inside the trace folder")


def _check_data(p: Path, meta: dict[str, Any], ds: Any) -> None:
    """The arrow data must have the shape the metadata says (checked from the schema, before any read)."""
    names = set(ds.column_names)
    if not {"active", "token_id", "pos"} <= names:
        raise TraceError(f"{p}: trace data lacks columns (has {sorted(names)})")
    want = (meta["n_layers"], n_packed_bytes(meta["n_neurons"]))
    typ = ds.data.schema.field("active").type
    shape = tuple(getattr(typ, "shape", ()) or ())
    dtype = str(getattr(typ, "value_type", ""))
    if shape != want or dtype != "uint8":
        raise TraceError(f"{p}: metadata says {want[0]} layers x {meta['n_neurons']} neurons ({want[1]} bytes per "
                         f"set) but the data holds {dtype} sets of shape {shape}")
    if len(ds) != meta["n_tokens"]:
        raise TraceError(f"{p}: {len(ds)} rows but metadata says {meta['n_tokens']} tokens")


class Trace:
    """A captured trace on disk (see module docstring). Token indices here are relative to the trace."""

    def __init__(self, path: Path, meta: dict[str, Any], ds: Any) -> None:
        self.path = path
        self.meta = meta
        self._ds = ds

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        """Open a trace; checks (cheap, nothing is read from the data): the metadata (format, version, types,
        plausible sizes, its own digest), that state.json names only files inside the folder, and that the arrow
        schema and row count match the metadata. :func:`verify_trace` also checks every byte."""
        p = Path(path)
        mf = p / META_FILE
        if not p.is_dir() or not (mf.exists() or mf.is_symlink()):
            raise TraceError(f"{p} is not a coact trace (no {META_FILE})")
        meta = _check_meta(p, read_json_small(mf, TraceError, "trace metadata"))
        _check_state(p)
        datasets.disable_progress_bars()
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise TraceError(f"{p}: cannot open the trace dataset: {' '.join(str(exc).split())}") from None
        if not isinstance(ds, datasets.Dataset):
            raise TraceError(f"{p}: not a single-split dataset")
        _check_data(p, meta, ds)
        return cls(p, meta, ds)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    @property
    def n_neurons(self) -> int:
        return int(self.meta["n_neurons"])

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def units(self) -> list[Unit]:
        """The placement unit of every row (one dense unit per layer when the metadata lists none)."""
        units = parse_units(self.meta.get("units"), error=TraceError)
        return units if units is not None else default_units([self.n_neurons] * self.n_layers)

    @property
    def unit_widths(self) -> list[int]:
        """N_u of every unit (row)."""
        return [u.n for u in self.units]

    @property
    def has_units(self) -> bool:
        """True when the trace lists its units (MoE or layers of different widths)."""
        return "units" in self.meta

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_tokens if stop is None else stop
        if not 0 <= start < stop <= self.n_tokens:
            raise TraceError(f"token range [{start}, {stop}) outside the trace's {self.n_tokens} tokens")
        return start, stop

    def packed(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Bit-packed active sets uint8 [T, L, ceil(N/8)] of tokens [start, stop)."""
        start, stop = self._range(start, stop)
        # Straight from the arrow storage: datasets' numpy formatter widens Array2D uint8 to int64 (8x memory).
        col = self._ds.data.slice(start, stop - start).column("active")
        flat = [
            (ch.storage if hasattr(ch, "storage") else ch).flatten().flatten().to_numpy(zero_copy_only=False)
            for ch in col.chunks
        ]
        nb = n_packed_bytes(self.n_neurons)
        return np.concatenate(flat).astype(np.uint8, copy=False).reshape(stop - start, self.n_layers, nb)

    def layer_packed(self, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Bit-packed active sets uint8 [T, ceil(N/8)] of one layer (sliced inside each memory-mapped arrow chunk,
        so only this layer's bytes are copied: 1/L of :meth:`packed`, what per-layer statistics at 7B scale need)."""
        start, stop = self._range(start, stop)
        nb = n_packed_bytes(self.n_neurons)
        col = self._ds.data.slice(start, stop - start).column("active")
        parts = [(ch.storage if hasattr(ch, "storage") else ch).flatten().flatten().to_numpy(zero_copy_only=False)
                 .reshape(-1, self.n_layers, nb)[:, layer, :] for ch in col.chunks]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.uint8)

    def active(self, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Boolean [T, N_u] active sets of one unit (layer)."""
        return unpack_bits(self.layer_packed(layer, start, stop), self.unit_widths[layer])

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(start, stop)
        return self._ds.data.slice(start, stop - start).column("token_id").to_numpy()
