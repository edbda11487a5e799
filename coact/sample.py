"""Data for the analysis notebooks: the small committed sample in ``data/sample``, or fresh captures from the model.

Why a module: both notebooks (and their test) need the same three traces of the same model — a *profiling* trace
(statistics and placements are computed on it), a *held-out* trace of the same corpus (placements are judged on it)
and a trace of a *second corpus* (to see how well statistics transfer) — and must run either without the model, on
the sample committed in ``data/sample`` (CI, a quick look), or on fresh captures of the real model (a real study).
The choice is made by the environment variable ``COACT_NOTEBOOK_DATA``:

- ``sample`` (default): ``data/sample/{profile,heldout,wikitext}``, produced by ``coact trace`` with the commands
  recorded in ``data/README.md`` (1,024 + 256 tokens of ``pydoc`` and 512 tokens of WikiText-2, SmolLM2-135M,
  CATS 90 %). The co-activation statistics are not committed (dense counts of 30 layers x 1,536² neurons are
  283 MB); :func:`load_sample` recomputes them with :func:`coact.stats.compute_stats` in a few seconds and checks
  their digest against the one recorded in ``data/sample/manifest.json``.
- ``model``: capture with the real model through :func:`coact.workflow.capture`: P profiling tokens of ``pydoc``,
  the next H tokens as held-out text, and W tokens of ``../shared/corpora/wikitext2-test.txt``, both with the
  profiling trace's CATS thresholds. ``COACT_NOTEBOOK_TOKENS`` is ``P`` or ``P,H,W`` (default 8192,1024,2048).
  Traces are kept in ``$COACT_CACHE/notebook-data/`` and reused by later runs. If the WikiText-2 file is absent,
  the sample's WikiText-2 trace is used instead (same model; thresholds calibrated on the first 1,024 ``pydoc``
  tokens, like a model-mode profile's when P >= 1,024), with a note.

Everything returned is a plain :class:`coact.trace.Trace` / :class:`coact.stats.CoactStats`; the notebooks do the
analysis themselves with the public API.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from coact.errors import CoactError
from coact.models import cache_dir, load_model
from coact.stats import compute_stats
from coact.trace import Trace
from coact.workflow import capture

DATA_ENV = "COACT_NOTEBOOK_DATA"
TOKENS_ENV = "COACT_NOTEBOOK_TOKENS"
MODES = ("sample", "model")
#: The second corpus, relative to the repository root (the steering repo's shared corpora sit beside it).
WIKITEXT_RELPATH = Path("..") / "shared" / "corpora" / "wikitext2-test.txt"
MODEL_SPEC = "smollm2"
MODEL_HELDOUT_TOKENS = 1024
MODEL_OTHER_TOKENS = 2048
MODEL_PROFILE_TOKENS = 8192


def repo_root() -> Path:
    """The repository this module belongs to (``coact/`` sits at its top level)."""
    return Path(__file__).resolve().parent.parent


def sample_dir() -> Path:
    """``data/sample`` of the repository."""
    return repo_root() / "data" / "sample"


def data_mode(mode: str | None = None) -> str:
    """``mode`` if given, else ``$COACT_NOTEBOOK_DATA``, else ``"sample"``; raises :class:`CoactError` if unknown."""
    m = (mode or os.environ.get(DATA_ENV) or "sample").strip().lower()
    if m not in MODES:
        raise CoactError(f"{DATA_ENV}={m!r}: expected one of {', '.join(MODES)}")
    return m


def wikitext_path() -> Path | None:
    """The WikiText-2 test split at ``../shared/corpora/wikitext2-test.txt`` relative to the repository root, if present."""
    p = (repo_root() / WIKITEXT_RELPATH).resolve()
    return p if p.is_file() else None


def manifest() -> dict[str, Any]:
    """``data/sample/manifest.json``: what each sample trace is and the digest of its statistics."""
    p = sample_dir() / "manifest.json"
    if not p.is_file():
        raise CoactError(f"no sample manifest at {p}; see data/README.md to produce the sample")
    return json.loads(p.read_text())


def layer_stats(trace: Any, layers: Sequence[int] | None = None, *, start: int = 0, stop: int | None = None,
                progress: bool = False) -> Any:
    """:func:`coact.stats.compute_stats` of tokens ``[start, stop)`` restricted to ``layers`` (default: all).

    Layer ``j`` of the result is layer ``layers[j]`` of the trace (recorded in ``meta["layers"]``); use it with
    ``trace.packed(...)[:, layers, :]`` so that simulations see the same layers. Counting only the layers an
    analysis needs keeps memory and time small (a full SmolLM2 statistics set is 30 dense 1,536² matrices).
    """
    if layers is None:
        return compute_stats(trace, start=start, stop=stop, progress=progress)
    layers = [int(x) for x in layers]
    stop = trace.n_tokens if stop is None else int(stop)
    packed = np.ascontiguousarray(trace.packed(start, stop)[:, layers, :])
    st = compute_stats(packed, n_neurons=trace.n_neurons, progress=progress)
    st.meta = {**trace.meta, **st.meta, "layers": layers, "token_range": [int(start), int(stop)]}
    st.meta["n_layers"] = len(layers)
    return st


def load_sample(*, layers: Sequence[int] | None = None, verify: bool = True) -> tuple[Any, Any]:
    """The committed sample's profiling :class:`~coact.trace.Trace` and its :class:`~coact.stats.CoactStats`.

    The statistics are recomputed from the trace (see the module docstring). With all layers and ``verify``, their
    digest must equal the one in ``data/sample/manifest.json`` (what ``coact stats data/sample/profile`` printed
    when the sample was made), so the sample is checked to be intact and counting to be reproducible.
    """
    tr = Trace.load(sample_dir() / "profile")
    st = layer_stats(tr, layers)
    if verify and layers is None:
        want = manifest()["traces"]["profile"]["stats_digest"]
        if st.digest != want:
            raise CoactError(f"sample statistics digest {st.digest[:12]}… differs from the recorded {want[:12]}…")
    return tr, st


@dataclass
class NotebookData:
    """The traces a notebook works on (see the module docstring).

    Attributes:
        mode: ``"sample"`` or ``"model"``.
        profile: profiling trace (statistics and placements come from it).
        heldout: held-out trace of the same corpus, sparsified with the profiling trace's thresholds.
        other: a trace of a second corpus (WikiText-2) with the same thresholds, or None if none is available.
        other_name: a short name of the second corpus.
        model: the model spec to load for weights (``"smollm2"``) in model mode, None for the sample.
        notes: sentences a notebook should show (e.g. a fallback that was taken).
    """

    mode: str
    profile: Any
    heldout: Any
    other: Any | None
    other_name: str = "wikitext2"
    model: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return int(self.profile.n_layers)

    @property
    def n_neurons(self) -> int:
        return int(self.profile.n_neurons)

    @property
    def d_model(self) -> int:
        return int(self.profile.meta["d_model"])

    @property
    def model_id(self) -> str:
        return str(self.profile.model_id)

    def describe(self) -> str:
        """A few lines saying what the data is."""
        def one(name: str, t: Any) -> str:
            m = t.meta
            return (f"  {name:8s} {t.n_tokens:6,d} tokens of {m['corpus']!s} from token {m['token_start']:,} "
                    f"({m['method']} {m['sparsity']:.0%}) -> {t.path}")

        lines = [f"data mode: {self.mode}; model {self.model_id}: {self.n_layers} layers x {self.n_neurons} "
                 f"neurons, d_model {self.d_model}",
                 one("profile", self.profile), one("heldout", self.heldout)]
        if self.other is not None:
            lines.append(one(self.other_name, self.other))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _load_or_capture(handle: Any, corpus: str, out: Path, **kw: Any) -> Any:
    if (out / "coact_trace.json").is_file():
        return Trace.load(out)
    return capture(handle, corpus, out, **kw)


def token_budget(spec: str | None = None) -> tuple[int, int, int]:
    """(profile, held-out, second-corpus) token counts of model mode from ``P`` or ``P,H,W``
    (default ``$COACT_NOTEBOOK_TOKENS``, else 8192,1024,2048)."""
    spec = spec if spec is not None else os.environ.get(TOKENS_ENV, "")
    vals = [MODEL_PROFILE_TOKENS, MODEL_HELDOUT_TOKENS, MODEL_OTHER_TOKENS]
    parts = [p.strip().replace("_", "") for p in spec.split(",") if p.strip()]
    if len(parts) not in (0, 1, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CoactError(f"{TOKENS_ENV}={spec!r}: expected P or P,H,W (positive token counts)")
    vals[: len(parts)] = [int(p) for p in parts]
    return vals[0], vals[1], vals[2]


def load_notebook_data(mode: str | None = None, *, tokens: str | tuple[int, int, int] | None = None,
                       out: str | Path | None = None, progress: bool = False) -> NotebookData:
    """The profiling, held-out and second-corpus traces for ``mode`` (default: ``$COACT_NOTEBOOK_DATA``).

    In model mode, P profiling tokens of ``pydoc`` are captured with :func:`coact.workflow.capture` into ``out``
    (default ``$COACT_CACHE/notebook-data/...``), then the next H tokens (held out) and W tokens of WikiText-2, both
    with the profiling trace's CATS thresholds; (P, H, W) come from `tokens` (a tuple or ``"P,H,W"``, default
    ``$COACT_NOTEBOOK_TOKENS``, see :func:`token_budget`). Existing traces there are reused.
    """
    m = data_mode(mode)
    notes: list[str] = []
    if m == "sample":
        d = sample_dir()
        if not (d / "profile" / "coact_trace.json").is_file():
            raise CoactError(f"the sample is missing at {d}; see data/README.md")
        other = Trace.load(d / "wikitext") if (d / "wikitext" / "coact_trace.json").is_file() else None
        if other is None:
            notes.append("the sample has no second-corpus trace; cross-corpus comparisons are skipped")
        return NotebookData("sample", Trace.load(d / "profile"), Trace.load(d / "heldout"), other, notes=notes)

    P, H, W = tokens if isinstance(tokens, tuple) else token_budget(tokens)
    root = Path(out) if out is not None else cache_dir() / "notebook-data" / f"{MODEL_SPEC}-cats90-p{P}-h{H}-w{W}"
    root.mkdir(parents=True, exist_ok=True)
    handle = load_model(MODEL_SPEC)
    kw: dict[str, Any] = dict(ctx=256, method="cats", sparsity=0.9, progress=progress)
    profile = _load_or_capture(handle, "pydoc", root / "profile", tokens=P, calib_tokens=min(1024, P), **kw)
    heldout = _load_or_capture(handle, "pydoc", root / "heldout", tokens=H, start=P,
                               thresholds_from=root / "profile", **kw)
    wt = wikitext_path()
    if wt is not None:
        other = _load_or_capture(handle, str(wt), root / "wikitext", tokens=W, thresholds_from=root / "profile", **kw)
    else:
        other = Trace.load(sample_dir() / "wikitext")
        notes.append(f"{WIKITEXT_RELPATH} not found next to the repository: the second corpus is the committed "
                     f"sample's WikiText-2 trace ({other.n_tokens} tokens, thresholds calibrated on the first 1,024 "
                     "pydoc tokens, like this profile's when it starts at token 0)")
    return NotebookData("model", profile, heldout, other, model=MODEL_SPEC, notes=notes)


def ffn_weights_fn(data: NotebookData, layers: Sequence[int] | None = None, *, seed: int = 0
                   ) -> Callable[[int], dict[str, np.ndarray]]:
    """``weights_fn(j)`` for :func:`runtime.pack.write_pack`, where ``j`` indexes ``layers`` (default: all).

    In model mode: the model's real FFN weights of layer ``layers[j]``. With the sample (no model): deterministic
    pseudo-random float32 weights of the model's shapes — a pack of them has exactly the size and layout of the
    real one, and O_DIRECT read times do not depend on the bytes read, so I/O measurements are unaffected.
    """
    sel = list(range(data.n_layers)) if layers is None else [int(x) for x in layers]
    N, d = data.n_neurons, data.d_model
    if data.model is not None:
        handle = load_model(data.model)
        return lambda j: handle.ffn_weights(sel[j])

    def synthetic(j: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, sel[j]])
        return {"gate": rng.standard_normal((N, d), dtype=np.float32),
                "up": rng.standard_normal((N, d), dtype=np.float32),
                "down": rng.standard_normal((d, N), dtype=np.float32)}

    return synthetic
