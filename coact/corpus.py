"""Corpora and reproducible token windows.

Why windows: a profiling part and a held-out part must never overlap, and a trace must be reproducible from its
metadata alone. A corpus is tokenised once as one long stream (documents joined by blank lines, no special
tokens); a trace covers the token range [start, start + n_tokens) of that stream, cut into independent sequences
of `ctx` tokens (the last may be shorter). The demo profiles on [0, P) and holds out [P, P + H).

Corpus specs: `pydoc` (built in: the text of Python's own `pydoc_data.topics`, always available offline), a text
file path, a directory saved with `datasets.Dataset.save_to_disk` (its `text` column), or several of these joined
with `+` (a mixture: the streams are concatenated in the order given).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from pydoc_data import topics

from coact.errors import CorpusError


def _pydoc_text() -> str:
    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def load_text(spec: str) -> str:
    """The raw text of a corpus spec (see module docstring)."""
    if "+" in spec and not Path(spec).exists():
        return "\n\n".join(load_text(part) for part in spec.split("+"))
    if spec == "pydoc":
        return _pydoc_text()
    p = Path(spec).expanduser()
    if p.is_file():
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise CorpusError(f"cannot read corpus {spec!r}: {exc}") from exc
        return decode_text(data, spec)
    if p.is_dir():
        try:
            import datasets

            ds = datasets.load_from_disk(str(p))
        except Exception as exc:  # datasets raises several types for a foreign folder
            raise CorpusError(f"{spec!r} is not a dataset saved with datasets.save_to_disk: {exc}") from exc
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
        if "text" not in ds.column_names:
            raise CorpusError(f"dataset {spec!r} has no 'text' column (columns: {ds.column_names})")
        return "\n\n".join(t for t in ds["text"] if t)
    raise CorpusError(f"corpus {spec!r} not found: use 'pydoc', a text file, or a saved dataset folder")


#: A corpus file may have at most this share of bytes outside valid UTF-8 (a stray Latin-1 byte is fine).
MAX_INVALID_SHARE = 0.01


def decode_text(data: bytes, spec: str) -> str:
    """The text of a corpus file; refuse binaries (any NUL byte, or more than :data:`MAX_INVALID_SHARE` of the bytes
    in invalid UTF-8 sequences): tokenising ``/bin/ls`` would give a trace of noise without any error."""
    if b"\0" in data:
        raise CorpusError(f"corpus {spec!r} is a binary file (it contains NUL bytes), not text")
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    if data and bad > MAX_INVALID_SHARE * len(data):
        raise CorpusError(f"corpus {spec!r} is not UTF-8 text ({bad} invalid byte sequences in {len(data)} bytes)")
    return text


def tokenize(text: str, tokenizer: Any) -> np.ndarray:
    """One token stream (int64) for the whole text, without special tokens."""
    # Tokenise in paragraph-aligned pieces: fast tokenizers are much faster on many short strings than one huge one.
    pieces, buf, size = [], [], 0
    for para in text.split("\n\n"):
        buf.append(para)
        size += len(para)
        if size > 20_000:
            pieces.append("\n\n".join(buf) + "\n\n")
            buf, size = [], 0
    if buf:
        pieces.append("\n\n".join(buf))
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return np.fromiter((t for seq in ids for t in seq), dtype=np.int64)


def token_windows(stream: np.ndarray, start: int, n_tokens: int, ctx: int) -> list[np.ndarray]:
    """Cut tokens [start, start + n_tokens) of `stream` into consecutive sequences of at most `ctx` tokens."""
    if start < 0 or n_tokens <= 0 or ctx <= 0:
        raise CorpusError(f"bad token range: start={start}, tokens={n_tokens}, ctx={ctx}")
    if start + n_tokens > len(stream):
        raise CorpusError(
            f"corpus has {len(stream)} tokens, the range [{start}, {start + n_tokens}) does not fit"
        )
    part = stream[start : start + n_tokens]
    return [part[i : i + ctx] for i in range(0, n_tokens, ctx)]


def text_digest(text: str) -> str:
    """Short content digest of a corpus, recorded in trace metadata."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
