"""Pack files: the FFN bundles of every layer, in placement order, as the runtime reads them from flash.

Why a file of its own: a placement only pays off if the bundles that are co-activated sit next to each other on
disk. The pack file stores, per layer, the bundle of the neuron at position p at byte
``layer_offset(l) + p * bundle_bytes``, so a run of positions is one contiguous read.

Layout of the file, version 2 (all regions 4 KiB aligned, so O_DIRECT can read any aligned span of them)::

    [0, header_bytes)        b"COACTPK2" | uint64 LE JSON length | uint32 LE crc32 of the 16 prefix bytes + JSON |
                             4 zero bytes | JSON header | zero padding
    [perm_offset, ...)       int32 LE perms of all layers (so the file alone maps neuron ids to positions)
    [crc_offset, ...)        uint32 LE crc32 of every bundle, layer by layer in position order
    [layer_offsets[l], ...)  N_l bundles of layer l, zero padded to a multiple of 4 KiB

The JSON header holds the version, dtype, bundle schema and parts, bundle_bytes, d_model, layer count, per-layer N,
offsets and sizes, the layout digest and model id, a sha256 of every layer's bundle bytes, and crc32s of the perm
region and of the bundle-checksum table. Every byte of the file is covered: the header by its own crc32, the perms
by theirs (and the layout digest), the table by its crc32, every bundle by its table entry, and all padding must be
zero (:meth:`PackFile.verify`).

Why one crc32 per bundle (the "block" is one bundle): readers read runs of bundles (a mean run is 1-3 bundles of
~2 KiB), so a per-bundle checksum lets :meth:`PackFile.read_neurons` and the replay verify exactly the bytes they
read, with no extra I/O; a coarser block (64 KiB) would force a verifying reader to read whole blocks, i.e. change
the I/O being measured. The table costs 4 bytes per bundle (0.17 % of a 2,304-byte bundle) and sits in its own
region, so the JSON header stays small. ``zlib.crc32`` is in the standard library and runs at GB/s.

Version 1 packs (magic ``COACTPK1``, no bundle checksums, unprotected header) are refused with a one-line
"re-pack" error rather than read unchecked. A bundle is the
concatenation of its parts, each `width` values: ``up[i, :], down[:, i]`` (``up-down``, the default: the gate stays
in DRAM to predict the active set, as in CATS) or ``gate[i, :], up[i, :], down[:, i]`` (``gate-up-down``).

**Biases** (GPT-2, NeoX, OPT, Phi-2, StarCoder2, BLOOM ... and gated FFNs with ``mlp_bias``): a neuron's per-neuron
biases travel with it, so a pack holds everything its neurons contribute. When the weights have any per-neuron bias
of a stored part (``gate_bias``, ``up_bias``: [N]), every part gets one more value (``width = d_model + 1``, header
``"biases": true``): the gate row is followed by ``gate_bias[i]``, the up row by ``up_bias[i]``, and the down column
by a zero (the down bias is one ``d_model`` vector added once per token, not per neuron: it stays resident with the
model, like the norms). A part whose bias does not exist gets a zero. So ``FFN(x) = down_bias + sum_{i in S}
down[:, i] * h_i`` with ``h_i`` computed from bundle i alone (plus, for ``up-down`` packs of gated FFNs, the
resident gate and its bias). The cost is one value per part (4 bytes of a 2,308-byte fp16 bundle); packs of
bias-free models are unchanged (``width = d_model``).

**Units** (mixture-of-experts, layers of different widths; :class:`runtime.layout.Unit`): the pack's "layers" are
the layout's placement units, each with its own N, so an MoE layer is one region per expert. The header records
``units`` (layer, expert, N of every unit; only when the layout has units) and ``unit_order``: the order of the
unit regions in the file (default: unit index order). ``write_pack(order=...)`` puts the regions of experts that
are routed together next to each other (:func:`expert_order`, ``coact pack --expert-order coactivation``); unit
indices, perms and the checksum table stay in unit index order, only the regions move. The routers and shared
experts of an MoE model are not packed: they stay resident with the model, like attention and the norms.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from common.atomic import atomic_path, check_output
from common.progress import ProgressFn, tracked
from runtime._closing import Closing
from runtime.errors import PackError
from runtime.layout import Layout, Unit, parse_units, perms_digest
from runtime.planner import runs

MAGIC = b"COACTPK2"
OLD_MAGICS = (b"COACTPK1",)
FORMAT_NAME = "coact-pack"
VERSION = 2
ALIGN = 4096
_PREFIX = struct.Struct("<8sQI4x")  # magic, JSON length, crc32 of (magic + length + JSON), reserved zeros
_MAX_HEADER = 64 << 20
BUNDLES: dict[str, tuple[str, ...]] = {"up-down": ("up", "down"), "gate-up-down": ("gate", "up", "down")}
DTYPES: dict[str, np.dtype] = {"fp16": np.dtype("<f2"), "fp32": np.dtype("<f4")}
_WRITE_CHUNK = 8 << 20  # bytes of bundles assembled in memory at a time


def _align(n: int, a: int = ALIGN) -> int:
    return -(-int(n) // a) * a


WeightsFn = Callable[[int], Mapping[str, np.ndarray]]


# ---------------------------------------------------------------------------------------------------------- write


def is_pack_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a regular file starting with a coact pack magic (any version): what ``pack --out`` may
    replace."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError:
        return False
    return head == MAGIC or head in OLD_MAGICS


def _hex32(x: int) -> str:
    return f"{x & 0xFFFFFFFF:08x}"


def _check_order(order: Any, n: int, error: Callable[[str], Exception]) -> list[int]:
    try:
        out = [int(x) for x in order]
    except (TypeError, ValueError):
        raise error("unit_order is not a list of integers") from None
    if sorted(out) != list(range(n)):
        raise error(f"unit_order is not a permutation of the {n} units")
    return out


def _header_dict(
    layout: Layout, bundle: str, dtype: str, d_model: int, header_bytes: int, checksums: list[str],
    perm_crc: str = "0" * 8, table_crc: str = "0" * 8, biases: bool = False, order: list[int] | None = None,
) -> dict[str, Any]:
    parts = BUNDLES[bundle]
    width = d_model + int(biases)
    bb = len(parts) * width * DTYPES[dtype].itemsize
    sizes = layout.n_neurons
    perm_offset = header_bytes
    perm_nbytes = 4 * sum(sizes)
    crc_offset = _align(perm_offset + perm_nbytes)
    crc_nbytes = 4 * sum(sizes)
    off = _align(crc_offset + crc_nbytes)
    order = list(range(len(sizes))) if order is None else order
    offsets, nbytes = [0] * len(sizes), [n * bb for n in sizes]
    for u in order:  # regions in file order; lists stay in unit index order
        offsets[u] = off
        off += _align(sizes[u] * bb)
    extra: dict[str, Any] = {}
    if layout.units is not None:
        extra["units"] = [u.to_dict() for u in layout.units]
        extra["moe"] = layout.has_experts
    if order != list(range(len(sizes))):
        extra["unit_order"] = order
    return {
        **extra,
        "format": FORMAT_NAME,
        "version": VERSION,
        "dtype": dtype,
        "bundle": bundle,
        "schema": list(parts),
        "parts": len(parts),
        "bundle_bytes": bb,
        "d_model": int(d_model),
        "width": int(width),
        "biases": bool(biases),
        "n_layers": layout.n_layers,
        "n_neurons": sizes,
        "alignment": ALIGN,
        "header_bytes": header_bytes,
        "perm_offset": perm_offset,
        "perm_nbytes": perm_nbytes,
        "perm_crc32": perm_crc,
        "crc_offset": crc_offset,
        "crc_nbytes": crc_nbytes,
        "crc_table_crc32": table_crc,
        "bundle_checksum": "crc32",
        "layer_offsets": offsets,
        "layer_nbytes": nbytes,
        "file_bytes": off,
        "layout_digest": layout.digest,
        "model_id": layout.model_id,
        "solver": layout.solver,
        "checksum": "sha256",
        "checksums": checksums,
    }


def _encode_header(header: dict[str, Any]) -> bytes:
    body = json.dumps(header, sort_keys=True).encode()
    head = struct.pack("<8sQ", MAGIC, len(body))
    return _PREFIX.pack(MAGIC, len(body), zlib.crc32(body, zlib.crc32(head))) + body


def bundle_crcs(data: bytes | memoryview, bundle_bytes: int) -> np.ndarray:
    """uint32 crc32 of every ``bundle_bytes`` slice of ``data`` (whose length is a multiple of it)."""
    mv = memoryview(data).cast("B")
    n = len(mv) // bundle_bytes
    return np.fromiter((zlib.crc32(mv[i * bundle_bytes : (i + 1) * bundle_bytes]) for i in range(n)),
                       dtype=np.uint32, count=n)


def _plan_header(layout: Layout, bundle: str, dtype: str, d_model: int, biases: bool = False,
                 order: list[int] | None = None) -> dict[str, Any]:
    """Find the header size (a multiple of 4 KiB) that fits the header that records it (checksums are fixed width)."""
    dummy = ["0" * 64] * layout.n_layers
    size = ALIGN
    while True:
        header = _header_dict(layout, bundle, dtype, d_model, size, dummy, biases=biases, order=order)
        need = _align(len(_encode_header(header)))
        if need <= size:
            return header
        size = need


def _check_weights(w: Mapping[str, np.ndarray], layer: int, parts: tuple[str, ...], n: int, d: int) -> None:
    for name in parts:
        if name not in w:
            raise PackError(f"layer {layer}: weights_fn returned no {name!r} matrix")
        want = (d, n) if name == "down" else (n, d)
        if tuple(np.shape(w[name])) != want:
            raise PackError(f"layer {layer}: {name} has shape {tuple(np.shape(w[name]))}, expected {want}")
        if f"{name}_bias" in w and tuple(np.shape(w[f"{name}_bias"])) != ((d,) if name == "down" else (n,)):
            raise PackError(f"layer {layer}: {name}_bias has shape {tuple(np.shape(w[name + '_bias']))}")


def has_neuron_biases(w: Mapping[str, np.ndarray], bundle: str) -> bool:
    """True if the weights carry a per-neuron bias of a part stored in ``bundle`` (gate_bias, up_bias)."""
    return any(f"{name}_bias" in w for name in BUNDLES[bundle] if name != "down")


def write_pack(
    path: str | os.PathLike[str],
    weights_fn: WeightsFn,
    layout: Layout,
    *,
    bundle: str = "up-down",
    dtype: str = "fp16",
    d_model: int,
    progress: ProgressFn | None = None,
    biases: bool | None = None,
    order: list[int] | None = None,
) -> Path:
    """Write the pack file of `layout` at `path`, atomically (temp file in the same directory, then rename).

    Args:
        weights_fn: `weights_fn(layer)` -> {"gate": f32[N, d], "up": f32[N, d], "down": f32[d, N]} (gate only needed
            for ``gate-up-down``). Called once per layer, so only one layer's weights are in memory at a time.
        layout: placements; position p of layer l stores the bundle of neuron ``layout.perms[l][p]``.
        bundle: ``"up-down"`` or ``"gate-up-down"``.
        dtype: ``"fp16"`` or ``"fp32"`` (weights are cast, round to nearest).
        d_model: hidden size (the length of every part).
        progress: called as ``progress("pack", layers_done, n_layers)`` (None: silent).
        biases: store the per-neuron biases (``gate_bias``/``up_bias`` of `weights_fn`) in the bundles (see the
            module docstring); None: if layer 0's weights have any.
        order: the order of the unit (layer) regions in the file, a permutation of the unit indices (None: index
            order; :func:`expert_order` puts co-routed experts next to each other).

    An existing file at `path` is replaced only if it is a coact pack; anything else is refused
    (:class:`common.errors.OutputExistsError`).
    """
    check_output(path, kind="pack file", is_kind=is_pack_file)  # only an existing pack may be replaced
    if bundle not in BUNDLES:
        raise PackError(f"unknown bundle schema {bundle!r}; choose one of {', '.join(BUNDLES)}")
    if dtype not in DTYPES:
        raise PackError(f"unknown pack dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if int(d_model) <= 0:
        raise PackError(f"d_model must be positive, got {d_model}")
    d = int(d_model)
    parts = BUNDLES[bundle]
    np_dtype = DTYPES[dtype]
    first = weights_fn(0) if layout.n_layers else {}
    if biases is None:
        biases = has_neuron_biases(first, bundle)
    if order is not None:
        order = _check_order(order, layout.n_layers, PackError)
    header = _plan_header(layout, bundle, dtype, d, bool(biases), order)
    bb = header["bundle_bytes"]
    width = header["width"]
    checksums: list[str] = []
    crcs: list[np.ndarray] = []
    with atomic_path(path) as tmp, open(tmp, "r+b") as f:
        f.truncate(header["file_bytes"])  # sparse zero-filled file: padding needs no writes
        f.seek(header["perm_offset"])
        perm_crc = 0
        for perm in layout.perms:
            raw_perm = np.ascontiguousarray(perm, dtype="<i4").tobytes()
            perm_crc = zlib.crc32(raw_perm, perm_crc)
            f.write(raw_perm)
        for layer in tracked(range(layout.n_layers), progress, "pack"):
            n = layout.n_neurons[layer]
            w = first if layer == 0 else weights_fn(layer)
            first = {}
            _check_weights(w, layer, parts, n, d)
            perm = layout.perms[layer]
            h = hashlib.sha256()
            f.seek(header["layer_offsets"][layer])
            step = max(1, _WRITE_CHUNK // bb)
            for a in range(0, n, step):
                idx = perm[a : a + step]
                block = np.zeros((idx.size, len(parts), width), dtype=np_dtype)
                for j, name in enumerate(parts):
                    m = np.asarray(w[name])
                    block[:, j, :d] = m[:, idx].T if name == "down" else m[idx, :]
                    if biases and name != "down" and f"{name}_bias" in w:
                        block[:, j, d] = np.asarray(w[f"{name}_bias"])[idx]
                data = block.tobytes()
                h.update(data)
                crcs.append(bundle_crcs(data, bb))
                f.write(data)
            checksums.append(h.hexdigest())
            del w
        table = (np.concatenate(crcs) if crcs else np.zeros(0, np.uint32)).astype("<u4").tobytes()
        f.seek(header["crc_offset"])
        f.write(table)
        header["checksums"] = checksums
        header["perm_crc32"] = _hex32(perm_crc)
        header["crc_table_crc32"] = _hex32(zlib.crc32(table))
        raw = _encode_header(header)
        if len(raw) > header["header_bytes"]:  # pragma: no cover - checksums are fixed width
            raise PackError("internal error: header grew after planning")
        f.seek(0)
        f.write(raw)
        f.flush()
    return Path(path)


def expert_order(units: list[Unit], routing: Mapping[str, Any]) -> list[int]:
    """A region order of ``units`` that puts experts routed together next to each other.

    ``routing[str(layer)]`` is the layer's expert co-routing count matrix (``C[e][f]`` = tokens routed to both e
    and f, diagonal = tokens routed to e; :mod:`coact.trace` records it). Layers keep their order; inside an MoE
    layer the experts follow a greedy path: start at the most routed expert, then always append the unplaced
    expert routed most often together with the last one placed (ties: the lower expert id). Why a path: a token's
    k experts are read one after another; if they are neighbours on disk, their regions' reads are close (one
    seek area, and an engine may merge the reads at region borders). Dense units and experts of a layer without
    counts keep their index order.
    """
    order: list[int] = []
    seen: set[int] = set()
    for i, u in enumerate(units):
        if u.layer in seen:
            continue
        seen.add(u.layer)
        members = [j for j, v in enumerate(units) if v.layer == u.layer]
        experts = {units[j].expert: j for j in members if units[j].expert is not None}
        counts = routing.get(str(u.layer))
        if not experts or counts is None:
            order.extend(members)
            continue
        C = np.asarray(counts, dtype=np.int64)
        if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] <= max(experts):
            raise PackError(f"layer {u.layer}: co-routing counts of shape {C.shape} do not cover its experts")
        todo = sorted(experts)
        cur = max(todo, key=lambda e: (C[e, e], -e))
        path = [cur]
        todo.remove(cur)
        while todo:
            cur = max(todo, key=lambda e: (C[path[-1], e], -e))
            path.append(cur)
            todo.remove(cur)
        order.extend([j for j in members if units[j].expert is None] + [experts[e] for e in path])
    return order


# ----------------------------------------------------------------------------------------------------------- read


class PackFile(Closing):
    """A validated pack file, read with ordinary (buffered) preads.

    The runtime's timed reads go through :mod:`runtime.engines` (O_DIRECT) using :meth:`layer_offset` and
    :attr:`bundle_bytes`; this class is for checking what a pack holds and getting weights back exactly.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
            self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise PackError(f"{self.path}: cannot open pack file ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise self._fail("not a regular file")
            self.header = self._parse()
        except OSError as e:  # e.g. a directory, or an I/O error while reading the header
            self.close()
            raise PackError(f"{self.path}: cannot read pack header ({e.strerror or e})") from None
        except BaseException:
            self.close()
            raise
        h = self.header
        self.dtype: str = h["dtype"]
        self.np_dtype: np.dtype = DTYPES[self.dtype]
        self.bundle: str = h["bundle"]
        self.parts: int = h["parts"]
        self.d_model: int = h["d_model"]
        self.width: int = int(h.get("width", h["d_model"]))  # d_model + 1 when the bundles carry biases
        self.biases: bool = bool(h.get("biases", False))
        self.bundle_bytes: int = h["bundle_bytes"]
        self.n_layers: int = h["n_layers"]
        self.layout_digest: str = h["layout_digest"]
        self.model_id: str = h["model_id"]
        self.units: list[Unit] | None = parse_units(h.get("units"), h["n_neurons"], error=self._fail)
        self.unit_order: list[int] = [int(u) for u in h.get("unit_order", range(self.n_layers))]
        self._perms: list[np.ndarray] | None = None
        self._inverses: list[np.ndarray] | None = None
        self._crcs: list[np.ndarray] | None = None

    # -- header
    def _fail(self, msg: str) -> PackError:
        return PackError(f"{self.path}: {msg}")

    def _parse(self) -> dict[str, Any]:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        prefix = os.pread(self._fd, _PREFIX.size, 0)
        if prefix[: len(MAGIC)] in OLD_MAGICS:
            raise self._fail("pack format version 1 has no block checksums; re-pack it with `coact pack`")
        if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
            raise self._fail("not a coact pack file (bad magic)")
        if len(prefix) < _PREFIX.size:
            raise self._fail("truncated pack file (header cut short)")
        _, jlen, crc = _PREFIX.unpack(prefix)
        if prefix[20:24] != b"\0" * 4:
            raise self._fail("corrupt pack header (reserved bytes not zero)")
        if jlen == 0 or jlen > _MAX_HEADER or _PREFIX.size + jlen > size:
            raise self._fail(f"truncated or corrupt pack header (JSON length {jlen}, file size {size})")
        body = os.pread(self._fd, jlen, _PREFIX.size)
        if zlib.crc32(body, zlib.crc32(prefix[:16])) != crc:
            raise self._fail("pack header checksum mismatch (corrupt header)")
        try:
            h = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise self._fail(f"corrupt pack header JSON ({' '.join(str(e).split())})") from None
        if not isinstance(h, dict):
            raise self._fail("corrupt pack header (not a JSON object)")
        self._validate_header(h, jlen, size)
        return h

    def _validate_header(self, h: dict[str, Any], jlen: int, size: int) -> None:
        required = {
            "version": int, "dtype": str, "bundle": str, "parts": int, "bundle_bytes": int, "d_model": int,
            "n_layers": int, "n_neurons": list, "header_bytes": int, "perm_offset": int, "perm_nbytes": int,
            "layer_offsets": list, "layer_nbytes": list, "file_bytes": int, "layout_digest": str, "model_id": str,
            "checksums": list, "perm_crc32": str, "crc_offset": int, "crc_nbytes": int, "crc_table_crc32": str,
        }
        for key, typ in required.items():
            if not isinstance(h.get(key), typ) or (typ is int and isinstance(h.get(key), bool)):
                raise self._fail(f"pack header field {key!r} missing or not {typ.__name__}")
        if h.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise self._fail(f"not a coact pack file (format {h.get('format')!r})")
        if h["version"] != VERSION:
            raise self._fail(f"unsupported pack version {h['version']} (this coact reads {VERSION})")
        if h["dtype"] not in DTYPES:
            raise self._fail(f"unknown dtype {h['dtype']!r}")
        if h["bundle"] not in BUNDLES or h["parts"] != len(BUNDLES[h["bundle"]]):
            raise self._fail(f"unknown bundle schema {h['bundle']!r} with {h['parts']} parts")
        width = h.get("width", h["d_model"])
        if not isinstance(width, int) or isinstance(width, bool) or width != h["d_model"] + int(bool(h.get("biases"))):
            raise self._fail(f"bundle width {width!r} is not d_model (+1 with biases)")
        if h["d_model"] <= 0 or h["bundle_bytes"] != h["parts"] * width * DTYPES[h["dtype"]].itemsize:
            raise self._fail("bundle_bytes does not equal parts * width * dtype size")
        L = h["n_layers"]
        lists = ("n_neurons", "layer_offsets", "layer_nbytes", "checksums")
        if any(len(h[k]) != L for k in lists):
            raise self._fail(f"per-layer lists do not all have n_layers={L} entries")
        hb = h["header_bytes"]
        if hb % ALIGN or hb < _PREFIX.size + jlen:
            raise self._fail(f"header_bytes {hb} is not a 4 KiB multiple holding the header")
        sizes = [int(n) for n in h["n_neurons"]]
        if any(n < 0 for n in sizes):
            raise self._fail("negative layer size")
        if h["perm_offset"] % ALIGN or h["perm_offset"] < hb or h["perm_nbytes"] != 4 * sum(sizes):
            raise self._fail("perm region inconsistent with the layer sizes")
        if h["crc_offset"] != _align(h["perm_offset"] + h["perm_nbytes"]) or h["crc_nbytes"] != 4 * sum(sizes):
            raise self._fail("bundle-checksum region inconsistent with the layer sizes")
        end = _align(h["crc_offset"] + h["crc_nbytes"])
        order = _check_order(h.get("unit_order", range(L)), L, self._fail)
        if "units" in h:
            parse_units(h["units"], sizes, error=self._fail)
        for layer in order:
            off, nb, n = h["layer_offsets"][layer], h["layer_nbytes"][layer], sizes[layer]
            if not isinstance(off, int) or off % ALIGN or off < end:
                raise self._fail(f"layer {layer} offset {off} is not 4 KiB aligned after the previous region")
            if nb != n * h["bundle_bytes"]:
                raise self._fail(f"layer {layer} holds {nb} bytes, expected N * bundle_bytes = {n * h['bundle_bytes']}")
            end = off + _align(nb)
        if h["file_bytes"] != end or h["file_bytes"] % ALIGN:
            raise self._fail(f"file_bytes {h['file_bytes']} inconsistent with the layer regions (end {end})")
        if size < h["file_bytes"]:
            raise self._fail(f"truncated pack file: {size} bytes, header says {h['file_bytes']}")
        if size != h["file_bytes"]:
            raise self._fail(f"pack file has {size} bytes, header says {h['file_bytes']}")

    # -- accessors
    def layer_offset(self, layer: int) -> int:
        """Byte offset of layer `layer`'s first bundle (a multiple of 4096)."""
        return int(self.header["layer_offsets"][self._layer(layer)])

    def n_neurons(self, layer: int) -> int:
        return int(self.header["n_neurons"][self._layer(layer)])

    def layer_nbytes(self, layer: int) -> int:
        """Bytes of bundles of `layer` (without the alignment padding)."""
        return int(self.header["layer_nbytes"][self._layer(layer)])

    def _layer(self, layer: int) -> int:
        if not 0 <= int(layer) < self.n_layers:
            raise PackError(f"{self.path}: layer {layer} out of range (pack has {self.n_layers} layers)")
        return int(layer)

    def perms(self) -> list[np.ndarray]:
        """The placements stored in the pack (checked against the recorded layout digest on first read)."""
        if self._perms is None:
            assert self._fd is not None
            raw = os.pread(self._fd, self.header["perm_nbytes"], self.header["perm_offset"])
            if len(raw) != self.header["perm_nbytes"] or _hex32(zlib.crc32(raw)) != self.header["perm_crc32"]:
                raise self._fail("perm region checksum mismatch (corrupt file)")
            flat = np.frombuffer(raw, dtype="<i4").astype(np.int64)
            bounds = np.cumsum([0] + list(self.header["n_neurons"]))
            perms = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            if perms_digest(perms) != self.layout_digest:
                raise self._fail("stored perms do not match the recorded layout digest (corrupt file)")
            self._perms = perms
        return self._perms

    def bundle_crcs(self, layer: int) -> np.ndarray:
        """uint32 [N] crc32 of every stored bundle of ``layer``, by position (table checked on first read)."""
        if self._crcs is None:
            assert self._fd is not None
            raw = os.pread(self._fd, self.header["crc_nbytes"], self.header["crc_offset"])
            if len(raw) != self.header["crc_nbytes"] or _hex32(zlib.crc32(raw)) != self.header["crc_table_crc32"]:
                raise self._fail("bundle-checksum table mismatch (corrupt file)")
            flat = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
            bounds = np.cumsum([0] + list(self.header["n_neurons"]))
            self._crcs = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return self._crcs[self._layer(layer)]

    def check_bundles(self, layer: int, first: int, data: bytes | memoryview) -> None:
        """Raise :class:`PackError` unless ``data`` is exactly the stored bundles of ``layer`` at positions
        ``first, first + 1, ...`` (each checked against its crc32)."""
        bb = self.bundle_bytes
        got = bundle_crcs(data, bb)
        want = self.bundle_crcs(layer)[first : first + got.size]
        if got.size != want.size or len(data) != got.size * bb:
            raise self._fail(f"layer {layer}: read of {len(data)} bytes at position {first} is not whole bundles")
        bad = np.nonzero(got != want)[0]
        if bad.size:
            raise self._fail(f"layer {layer}: bundle at position {first + int(bad[0])} fails its checksum "
                             "(file corrupt)")

    def inverse(self, layer: int) -> np.ndarray:
        if self._inverses is None:
            self._inverses = Layout(self.perms()).inverses
        return self._inverses[self._layer(layer)]

    def layout(self) -> Layout:
        """The pack's placements as a :class:`Layout` (model id and solver name come from the header)."""
        return Layout(self.perms(), model_id=self.model_id, solver=str(self.header.get("solver", "")),
                      units=self.units)

    def read_neurons(self, layer: int, neurons: np.ndarray, layout: Layout | None = None, *,
                     verify: bool = True) -> np.ndarray:
        """The stored weights of `neurons` (ids, any order) of `layer`: array [k, parts, width] in the pack dtype
        (``width = d_model``, or ``d_model + 1`` with the part's per-neuron bias last when the pack has biases).

        Neuron ids are mapped to positions through `layout` (which must be the pack's layout: checked by digest) or,
        if not given, through the perms stored in the pack. Reads one buffered pread per run of positions. With
        `verify` (default) every bundle read is checked against its crc32 (:class:`PackError` on a mismatch).
        """
        layer = self._layer(layer)
        ids = np.asarray(neurons, dtype=np.int64).reshape(-1)
        n = self.n_neurons(layer)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise PackError(f"{self.path}: neuron ids out of range [0, {n}) for layer {layer}")
        if layout is not None:
            check_layout_matches(self, layout)
            inv = layout.inverses[layer]
        else:
            inv = self.inverse(layer)
        pos = inv[ids]
        uniq, where = np.unique(pos, return_inverse=True)
        out = np.empty((uniq.size, self.parts, self.width), dtype=self.np_dtype)
        starts, lengths = runs(uniq)
        bb, base, k = self.bundle_bytes, self.layer_offset(layer), 0
        assert self._fd is not None
        for s, m in zip(starts.tolist(), lengths.tolist()):
            raw = os.pread(self._fd, m * bb, base + s * bb)
            if len(raw) != m * bb:
                raise self._fail(f"short read in layer {layer} (truncated file?)")
            if verify:
                self.check_bundles(layer, s, raw)
            out[k : k + m] = np.frombuffer(raw, dtype=self.np_dtype).reshape(m, self.parts, self.width)
            k += m
        return out[where.reshape(-1)]

    def _zero_region(self, start: int, end: int, what: str) -> None:
        assert self._fd is not None
        off = start
        while off < end:
            raw = os.pread(self._fd, min(end - off, _WRITE_CHUNK), off)
            if not raw:
                raise self._fail(f"{what}: unexpected end of file")
            if raw.count(0) != len(raw):
                at = off + len(raw) - len(raw.lstrip(b"\0"))
                raise self._fail(f"{what}: padding at byte {at} is not zero (file corrupt)")
            off += len(raw)

    def verify(self) -> None:
        """Check every byte of the file; raise :class:`PackError` on the first problem.

        The header's own crc32 is checked on open; here: the header padding, the perm region (crc32 and layout
        digest), the bundle-checksum table (crc32), every bundle (crc32) and every layer (sha256), and that all
        padding between regions is zero. So a single flipped byte anywhere in the file is detected.
        """
        assert self._fd is not None
        h = self.header
        jlen = _PREFIX.unpack(os.pread(self._fd, _PREFIX.size, 0))[1]
        self._zero_region(_PREFIX.size + jlen, h["header_bytes"], "header")
        self._perms = None
        self.perms()  # checks the perm region's crc32 and the layout digest
        self._zero_region(h["perm_offset"] + h["perm_nbytes"], h["crc_offset"], "perm region")
        self._crcs = None
        self.bundle_crcs(0) if self.n_layers else None  # checks the table's crc32
        order = self.unit_order
        first = h["layer_offsets"][order[0]] if self.n_layers else h["file_bytes"]
        self._zero_region(h["crc_offset"] + h["crc_nbytes"], first, "checksum table")
        bb = self.bundle_bytes
        step = max(1, _WRITE_CHUNK // bb) * bb
        for k, layer in enumerate(order):
            sha = hashlib.sha256()
            base, total = self.layer_offset(layer), self.layer_nbytes(layer)
            done = 0
            while done < total:
                raw = os.pread(self._fd, min(total - done, step), base + done)
                if len(raw) != min(total - done, step):
                    raise self._fail(f"layer {layer}: unexpected end of file")
                self.check_bundles(layer, done // bb, raw)
                sha.update(raw)
                done += len(raw)
            if sha.hexdigest() != h["checksums"][layer]:
                raise self._fail(f"layer {layer}: checksum mismatch (file corrupt)")
            end = h["layer_offsets"][order[k + 1]] if k + 1 < self.n_layers else h["file_bytes"]
            self._zero_region(base + total, end, f"layer {layer}")

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None


    def __repr__(self) -> str:
        return (f"PackFile({str(self.path)!r}, layers={self.n_layers}, bundle={self.bundle}, dtype={self.dtype}, "
                f"bundle_bytes={self.bundle_bytes})")


def check_layout_matches(pack: PackFile, layout: Layout) -> None:
    """Raise :class:`PackError` unless `layout` is the layout `pack` was written with (same perms digest)."""
    if layout.n_layers != pack.n_layers:
        raise PackError(f"{pack.path}: layout has {layout.n_layers} layers, pack has {pack.n_layers}")
    sizes = [pack.n_neurons(i) for i in range(pack.n_layers)]
    if layout.n_neurons != sizes:
        raise PackError(f"{pack.path}: layout layer sizes differ from the pack's")
    if layout.digest != pack.layout_digest:
        raise PackError(f"{pack.path}: pack was written with another layout (digest {pack.layout_digest[:12]}, "
                        f"layout {layout.digest[:12]})")
