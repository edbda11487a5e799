"""Build the committed multi-domain corpus files in ``data/corpora/`` (deterministic; run once, commit the output).

Why files in the repository: the profiling corpora must be the same bytes on every machine (trace metadata records
a content digest) and tests must not depend on ``apt``. Each source below is redistributable (licence next to it in
``data/corpora/README.md`` and in the ``CORPORA`` table of :mod:`coact.corpora`); this script only extracts and
normalises their text and writes it gzip-compressed with a fixed mtime, so two runs give identical files.

Sources (all from package registries, installable offline):

- ``code``: the top-level modules of the Python standard library (``Lib/*.py`` of the running interpreter, sorted by
  name, first :data:`CODE_BYTES` bytes; PSF licence). Debian's ``libpython3.11-stdlib`` ships the same files.
- ``literary``: *The Devil's Dictionary* by Ambrose Bierce (public domain), from Debian's ``dict-devil`` package
  (``/usr/share/dictd/devil.dict.dz``: ``apt-get install dict-devil``).

Usage: ``python -m coact.corpora.build [--devil PATH] [--out data/corpora]``.
"""
from __future__ import annotations

import argparse
import gzip
import io
import sysconfig
from pathlib import Path

#: Bytes of standard-library source kept (about 170k SmolLM2 tokens: enough for 80/20 windows and budget curves).
CODE_BYTES = 600_000
DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")


def stdlib_code(limit: int = CODE_BYTES) -> str:
    """Whole top-level standard-library modules in name order until ``limit`` bytes; each file is preceded by a
    ``# file: NAME`` line (a module boundary the way a code corpus shows it)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for p in sorted(lib.glob("*.py")):
        if p.name.startswith("_") or p.name == "this.py":  # private helpers; this.py is rot13 text, not code
            continue
        text = p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").strip("\n")
        if size + len(text) > limit and parts:
            break
        parts.append(f"# file: {p.name}\n{text}")
        size += len(text)
    return "\n\n".join(parts) + "\n"


def devils_dictionary(path: Path = DEVIL_DICT) -> str:
    """The dictionary's preface and entries (the dictd header records and the trailing index line dropped)."""
    raw = gzip.open(path, "rt", encoding="latin-1").read()  # a dictzip file is a gzip file
    start = raw.index("PREFACE")
    body = raw[start:]
    end = body.rfind("\n abcdefghijklmnopqrstuvwxyz")
    body = body[:end] if end > 0 else body
    lines = [ln.rstrip() for ln in body.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def write_gz(text: str, path: Path) -> Path:
    """gzip with mtime 0 and no file name in the header: the same text always gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "data" / "corpora")
    ap.add_argument("--devil", type=Path, default=DEVIL_DICT)
    a = ap.parse_args(argv)
    for name, text in (("python-stdlib.txt.gz", stdlib_code()), ("devils-dictionary.txt.gz", devils_dictionary(a.devil))):
        p = write_gz(text, a.out / name)
        print(f"{p}: {len(text):,} characters, {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
