"""`coact verify FILE`: recognise any coact artefact (trace, statistics, layout, pack) by its metadata and check
everything about it.

Why one entry point: a user who copied artefacts between machines, or suspects a bad disk, should not need to know
which loader checks what. Each kind's full check lives with its format: :func:`coact.trace.verify_trace` (metadata,
every file's sha256, content digest), :meth:`coact.stats.CoactStats.load` (shapes, content and provenance digest),
:func:`runtime.layout.verify_layout` (bijections, sizes, recorded digest) and :meth:`runtime.pack.PackFile.verify`
(header crc32, perms, bundle checksums, padding: every byte). A foreign or corrupt file raises a one-line
:class:`VerifyError` (or the kind's own :class:`common.errors.UserError`), which the CLI prints as ``error: ...``
with exit code 2.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from coact.errors import CoactError
from coact.export_model import is_gguf, model_summary
from coact.stats import META_FILE as STATS_META, CoactStats
from coact.trace import META_FILE as TRACE_META, verify_trace
from common.fileio import safetensors_header
from runtime.layout import FORMAT_NAME as LAYOUT_FORMAT, verify_layout
from runtime.pack import MAGIC, OLD_MAGICS, PackFile

KINDS = ("trace", "stats", "layout", "pack", "model")


class VerifyError(CoactError):
    """A path that is no coact artefact, or whose kind cannot be recognised."""


def detect_kind(path: str | os.PathLike[str]) -> str:
    """``"trace"``, ``"stats"``, ``"layout"`` or ``"pack"``, from the artefact's own metadata (never its name)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise VerifyError(f"{p}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if os.path.lexists(p / TRACE_META):
            return "trace"
        if os.path.lexists(p / STATS_META):
            return "stats"
        if os.path.lexists(p / "config.json"):
            return "model"  # a transformers folder (coact export --format hf): which layout it carries
        raise VerifyError(f"{p}: not a coact artefact (a folder without {TRACE_META} or {STATS_META})")
    if not stat.S_ISREG(st.st_mode):
        raise VerifyError(f"{p}: not a regular file or folder")
    with open(p, "rb") as f:
        head = f.read(4096)
    if head[: len(MAGIC)] == MAGIC or head[: len(MAGIC)] in OLD_MAGICS:
        return "pack"
    if is_gguf(p):
        return "model"
    if head.startswith(b"layer,position,neuron") or head.startswith(b"PK"):
        return "layout"
    if head.lstrip()[:1] == b"{":
        if LAYOUT_FORMAT.encode() in head:
            return "layout"
        raise VerifyError(f"{p}: not a coact artefact (JSON without a coact format)")
    try:
        meta, _ = safetensors_header(p, VerifyError)
    except VerifyError:
        raise VerifyError(f"{p}: not a coact artefact (unrecognised content)") from None
    if meta.get("format") == LAYOUT_FORMAT:
        return "layout"
    raise VerifyError(f"{p}: not a coact artefact (safetensors file with format {meta.get('format')!r})")


def verify_artefact(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Check the artefact at ``path`` completely; return ``{"path", "kind", "ok": True, ...summary}``.

    Raises a one-line :class:`common.errors.UserError` for a foreign, malformed or corrupt artefact.
    """
    p = Path(path)
    kind = kind or detect_kind(p)
    if kind not in KINDS:
        raise VerifyError(f"unknown artefact kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "trace":
        summary = verify_trace(p)
    elif kind == "stats":
        st = CoactStats.load(p)
        st.verify_layers()  # sharded statistics read their layers lazily: check every one here
        summary = {"n_layers": st.n_layers, "n_neurons": st.n_neurons, "n_tokens": st.n_tokens,
                   "model_id": st.meta.get("model_id"), "digest": st.digest}
    elif kind == "layout":
        summary = verify_layout(p)
    elif kind == "model":
        summary = model_summary(p)
    else:
        with PackFile(p) as pf:
            pf.verify()
            summary = {"version": pf.header["version"], "model_id": pf.model_id, "n_layers": pf.n_layers,
                       "bundle": pf.bundle, "dtype": pf.dtype, "bundle_bytes": pf.bundle_bytes,
                       "layout_digest": pf.layout_digest, "file_bytes": pf.header["file_bytes"]}
    return {"path": str(p), "kind": kind, "ok": True, **summary}
