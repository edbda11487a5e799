"""Activation traces: capture from a real model, store as a Hugging Face `datasets` dataset, read back fast.

A trace has one row per token: `active` (uint8 [n_layers, ceil(N/8)], the bit-packed active set of every layer,
see :mod:`common.bits`), `token_id` and `pos` (index of the token in the corpus stream). Its metadata
(`coact_trace.json` beside the arrow files) says what produced it: model id and shape, sparsifier with its
thresholds, corpus spec and digest, token range and window size, achieved sparsity per layer.

Why `datasets`: memory-mapped arrow files, `save_to_disk`/`load_from_disk`, and users can open a trace with the
library they already know. Why shards: capture is the slow step; it is written in shards of whole windows under
`OUT.partial/`, so an interrupted capture resumes where it stopped (same command again) and the final folder
appears only when complete (written beside, then renamed).
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
import torch

from common.atomic import atomic_path
from common.bits import n_packed_bytes, pack_bits, unpack_bits
from coact.corpus import token_windows
from coact.errors import TraceError
from coact.progress import make_progress
from coact.sparsify import get_sparsifier

META_FILE = "coact_trace.json"
FORMAT = {"format": "coact-trace", "version": 1}


def _features(n_layers: int, nb: int) -> Any:
    return datasets.Features(
        {
            "active": datasets.Array2D(shape=(n_layers, nb), dtype="uint8"),
            "token_id": datasets.Value("int32"),
            "pos": datasets.Value("int64"),
        }
    )


@contextmanager
def capture_activations(handle: Any) -> Iterator[list[list[torch.Tensor]]]:
    """Forward hooks that collect act(gate(x)) of every layer: yields `bufs[l]`, a list of [B*S, N] tensors."""
    bufs: list[list[torch.Tensor]] = [[] for _ in range(handle.n_layers)]

    def record(layer: int, out: torch.Tensor) -> None:
        bufs[layer].append(out.detach().reshape(-1, out.shape[-1]).float())

    with handle.act_hooks(record):
        yield bufs


def forward_activations(handle: Any, windows: list[np.ndarray], batch: int = 4) -> list[torch.Tensor]:
    """Run windows and return per-layer activations [T, N] in window order.

    Consecutive windows of equal length run as one batch (bigger matmuls, ~1.5x faster on CPU); windows are
    independent sequences, so batching does not change any activation.
    """
    with capture_activations(handle) as bufs, torch.inference_mode():
        i = 0
        while i < len(windows):
            j = i + 1
            while j < len(windows) and j - i < batch and len(windows[j]) == len(windows[i]):
                j += 1
            x = torch.as_tensor(np.stack(windows[i:j]), dtype=torch.long)
            handle.model(x, use_cache=False)
            i = j
        return [torch.cat(b) for b in bufs]


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def capture_trace(
    handle: Any,
    stream: np.ndarray,
    config: CaptureConfig,
    out: str | Path,
    *,
    thresholds: list[float] | None = None,
    progress: bool = True,
) -> "Trace":
    """Capture a trace of tokens [start, start + n) of `stream` into `out` (resumable; see module docstring)."""
    datasets.disable_progress_bars()

    out = Path(out)
    if out.exists():
        raise TraceError(f"{out} exists; remove it or choose another --out")
    windows = token_windows(stream, config.token_start, config.n_tokens, config.ctx)
    partial = Path(str(out) + ".partial")
    run_file = partial / "run.json"
    sp = get_sparsifier(config.method, sparsity=config.sparsity, thresholds=thresholds)
    if run_file.exists():
        saved = json.loads(run_file.read_text())
        if saved["config"] != config.to_dict():
            raise TraceError(f"{partial} holds an interrupted capture with other settings; delete it to start over")
        sp = get_sparsifier(config.method, sparsity=config.sparsity, thresholds=saved["sparsifier"].get("thresholds"))
    else:
        partial.mkdir(parents=True, exist_ok=True)
        if sp.needs_calibration:
            calib = token_windows(stream, config.token_start, min(config.calib_tokens, config.n_tokens), config.ctx)
            sp.calibrate(forward_activations(handle, calib))
        with atomic_path(run_file) as tmp_run:
            tmp_run.write_text(json.dumps({"config": config.to_dict(), "sparsifier": sp.params()}))

    # Shards are groups of whole windows, so the shard boundaries depend only on the config.
    per_shard = max(1, config.shard_tokens // config.ctx)
    shards = [windows[i : i + per_shard] for i in range(0, len(windows), per_shard)]
    nb = n_packed_bytes(handle.n_neurons)
    feats = _features(handle.n_layers, nb)
    pos0 = config.token_start
    with make_progress(disable=not progress) as prog:
        task = prog.add_task("capture", total=config.n_tokens)
        for k, shard in enumerate(shards):
            n_shard = sum(len(w) for w in shard)
            sdir = partial / f"shard_{k:05d}"
            if not (sdir / "done").exists():
                acts = forward_activations(handle, shard)
                masks = np.stack([sp.mask(layer, a).numpy() for layer, a in enumerate(acts)], axis=1)  # [T, L, N]
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
                (sdir / "done").write_text("ok")
            pos0 += n_shard
            prog.advance(task, n_shard)

    parts = [datasets.load_from_disk(str(partial / f"shard_{k:05d}")) for k in range(len(shards))]
    full = datasets.concatenate_datasets(parts)
    # Achieved sparsity per layer, from the stored bits (one pass, chunked).
    staged = Trace(partial, {"n_tokens": len(full), "n_layers": handle.n_layers, "n_neurons": handle.n_neurons}, full)
    active_counts = np.zeros(handle.n_layers, dtype=np.int64)
    for i in range(0, len(full), 4096):
        chunk = staged.packed(i, min(i + 4096, len(full)))
        active_counts += unpack_bits(chunk, handle.n_neurons).sum(axis=(0, 2))
    inactive = 1.0 - active_counts / (len(full) * handle.n_neurons)
    meta = {
        **FORMAT,
        **config.to_dict(),
        "n_layers": handle.n_layers,
        "n_neurons": handle.n_neurons,
        "d_model": handle.d_model,
        "sparsifier": sp.params(),
        "achieved_sparsity": [round(float(x), 6) for x in inactive],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = Path(str(out) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    full.save_to_disk(str(tmp))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    tmp.rename(out)
    shutil.rmtree(partial)
    return Trace.load(out)


class Trace:
    """A captured trace on disk (see module docstring). Token indices here are relative to the trace."""

    def __init__(self, path: Path, meta: dict[str, Any], ds: Any) -> None:
        self.path = path
        self.meta = meta
        self._ds = ds

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        p = Path(path)
        mf = p / META_FILE
        if not mf.is_file():
            raise TraceError(f"{p} is not a coact trace (no {META_FILE})")
        meta = json.loads(mf.read_text())
        if meta.get("format") != FORMAT["format"]:
            raise TraceError(f"{p}: unknown trace format {meta.get('format')!r}")
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise TraceError(f"{p}: cannot open the trace dataset: {exc}") from exc
        if len(ds) != meta["n_tokens"]:
            raise TraceError(f"{p}: {len(ds)} rows but metadata says {meta['n_tokens']} tokens")
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
        """Bit-packed active sets uint8 [T, ceil(N/8)] of one layer."""
        return np.ascontiguousarray(self.packed(start, stop)[:, layer, :])

    def active(self, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Boolean [T, N] active sets of one layer."""
        return unpack_bits(self.layer_packed(layer, start, stop), self.n_neurons)

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(start, stop)
        return self._ds.data.slice(start, stop - start).column("token_id").to_numpy()
