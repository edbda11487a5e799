"""Cheap checks on input files before anything is read: regular files only, and safetensors headers parsed and
validated against the file size without touching the tensor data.

Why: loaders used to read every tensor first and check sizes afterwards, so a tiny hostile file (a safetensors
header declaring a huge tensor, a sparse file, a zip bomb) cost gigabytes of memory before being refused, and a FIFO
passed as an input blocked forever in ``open``. With these helpers a loader checks the declared shapes against its
own metadata and the real file size first, then reads only what it has accepted.
"""
from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: safetensors dtype name -> item size in bytes.
ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: A larger safetensors JSON header is refused (coact's own headers are a few KiB).
MAX_ST_HEADER = 64 << 20


def require_regular(path: str | os.PathLike[str], error: type[Exception], what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file; ``error`` with one line otherwise (FIFOs, devices, sockets
    and folders are refused before any ``open``, which would block on a FIFO)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a file"
        raise error(f"{p}: {what} is {kind}, not a regular file")
    return st


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def safetensors_header(path: str | os.PathLike[str], error: type[Exception]) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """(string metadata, {name: TensorInfo}) of a safetensors file, from its header only.

    Checks, without reading tensor data: a regular file; the 8-byte header length within the file and at most
    :data:`MAX_ST_HEADER`; a JSON object; every tensor with a known dtype, a non-negative integer shape, and data
    offsets inside the file whose length is exactly ``prod(shape) * itemsize``; tensors that do not overlap and
    end exactly at the end of the file. Raises ``error`` with one line otherwise.
    """
    p = Path(path)
    size = require_regular(p, error, "safetensors file").st_size
    with open(p, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise error("not a safetensors file (shorter than 8 bytes)")
        (hlen,) = struct.unpack("<Q", prefix)
        if hlen == 0 or hlen > MAX_ST_HEADER or 8 + hlen > size:
            raise error(f"not a safetensors file (header length {hlen}, file size {size})")
        raw = f.read(hlen)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"corrupt safetensors header ({' '.join(str(e).split())})") from None
    if not isinstance(header, dict):
        raise error("corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise error("corrupt safetensors metadata (not a mapping of strings)")
    data_start, data_len = 8 + hlen, size - 8 - hlen
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(shape)
            if dtype not in ST_DTYPES or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                 for x in (*shape, a, b)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise error(f"corrupt safetensors entry for tensor {name!r}") from None
        n = 1
        for x in shape:
            n *= x
        if not a <= b <= data_len or b - a != n * ST_DTYPES[dtype]:
            raise error(f"tensor {name!r} declares {shape} {dtype} at bytes [{a}, {b}) but the file holds "
                        f"{data_len} data bytes")
        tensors[name] = TensorInfo(dtype, shape, data_start + a, data_start + b)
        spans.append((a, b))
    spans.sort()
    pos = 0
    for a, b in spans:
        if a < pos:
            raise error("corrupt safetensors file (overlapping tensors)")
        pos = b
    if pos != data_len:
        raise error(f"safetensors file size does not match its header ({data_len} data bytes, tensors end at {pos})")
    return {str(k): v for k, v in meta.items()}, tensors


def read_json_small(path: str | os.PathLike[str], error: type[Exception], what: str,
                    limit: int = 16 << 20) -> Any:
    """A JSON document from a regular file of at most ``limit`` bytes; ``error`` with one line otherwise."""
    st = require_regular(path, error, what)
    if st.st_size > limit:
        raise error(f"{path}: {what} is {st.st_size} bytes, more than the {limit} a coact {what} can be")
    try:
        with open(path, "rb") as f:
            raw = f.read(st.st_size + 1)  # read(n) allocates n bytes up front: ask only for what is there
        if len(raw) > limit:
            raise error(f"{path}: {what} is larger than the {limit} bytes a coact {what} can be")
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path}: {what} is not valid JSON ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
