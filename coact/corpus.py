"""Corpora and reproducible token windows.

Why windows: a profiling part and a held-out part must never overlap, and a trace must be reproducible from its
metadata alone. A corpus is tokenised once as one long stream (documents joined by blank lines, no special
tokens); a trace covers the token range [start, start + n_tokens) of that stream, cut into independent sequences
of `ctx` tokens (the last may be shorter). The demo profiles on [0, P) and holds out [P, P + H).

Corpus specs (accepted everywhere a corpus is: ``coact trace/perplexity/demo --corpus``, the workflow functions):

- a named corpus (:mod:`coact.corpora`, ``coact corpus list``): ``wiki`` (alias ``wikitext``), ``pydoc``, ``code``,
  ``literary``, optionally with a part: ``NAME@profile`` (first ~80 % of the text) or ``NAME@heldout`` (the rest);
  ``default``: the profiling recipe that won the leave-one-domain-out benchmark (:data:`coact.corpora.DEFAULT_RECIPE`);
- a text file path, or a directory saved with ``datasets.Dataset.save_to_disk`` (its ``text`` column);
- ``a+b``: the texts concatenated in the order given (unweighted, as before);
- ``a:0.5+b:0.3+c:0.2``: a *weighted mixture*: blocks of whole paragraphs (~:data:`MIX_BLOCK` characters) taken from
  the components in turn so that every prefix of the mixture holds the components in the given proportions (by
  characters); it ends when a component runs out. So the first P tokens of a mixture are a P-token sample of the
  recipe, whatever P is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from pydoc_data import topics

from coact.corpora import DEFAULT_RECIPE, PARTS, lookup, split_text
from coact.errors import CorpusError

#: Characters per block of a weighted mixture (whole paragraphs, so a block may be longer).
MIX_BLOCK = 2000


def _pydoc_text() -> str:
    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def parse_mixture(spec: str) -> list[tuple[str, float | None]]:
    """``a:0.5+b:0.3`` -> [("a", 0.5), ("b", 0.3)]; a part without ``:weight`` gets None. Weights must be > 0; a
    spec mixing weighted and unweighted parts is refused (the proportions would be undefined)."""
    out: list[tuple[str, float | None]] = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise CorpusError(f"malformed corpus mixture {spec!r}: empty part")
        name, sep, w = part.rpartition(":")
        weight = None
        if sep:
            try:
                weight = float(w)
            except ValueError:
                name, weight = part, None  # a ':' inside a path, not a weight
        if weight is not None and not weight > 0:
            raise CorpusError(f"corpus weight must be > 0, got {part!r}")
        out.append((name if weight is not None else part, weight))
    kinds = {w is None for _, w in out}
    if len(kinds) > 1:
        raise CorpusError(f"corpus mixture {spec!r}: give a weight to every part or to none")
    return out


def _blocks(text: str, size: int = MIX_BLOCK) -> list[str]:
    blocks, buf, n = [], [], 0
    for para in text.split("\n\n"):
        buf.append(para)
        n += len(para)
        if n >= size:
            blocks.append("\n\n".join(buf))
            buf, n = [], 0
    if buf:
        blocks.append("\n\n".join(buf))
    return [b for b in blocks if b.strip()]


def mix_texts(texts: list[str], weights: list[float], block: int = MIX_BLOCK) -> str:
    """Interleave paragraph blocks of ``texts`` so that every prefix holds them in proportion to ``weights`` (by
    characters): the next block always comes from the component furthest below its share. Stops when the component
    due next has no block left (so the proportions hold to the end). Deterministic."""
    total_w = float(sum(weights))
    share = [w / total_w for w in weights]
    blocks = [_blocks(t, block) for t in texts]
    pos = [0] * len(texts)
    taken = [0] * len(texts)
    out: list[str] = []
    while True:
        done = sum(taken)
        i = max(range(len(texts)), key=lambda k: (share[k] * (done + 1) - taken[k], -k))
        if pos[i] >= len(blocks[i]):
            break
        b = blocks[i][pos[i]]
        pos[i] += 1
        taken[i] += len(b)
        out.append(b)
    return "\n\n".join(out)


def _named(spec: str) -> str | None:
    name, _, part = spec.partition("@")
    info = lookup(name)
    if info is None:
        if part:
            raise CorpusError(f"unknown corpus {name!r} in {spec!r}; see `coact corpus list`")
        return None
    text = info.load()
    if not part:
        return text
    if part not in PARTS:
        raise CorpusError(f"unknown corpus part {part!r} in {spec!r}; choose from {', '.join(PARTS)}")
    return split_text(text, part)


def load_text(spec: str) -> str:
    """The raw text of a corpus spec (see module docstring)."""
    if spec == "default":
        return load_text(DEFAULT_RECIPE)
    if "+" in spec and not Path(spec).exists() or ("@" not in spec and ":" in spec and not Path(spec).exists()
                                                  and parse_mixture(spec)[0][1] is not None):
        parts = parse_mixture(spec)
        if parts[0][1] is None:
            return "\n\n".join(load_text(name) for name, _ in parts)
        return mix_texts([load_text(name) for name, _ in parts], [float(w) for _, w in parts])  # type: ignore[arg-type]
    if spec == "pydoc":
        return _pydoc_text()
    if not Path(spec).expanduser().exists():
        named = _named(spec)
        if named is not None:
            return named
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
    raise CorpusError(f"corpus {spec!r} not found: use a named corpus (coact corpus list), a text file, a saved "
                      "dataset folder, or a mixture 'a:0.5+b:0.5'")


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
