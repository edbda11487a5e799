"""Layout files: the per-layer neuron placements that coact produces and users export.

A layout holds, for every FFN layer, a permutation `perm` with `perm[position] = neuron` (docs/DESIGN.md §2). It is
the product of the solvers and the input of the packer and the runtime, so it lives in one self-describing file that
can be checked before use: a placement that is not a bijection, or was made for another model, would silently
scramble weights at inference time.

The native format is safetensors (memory-mappable, no pickle, readable from Rust/C++ engines) with one int32 tensor
`layers.{l}.perm` per layer and string metadata: format name and version, model id, layer count, per-layer N,
solver name and parameters, the digest of the statistics the layout was solved on, creation time. Exports to JSON,
CSV and npz are for other tools; the JSON and npz exports carry the metadata too and load back with
:func:`load_layout`.

**Units** (mixture-of-experts, layers of different widths): a layout's entries are *placement units*, not
necessarily decoder layers. A dense layer is one unit; an MoE layer is one unit per expert. ``Layout.units`` (one
:class:`Unit` per perm: decoder layer, expert or None, width N) says which is which; it is written as the JSON
metadata entry ``units`` and is optional (None: unit i is decoder layer i, the dense case, which every layout
written before units existed is). Everything else (perms, digests, packs, replay) is per entry, so widths may
differ from entry to entry.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from common.atomic import atomic_path, check_output
from common.fileio import require_regular, safetensors_header
from common.perm import check_permutation
from runtime.errors import LayoutError

FORMAT_NAME = "coact-layout"
FORMAT_VERSION = "1"
EXPORT_FORMATS = ("json", "csv", "npz")
#: Sanity bounds checked before any perm is read (a hostile header cannot make a loader allocate gigabytes).
MAX_LAYERS = 1 << 14
MAX_NEURONS = 1 << 26
_CSV_HEAD = b"layer,position,neuron"


def is_layout_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a regular file holding a coact layout or layout export (any format), judged from its
    first bytes / header only: what ``save_layout`` and ``export_layout`` may replace."""
    try:
        require_regular(path, LayoutError)
        with open(path, "rb") as f:
            head = f.read(4096)
        if head.startswith(_CSV_HEAD):
            return True
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
            return "meta.npy" in names and all(n == "meta.npy" or n.startswith("perm_") for n in names)
        if head.lstrip()[:1] == b"{":
            return b'"format": "coact-layout"' in head
        meta, _ = safetensors_header(path, LayoutError)
        return meta.get("format") == FORMAT_NAME
    except (LayoutError, OSError, zipfile.BadZipFile, ValueError):
        return False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _json_default(obj: Any) -> Any:
    """Let solver parameters hold numpy scalars/arrays (common in solver code) without failing at save time."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"solver parameter of type {type(obj).__name__} is not JSON-serialisable")


@dataclass(frozen=True)
class Unit:
    """One placement unit: FFN neurons of decoder layer ``layer`` (``expert`` None: the layer's dense FFN; else that
    expert of its mixture-of-experts block), ``n`` neurons wide."""

    layer: int
    expert: int | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"layer": int(self.layer), "expert": None if self.expert is None else int(self.expert), "n": int(self.n)}

    @property
    def label(self) -> str:
        """``"3"`` for a dense layer, ``"3.e5"`` for expert 5 of layer 3."""
        return f"{self.layer}" if self.expert is None else f"{self.layer}.e{self.expert}"


def parse_units(raw: Any, sizes: Sequence[int] | None = None, error: type[Exception] = LayoutError) -> list[Unit] | None:
    """Units from their JSON form (a list of ``{"layer", "expert", "n"}``, or a JSON string of it); None stays None.
    With ``sizes`` the widths must equal them (one unit per perm). Raises ``error`` (one line) on anything else."""
    if raw is None:
        return None
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
        out = []
        for it in items:
            exp = it["expert"]
            u = Unit(int(it["layer"]), None if exp is None else int(exp), int(it["n"]))
            if u.layer < 0 or u.n < 0 or (u.expert is not None and u.expert < 0):
                raise ValueError(f"negative entry in {it}")
            out.append(u)
    except (TypeError, ValueError, KeyError) as e:
        raise error(f"bad units metadata ({_one_line(e)})") from None
    if sizes is not None and [u.n for u in out] != [int(n) for n in sizes]:
        raise error(f"units metadata lists widths {[u.n for u in out][:6]}..., the perms have {list(sizes)[:6]}...")
    return out


def default_units(sizes: Sequence[int]) -> list[Unit]:
    """One dense unit per layer (the meaning of a layout without units)."""
    return [Unit(i, None, int(n)) for i, n in enumerate(sizes)]


def check_perm(perm: np.ndarray, n: int | None = None, *, layer: int | None = None) -> np.ndarray:
    """Return `perm` as int64 if it is a permutation of range(len(perm)) (of length `n` if given), else raise
    :class:`LayoutError`.

    Why the shared check (:func:`common.perm.check_permutation`): solvers, layout files and pack files must agree on
    what a valid placement is; a perm with a repeated or missing neuron would make a pack skip neurons silently.
    """
    what = f"layer {layer} perm" if layer is not None else "perm"
    return check_permutation(perm, n, what=what, error=LayoutError)


def perms_digest(perms: Sequence[np.ndarray]) -> str:
    """sha256 over the placements (layer count, each layer's N and int64 little-endian perm).

    Why: the pack file records the digest of the layout it was written with, so a runtime can refuse to read a pack
    through a different layout (which would return the wrong neurons' weights without any error).
    """
    h = hashlib.sha256()
    h.update(f"coact-layout-perms;{len(perms)};".encode())
    for p in perms:
        arr = np.ascontiguousarray(np.asarray(p, dtype="<i8"))
        h.update(f"{arr.size};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(eq=False, repr=False)
class Layout:
    """Per-layer placements plus where they came from.

    Attributes:
        perms: one int64 array per layer, `perm[position] = neuron`; validated as bijections on construction.
        model_id: the model the layout was solved for (checked on load when the caller knows the model).
        solver: solver name (registry spec, e.g. ``"ripple+local-search"``).
        params: solver parameters (JSON-able).
        stats_digest: digest of the co-activation statistics the layout was solved on ("" if none).
        created: ISO 8601 creation time (UTC).
        units: one :class:`Unit` per perm (mixture-of-experts / mixed widths), or None (unit i = layer i).

    Treat a Layout as immutable: `inverses` and `digest` are computed once and cached.
    """

    perms: list[np.ndarray]
    model_id: str = ""
    solver: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    stats_digest: str = ""
    created: str = field(default_factory=_now_iso)
    units: list[Unit] | None = None

    def __post_init__(self) -> None:
        self.perms = [check_perm(p, layer=i) for i, p in enumerate(self.perms)]
        if self.units is not None:
            self.units = parse_units([u.to_dict() if isinstance(u, Unit) else u for u in self.units],
                                     [p.size for p in self.perms])
        # Normalise to plain JSON now: a non-serialisable parameter fails here, not at save time, and a layout
        # compares equal to itself loaded back from disk.
        try:
            self.params = json.loads(json.dumps(dict(self.params or {}), sort_keys=True, default=_json_default))
        except TypeError as e:
            raise LayoutError(f"solver params: {e}") from None

    def __eq__(self, other: object) -> bool:
        """Same placements and same provenance (compare `.digest` for placements only)."""
        if not isinstance(other, Layout):
            return NotImplemented
        return self.digest == other.digest and self.unit_list == other.unit_list and (
            self.model_id, self.solver, self.params, self.stats_digest, self.created
        ) == (other.model_id, other.solver, other.params, other.stats_digest, other.created)

    __hash__ = None  # type: ignore[assignment]  # mutable container

    def __repr__(self) -> str:
        return (f"Layout(model_id={self.model_id!r}, solver={self.solver!r}, n_layers={self.n_layers}, "
                f"n_neurons={_short(self.n_neurons)}, digest={self.digest[:12]})")

    @classmethod
    def identity(cls, n_neurons: int | Sequence[int], n_layers: int | None = None, **meta: Any) -> "Layout":
        """The original neuron order (the `llmflash` baseline's placement)."""
        sizes = _sizes(n_neurons, n_layers)
        return cls([np.arange(n, dtype=np.int64) for n in sizes], solver=meta.pop("solver", "identity"), **meta)

    @property
    def n_layers(self) -> int:
        return len(self.perms)

    @property
    def n_neurons(self) -> list[int]:
        """N of every layer."""
        return [int(p.size) for p in self.perms]

    @property
    def unit_list(self) -> list[Unit]:
        """The units, explicit or default (one dense unit per layer)."""
        return list(self.units) if self.units is not None else default_units(self.n_neurons)

    @property
    def has_experts(self) -> bool:
        return any(u.expert is not None for u in self.unit_list)

    @cached_property
    def inverses(self) -> list[np.ndarray]:
        """Per layer `inverse[neuron] = position` (what the runtime needs to turn a load set into positions)."""
        out = []
        for p in self.perms:
            inv = np.empty_like(p)
            inv[p] = np.arange(p.size, dtype=np.int64)
            out.append(inv)
        return out

    @cached_property
    def digest(self) -> str:
        """sha256 over the perms only (metadata changes do not change what a pack file contains)."""
        return perms_digest(self.perms)

    def metadata(self) -> dict[str, str]:
        """The string metadata written with the layout (all values are str: safetensors requires it)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_id": str(self.model_id),
            "n_layers": str(self.n_layers),
            "n_neurons": json.dumps(self.n_neurons),
            "solver": str(self.solver),
            "params": json.dumps(self.params, sort_keys=True, default=_json_default),
            "stats_digest": str(self.stats_digest),
            "created": str(self.created),
            "digest": self.digest,
            **({} if self.units is None else {"units": json.dumps([u.to_dict() for u in self.units])}),
        }


def _short(sizes: list[int]) -> str:
    if len(set(sizes)) == 1 and len(sizes) > 1:
        return f"{len(sizes)}x{sizes[0]}"
    return str(sizes)


def _sizes(n_neurons: int | Sequence[int], n_layers: int | None) -> list[int]:
    if isinstance(n_neurons, (int, np.integer)):
        if n_layers is None:
            raise LayoutError("n_layers is required when n_neurons is a single int")
        return [int(n_neurons)] * int(n_layers)
    sizes = [int(n) for n in n_neurons]
    if n_layers is not None and len(sizes) != n_layers:
        raise LayoutError(f"{len(sizes)} layer sizes given for {n_layers} layers")
    return sizes


# ----------------------------------------------------------------------------------------------------------- save


def save_layout(layout: Layout, path: str | os.PathLike[str]) -> Path:
    """Write `layout` as a safetensors file (tensors `layers.{l}.perm` int32, string metadata), atomically."""
    for i, p in enumerate(layout.perms):
        if p.size > np.iinfo(np.int32).max:
            raise LayoutError(f"layer {i}: {p.size} neurons do not fit the int32 perm tensor")
    check_output(path, kind="layout", is_kind=is_layout_file)
    tensors = {f"layers.{i}.perm": np.ascontiguousarray(p, dtype=np.int32) for i, p in enumerate(layout.perms)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=layout.metadata())
    return Path(path)


def export_layout(layout: Layout, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Export `layout` for other tools: ``json`` (metadata + perms lists), ``csv`` (layer,position,neuron),
    ``npz`` (``perm_{l}`` int32 arrays + ``meta`` JSON string). `fmt` defaults to the file suffix.

    ``safetensors`` is accepted as an alias of :func:`save_layout`.
    """
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt == "safetensors":
        return save_layout(layout, path)
    if fmt not in EXPORT_FORMATS:
        raise LayoutError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    check_output(path, kind="layout export", is_kind=is_layout_file)
    meta = layout.metadata()
    with atomic_path(path) as tmp:
        if fmt == "json":
            doc: dict[str, Any] = {k: v for k, v in meta.items()}
            doc["n_layers"] = layout.n_layers
            doc["n_neurons"] = layout.n_neurons
            doc["params"] = json.loads(meta["params"])
            doc["perms"] = [p.tolist() for p in layout.perms]
            if layout.units is not None:
                doc["units"] = [u.to_dict() for u in layout.units]
            tmp.write_text(json.dumps(doc))
        elif fmt == "csv":
            with open(tmp, "w", newline="") as f:
                f.write("layer,position,neuron\n")
                for i, p in enumerate(layout.perms):
                    rows = np.column_stack([np.full(p.size, i), np.arange(p.size), p])
                    np.savetxt(f, rows, fmt="%d", delimiter=",")
        else:  # npz
            arrays = {f"perm_{i}": p.astype(np.int32) for i, p in enumerate(layout.perms)}
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------- load


def load_layout(
    path: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    n_neurons: int | Sequence[int] | None = None,
) -> Layout:
    """Read and validate a layout file (safetensors, or a JSON/npz export).

    Checks: format name and version, every perm a bijection, the layer count and per-layer N recorded in the
    metadata, and, when given, the model id and the model's sizes (`n_neurons`: one int for all layers or one per
    layer). Any problem raises :class:`LayoutError` with a one-line message naming the file.
    """
    p = Path(path)
    try:
        require_regular(p, LayoutError, "layout file")  # a FIFO would block the open below forever
        with open(p, "rb") as f:
            head = f.read(8)
    except LayoutError as e:
        raise LayoutError(_one_line(e)) from None
    except OSError as e:
        raise LayoutError(f"{p}: cannot read layout file ({_one_line(e.strerror or e)})") from None
    try:
        if head.startswith(b"PK"):
            meta, perms = _read_npz(p)
        elif head.lstrip()[:1] == b"{":
            meta, perms = _read_json(p)
        elif head.startswith(b"layer,"):
            raise LayoutError("CSV exports carry no metadata and cannot be loaded; load the .safetensors layout")
        else:
            meta, perms = _read_safetensors(p)
        return _validate(meta, perms, model_id=model_id, n_neurons=n_neurons)
    except LayoutError as e:
        raise LayoutError(f"{p}: {_one_line(e)}") from None


def _declared_sizes(meta: dict[str, Any]) -> list[int]:
    """The per-layer N the metadata declares, sanity-bounded (checked before any perm is read)."""
    try:
        n_layers = int(meta["n_layers"])
        sizes = meta["n_neurons"]
        sizes = json.loads(sizes) if isinstance(sizes, str) else sizes
        sizes = [int(n) for n in sizes]
    except (KeyError, ValueError, TypeError) as e:
        raise LayoutError(f"bad layout metadata ({_one_line(e)})") from None
    if not 0 <= n_layers <= MAX_LAYERS or len(sizes) != n_layers or any(not 0 <= n <= MAX_NEURONS for n in sizes):
        raise LayoutError(f"implausible layout metadata ({n_layers} layers, sizes {sizes[:4]}...)")
    return sizes


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    meta, infos = safetensors_header(path, LayoutError)  # header only: shapes checked before any tensor is read
    if meta.get("format") != FORMAT_NAME:  # say "foreign file" before complaining about its tensors
        raise LayoutError(f"not a coact layout (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    sizes = _declared_sizes(meta)
    for key, info in infos.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "layers" or parts[2] != "perm" or not parts[1].isdigit():
            raise LayoutError(f"unexpected tensor {key!r} in a layout file")
        layer = int(parts[1])
        if layer >= len(sizes) or info.shape != (sizes[layer],) or info.dtype not in ("I32", "I64"):
            want = f"({sizes[layer]},)" if layer < len(sizes) else "no tensor"
            raise LayoutError(f"tensor {key!r} is {info.dtype} {info.shape}, the metadata says {want}")
    try:
        with safe_open(str(path), framework="np") as f:
            perms = {}
            for key in f.keys():
                perms[int(key.split(".")[1])] = f.get_tensor(key)
    except LayoutError:
        raise
    except Exception as e:  # safetensors raises its own error types for foreign/corrupt files
        raise LayoutError(f"not a readable safetensors layout file ({_one_line(e)})") from None
    return meta, perms


def _read_json(path: Path) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    size = path.stat().st_size
    if size > 64 * (MAX_LAYERS + MAX_NEURONS):
        raise LayoutError(f"JSON layout of {size} bytes is larger than any layout can be")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LayoutError(f"corrupt JSON layout ({_one_line(e)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("perms"), list):
        raise LayoutError("JSON layout without a 'perms' list")
    perms = {}
    for i, p in enumerate(doc.pop("perms")):
        try:
            perms[i] = np.asarray(p, dtype=np.int64)
        except (ValueError, TypeError, OverflowError):
            raise LayoutError(f"layer {i}: perm is not a list of integers") from None
    return doc, perms


def _read_npz(path: Path) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    try:
        # Declared (uncompressed) sizes and .npy headers are checked before any member is decompressed, so a
        # small zip bomb is refused without inflating it.
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if "meta.npy" not in infos:
                raise LayoutError("npz layout without a 'meta' entry")
            if infos["meta.npy"].file_size > 16 << 20:
                raise LayoutError("npz layout 'meta' entry is implausibly large")
            shapes = {}
            for name, info in infos.items():
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                shapes[name[:-4]] = (shape, dtype, info.file_size)
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict):
                raise LayoutError("npz layout metadata is not a JSON object")
            sizes = _declared_sizes(meta)
            for key, (shape, dtype, nbytes) in shapes.items():
                if key == "meta":
                    continue
                if not key.startswith("perm_") or not key[5:].isdigit():
                    raise LayoutError(f"unexpected array {key!r} in an npz layout")
                layer = int(key[5:])
                if layer >= len(sizes) or shape != (sizes[layer],) or dtype.kind not in "iu" \
                        or nbytes > 1024 + 8 * sizes[layer]:
                    raise LayoutError(f"array {key!r} has shape {shape}, the metadata does not declare it")
            perms = {}
            for key in z.files:
                if key != "meta":
                    perms[int(key[5:])] = z[key]
    except LayoutError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, io.UnsupportedOperation) as e:
        raise LayoutError(f"corrupt npz layout ({_one_line(e)})") from None
    return meta, perms


def _validate(
    meta: dict[str, Any],
    perms: dict[int, np.ndarray],
    *,
    model_id: str | None,
    n_neurons: int | Sequence[int] | None,
) -> Layout:
    if not isinstance(meta, dict):
        raise LayoutError("layout metadata is not a mapping")
    fmt = meta.get("format")
    if fmt != FORMAT_NAME:
        raise LayoutError(f"not a coact layout (format {fmt!r}, expected {FORMAT_NAME!r})")
    version = str(meta.get("version"))
    if version != FORMAT_VERSION:
        raise LayoutError(f"unsupported layout format version {version!r} (this coact reads {FORMAT_VERSION!r})")
    try:
        n_layers = int(meta["n_layers"])
        sizes = meta["n_neurons"]
        sizes = json.loads(sizes) if isinstance(sizes, str) else sizes
        sizes = [int(n) for n in sizes]
        params = meta.get("params") or {}
        params = json.loads(params) if isinstance(params, str) else params
    except (KeyError, ValueError, TypeError) as e:
        raise LayoutError(f"bad layout metadata ({_one_line(e)})") from None
    if not isinstance(params, dict):
        raise LayoutError("layout metadata 'params' is not a JSON object")
    if len(sizes) != n_layers:
        raise LayoutError(f"metadata lists {len(sizes)} layer sizes for {n_layers} layers")
    if sorted(perms) != list(range(n_layers)):
        raise LayoutError(f"file holds {len(perms)} perms (layers {min(perms, default=None)}..{max(perms, default=None)})"
                          f" but metadata says {n_layers} layers")
    checked = [check_perm(perms[i], sizes[i], layer=i) for i in range(n_layers)]

    if n_neurons is not None:
        want = _sizes(n_neurons, n_layers) if isinstance(n_neurons, (int, np.integer)) else [int(n) for n in n_neurons]
        if len(want) != n_layers:
            raise LayoutError(f"layout has {n_layers} layers, the model has {len(want)}")
        for i, (have, exp) in enumerate(zip(sizes, want)):
            if have != exp:
                raise LayoutError(f"layer {i}: layout has {have} neurons, the model has {exp}")
    stored_model = str(meta.get("model_id", ""))
    if model_id is not None and stored_model != str(model_id):
        raise LayoutError(f"layout is for model {stored_model!r}, not {str(model_id)!r}")

    layout = Layout(
        checked,
        model_id=stored_model,
        solver=str(meta.get("solver", "")),
        params=params,
        stats_digest=str(meta.get("stats_digest", "")),
        created=str(meta.get("created", "")),
        units=parse_units(meta.get("units"), sizes),
    )
    stored_digest = meta.get("digest")
    if stored_digest and stored_digest != layout.digest:
        raise LayoutError("perms do not match the digest recorded in the metadata (file altered or corrupt)")
    return layout


def verify_layout(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a layout file or export completely (:func:`load_layout`: format, sizes, bijections, recorded digest; a
    CSV export: bijections); return a summary, raise :class:`LayoutError` (one line) on any problem."""
    p = Path(path)
    require_regular(p, LayoutError, "layout file")
    with open(p, "rb") as f:
        head = f.read(len(_CSV_HEAD))
    if head == _CSV_HEAD:
        perms = read_csv_export(p)
        return {"format": "csv", "n_layers": len(perms), "n_neurons": [int(x.size) for x in perms],
                "digest": perms_digest(perms)}
    lay = load_layout(p)
    return {"format": FORMAT_NAME, "model_id": lay.model_id, "solver": lay.solver, "n_layers": lay.n_layers,
            "n_neurons": lay.n_neurons, "stats_digest": lay.stats_digest, "digest": lay.digest}


def read_csv_export(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read the perms back from a CSV export (no metadata there; for tests and external tools' round trips)."""
    with open(path, newline="") as f:
        header = f.readline().strip()
        if header != "layer,position,neuron":
            raise LayoutError(f"{path}: not a coact CSV layout export (header {header!r})")
        data = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if data.size == 0:
        return []
    perms: list[np.ndarray] = []
    for layer in range(int(data[:, 0].max()) + 1):
        rows = data[data[:, 0] == layer]
        perm = np.full(rows.shape[0], -1, dtype=np.int64)
        pos = rows[:, 1]
        if pos.size and (pos.min() < 0 or pos.max() >= pos.size):
            raise LayoutError(f"{path}: layer {layer}: positions out of range")
        perm[pos] = rows[:, 2]
        perms.append(check_perm(perm, layer=layer))
    return perms
