"""Named profiling corpora: one per kind of text, each with its provenance and licence beside it.

Why several domains: statistics profiled on one kind of text transfer poorly to another (issue 13; BENCHMARKS.md
"Generalisation"), so coact profiles on a mixture of kinds and *measures* what a placement loses on text it never
saw. Every corpus here is redistributable and installable offline: either shipped with Python, or extracted from a
package-registry package into ``data/corpora/`` by :mod:`coact.corpora.build` (deterministic, committed), or -- the
one exception, WikiText-2, whose licence allows redistribution but which no registry packages -- read from the
shared corpora folder.

| name | domain | licence | source |
|---|---|---|---|
| ``wiki`` | encyclopedic prose | CC BY-SA 3.0 | WikiText-2 test split (Merity et al. 2016), ``shared/corpora/wikitext2-test.txt`` |
| ``pydoc`` | technical documentation | PSF-2.0 | Python's ``pydoc_data.topics`` (the language reference topics) |
| ``code`` | source code | PSF-2.0 | Python 3.11 standard library, top-level modules (``data/corpora/python-stdlib.txt.gz``) |
| ``literary`` | literary prose | public domain | Ambrose Bierce, *The Devil's Dictionary* (Debian ``dict-devil``; ``data/corpora/devils-dictionary.txt.gz``) |

Parts: ``NAME@profile`` is the text before the first paragraph break at or after :data:`PROFILE_SHARE` (80 %) of
the characters, ``NAME@heldout`` the rest. The split is made in the text, not in tokens, so it is the same for every
tokenizer and never overlaps: profile on ``@profile``, evaluate on ``@heldout``.

:mod:`coact.corpora.sample` holds a small committed sample of every corpus's activations at the +20 % perplexity
operating point (``data/sample_domains``, two layers) for notebook 05 and its test.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydoc_data import topics

from coact.errors import CorpusError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "corpora"
#: Share of a corpus's characters in its profiling part (the rest is held out).
PROFILE_SHARE = 0.8
PARTS = ("profile", "heldout")
WIKITEXT_FILE = "wikitext2-test.txt"
#: Token counts measured with SmolLM2's tokenizer (written by bench/bench_generalisation.py; shown by `corpus list`).
TOKENS_FILE = DATA / "tokens.json"


def _pydoc() -> str:
    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def _gz(name: str) -> Callable[[], str]:
    def load() -> str:
        p = DATA / name
        try:
            return gzip.decompress(p.read_bytes()).decode("utf-8")
        except OSError as exc:
            raise CorpusError(f"corpus file {p} missing or unreadable ({exc}); rebuild with "
                              "`python -m coact.corpora.build`") from exc
    return load


def wikitext_path() -> Path:
    """WikiText-2 test: ``$COACT_WIKITEXT``, else ``shared/corpora/`` beside the repository, else ``/work/shared``."""
    cands = [Path(os.environ["COACT_WIKITEXT"])] if os.environ.get("COACT_WIKITEXT") else []
    cands += [REPO.parent / "shared" / "corpora" / WIKITEXT_FILE, Path("/work/shared/corpora") / WIKITEXT_FILE]
    for c in cands:
        if c.is_file():
            return c
    raise CorpusError(f"WikiText-2 ({WIKITEXT_FILE}) not found; set COACT_WIKITEXT to its path "
                      f"(looked in {', '.join(str(c) for c in cands)})")


def _wiki() -> str:
    return wikitext_path().read_text(encoding="utf-8")


@dataclass(frozen=True)
class CorpusInfo:
    """One named corpus: what kind of text, under which licence, from where, and how to load it."""

    name: str
    domain: str
    licence: str
    source: str
    load: Callable[[], str]


CORPORA: dict[str, CorpusInfo] = {c.name: c for c in (
    CorpusInfo("wiki", "encyclopedic prose", "CC BY-SA 3.0",
               "WikiText-2 test split (Merity et al. 2016), shared/corpora/wikitext2-test.txt", _wiki),
    CorpusInfo("pydoc", "technical documentation", "PSF-2.0",
               "Python's pydoc_data.topics (language reference topics)", _pydoc),
    CorpusInfo("code", "source code", "PSF-2.0",
               "Python 3.11 standard library, top-level modules (data/corpora/python-stdlib.txt.gz)",
               _gz("python-stdlib.txt.gz")),
    CorpusInfo("literary", "literary prose", "public domain",
               "Ambrose Bierce, The Devil's Dictionary (Debian dict-devil; data/corpora/devils-dictionary.txt.gz)",
               _gz("devils-dictionary.txt.gz")),
)}
#: Other spellings accepted for a name.
ALIASES = {"wikitext": "wiki", "wikitext2": "wiki", "stdlib": "code", "devil": "literary"}
DOMAINS = tuple(CORPORA)

#: The recipe `coact trace` profiles on without --corpus: the winner of the leave-one-domain-out benchmark
#: (bench/bench_generalisation.py; README "Profiling recipe" says why).
DEFAULT_RECIPE = "wiki@profile:0.25+pydoc@profile:0.25+code@profile:0.25+literary@profile:0.25"


def lookup(name: str) -> CorpusInfo | None:
    """The named corpus ``name`` (aliases allowed), or None."""
    return CORPORA.get(ALIASES.get(name, name))


def split_text(text: str, part: str, share: float = PROFILE_SHARE) -> str:
    """The ``profile`` or ``heldout`` part of a text (see the module docstring): cut at the first blank line at or
    after ``share`` of the characters (at ``share`` exactly if there is none)."""
    if part not in PARTS:
        raise CorpusError(f"unknown corpus part {part!r}; choose from {', '.join(PARTS)}")
    at = int(len(text) * share)
    cut = text.find("\n\n", at)
    cut = at if cut < 0 else cut
    return text[:cut] if part == "profile" else text[cut:].lstrip("\n")


def token_counts() -> dict[str, dict[str, int]]:
    """Measured SmolLM2 token counts per corpus and part ({} if never measured)."""
    try:
        return json.loads(TOKENS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def corpus_table() -> list[dict[str, object]]:
    """One row per named corpus for `coact corpus list`: name, domain, characters, tokens (when measured), licence,
    source."""
    counts = token_counts().get("counts", {})
    rows = []
    for c in CORPORA.values():
        try:
            chars: int | None = len(c.load())
        except CorpusError:
            chars = None
        rows.append({"name": c.name, "domain": c.domain, "characters": chars,
                     "tokens": counts.get(c.name, {}).get("all"),
                     "profile_tokens": counts.get(c.name, {}).get("profile"),
                     "heldout_tokens": counts.get(c.name, {}).get("heldout"),
                     "licence": c.licence, "source": c.source})
    return rows
