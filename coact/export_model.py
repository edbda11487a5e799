"""Export a layout into the model itself: the FFN neurons of every layer stored in layout order, as a transformers
folder (``--format hf``) or a GGUF file (``--format gguf``), with the layout's digest in the model's metadata.

Why: an inference engine that reads FFN weights from flash in file order gets the layout's locality without
knowing about coact at all, if the model file already has its neurons in that order. A permutation of an FFN's
hidden units does not change the function (neuron p of the new model is neuron ``perm[p]`` of the old one: row p of
gate/up, column p of down, entry p of the per-neuron biases), so the exported model computes the same logits.

**hf**: the model is loaded with :func:`coact.models.load_model`, each layer permuted in place with
``ModelHandle.permute_ffn`` (the family adapter knows the weights, fused or Conv1D), written with
``save_pretrained`` (float32, as loaded) plus the tokenizer, and permuted back, so a handle passed in is unchanged
afterwards. Mixture-of-experts models are permuted per (layer, expert) unit (rows of the expert's gate and up
halves of ``gate_up_proj[e]``, columns of ``down_proj[e]``; routers and shared experts are unchanged).
``config.json`` carries ``coact_layout`` (:func:`layout_record`). Logits equal the original's to float
rounding (the FFN sums its neurons in another order): tests hold them within 1e-5.

**gguf**: the source GGUF (``smollm2``: Q4_1, ``gemma3-270m``: Q4_K_M, or a ``.gguf`` path) is copied tensor by
tensor with the ``gguf`` package, all metadata kept, plus the key ``coact.layout`` (the same record as JSON).
``ffn_gate``/``ffn_up`` rows are neurons and their quantisation blocks run along the input dimension, so their rows
move as whole byte rows (every block intact, the quantisation type kept, bit-exact). ``ffn_down``'s neuron axis is
its block axis: a block of 32 or 256 neurons shares one scale, so its columns cannot move inside the quantised
bytes. The export therefore **de-quantises ffn_down and stores it as F32** (``gguf.quants.dequantize``, the
routine transformers uses to load GGUF): the permuted tensor holds exactly the values the original decoded to, and
a transformers load of the exported file gives the original's logits to float rounding (measured: max |diff|
2.6e-5 on Gemma 3 with logits up to 24, 7.4e-5 on SmolLM2 with logits up to 35; the test holds 1e-5 of the
largest logit). Re-quantising instead would change the weights (the K-quants of the source cannot even be
re-encoded by ``gguf.quants``), so it is not offered. Cost: ffn_down grows from 5-6.6 to 32 bits per weight
(SmolLM2 98 -> 188 MB, Gemma 3 253 -> 331 MB). F32/F16 ffn_down tensors are permuted in their own type.
Mixture-of-experts GGUF tensors (``ffn_*_exps``) are refused, and so is ``--format gguf`` of a mixture-of-experts
layout (one line: use ``--format hf``). llama.cpp was not available here, so loading the
export with it is untested.

Which layout a model carries: :func:`read_model_layout` (``coact verify MODEL_DIR`` / ``coact verify FILE.gguf``
prints it).
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from coact import zoo
from coact.errors import CoactError
from coact.models import ModelHandle, cache_dir, load_model
from common.atomic import atomic_dir, atomic_path, check_output
from common.progress import ProgressFn, tracked
from runtime.layout import Layout, load_layout

MODEL_FORMATS = ("hf", "gguf")
RECORD_FORMAT = "coact-permuted-model"
RECORD_VERSION = "1"
HF_KEY = "coact_layout"
GGUF_KEY = "coact.layout"
_GGUF_MAGIC = b"GGUF"
_BLK = re.compile(r"^blk\.(\d+)\.(ffn_[a-z_]+)\.(weight|bias)$")


class ExportError(CoactError):
    """A layout that does not fit the model, a source that cannot be exported, or an unusable output path."""


# ---------------------------------------------------------------------------------------------------- metadata
def layout_record(layout: Layout) -> dict[str, Any]:
    """What an exported model says about its layout: the digest (over the perms) identifies it; solver, params,
    source model and statistics digest say where it came from."""
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "digest": layout.digest, "solver": layout.solver,
            "params": layout.params, "model_id": layout.model_id, "stats_digest": layout.stats_digest,
            "created": layout.created, "n_layers": layout.n_layers, "n_neurons": layout.n_neurons,
            **({} if layout.units is None else {"units": [u.to_dict() for u in layout.units]})}


def _gguf_fields(path: Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path}: not a readable GGUF file ({str(exc).splitlines()[0]})") from exc
    field = reader.fields.get(GGUF_KEY)
    return {"record": None if field is None else field.contents(), "n_tensors": len(reader.tensors)}


def read_model_layout(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "model_format": "hf"|"gguf", "layout": record or None}`` for a transformers folder or a GGUF
    file; ``layout`` is the :func:`layout_record` the export wrote (None: the model carries no coact layout)."""
    p = Path(path)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise ExportError(f"{p}: not a transformers model folder (no config.json)")
        try:
            doc = json.loads(cfg.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"{cfg}: unreadable config ({exc})") from None
        rec, fmt = doc.get(HF_KEY) if isinstance(doc, dict) else None, "hf"
    elif is_gguf(p):
        raw, fmt = _gguf_fields(p)["record"], "gguf"
        try:
            rec = None if raw is None else json.loads(raw)
        except ValueError:
            raise ExportError(f"{p}: {GGUF_KEY} is not JSON") from None
    else:
        raise ExportError(f"{p}: neither a transformers model folder nor a GGUF file")
    if rec is not None and (not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT):
        raise ExportError(f"{p}: malformed {HF_KEY if fmt == 'hf' else GGUF_KEY} entry")
    return {"path": str(p), "model_format": fmt, "layout": rec}


def model_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """For ``coact verify MODEL``: the model's format, the layout record it carries (or None) and a one-line
    ``note`` saying which layout that is."""
    info = read_model_layout(path)
    rec = info["layout"]
    if rec is None:
        note = "carries no coact layout (FFN neurons in their original order)"
    else:
        note = (f"FFN neurons in the order of layout {rec.get('digest', '')[:16]} (solver {rec.get('solver')!r}, "
                f"made for {rec.get('model_id')!r})")
    return {"model_format": info["model_format"], "layout": rec, "layout_digest": rec and rec.get("digest"),
            "note": note}


def is_gguf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def is_model_export(path: str | os.PathLike[str]) -> bool:
    """True for a model this module wrote (what an export may replace)."""
    try:
        return read_model_layout(path)["layout"] is not None
    except (ExportError, OSError):
        return False


# ------------------------------------------------------------------------------------------------------ checks
def check_fits(layout: Layout, model_id: str, sizes: Sequence[int], what: str) -> None:
    """The layout must be for this model (its id, when recorded) and have one perm of the right size per layer."""
    if layout.model_id and model_id and layout.model_id != model_id:
        raise ExportError(f"layout is for model {layout.model_id!r}, {what} is {model_id!r}")
    if layout.n_layers != len(sizes):
        raise ExportError(f"layout has {layout.n_layers} layers, {what} has {len(sizes)}")
    for i, (a, b) in enumerate(zip(layout.n_neurons, sizes)):
        if a != b:
            raise ExportError(f"layer {i}: layout has {a} neurons, {what} has {b}")


def _sizes(handle: ModelHandle) -> list[int]:
    """N of every placement unit of the model (one per layer; per (layer, expert) for mixture-of-experts)."""
    if getattr(handle, "units", None) is not None:
        return [int(u.n) for u in handle.units]
    n = handle.n_neurons
    return [int(x) for x in n] if isinstance(n, (list, tuple)) else [int(n)] * handle.n_layers


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


@contextmanager
def permuted(handle: ModelHandle, layout: Layout) -> Iterator[ModelHandle]:
    """Within the block the model's FFN neurons are in layout order; on exit they are restored (a permutation and
    its inverse move values only, so the restore is exact)."""
    done = 0
    try:
        for layer, perm in enumerate(layout.perms):
            handle.permute_ffn(layer, perm)
            done += 1
        yield handle
    finally:
        for layer in range(done):
            handle.permute_ffn(layer, _inverse(layout.perms[layer]))


# ---------------------------------------------------------------------------------------------------------- hf
@contextmanager
def _without_gguf_marker(model: Any) -> Iterator[None]:
    """A model loaded from a GGUF is de-quantised already; only its quantizer marker blocks ``save_pretrained``."""
    quantizer = getattr(model, "hf_quantizer", None)
    qcfg = getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None
    if qcfg is not None:
        del model.config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer = quantizer
        if qcfg is not None:
            model.config.quantization_config = qcfg


def export_hf(layout: Layout, handle: ModelHandle, out: str | os.PathLike[str]) -> Path:
    """Write ``handle``'s model with its FFN neurons in ``layout`` order as a transformers folder at ``out``."""
    check_fits(layout, handle.model_id, _sizes(handle), f"model {handle.model_id!r}")
    check_output(out, kind="model export", is_kind=is_model_export, folder=True)
    cfg = handle.model.config
    had = hasattr(cfg, HF_KEY)
    old = getattr(cfg, HF_KEY, None)
    with permuted(handle, layout), atomic_dir(out) as tmp, _without_gguf_marker(handle.model):
        setattr(cfg, HF_KEY, layout_record(layout))
        try:
            handle.model.save_pretrained(str(tmp))
        finally:
            if had:
                setattr(cfg, HF_KEY, old)
            else:
                delattr(cfg, HF_KEY)
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(str(tmp))
    return Path(out)


# -------------------------------------------------------------------------------------------------------- gguf
def _ffn_tensors(reader: Any) -> dict[int, dict[str, Any]]:
    """{layer: {"ffn_up.weight": tensor, ...}} of the FFN tensors of a GGUF."""
    out: dict[int, dict[str, Any]] = {}
    for t in reader.tensors:
        m = _BLK.match(t.name)
        if m:
            if m.group(2).endswith("_exps") or m.group(2).endswith("_shexp"):
                raise ExportError(f"{t.name}: mixture-of-experts GGUF tensors are not supported by the export")
            out.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = t
    return out


def _rows(tensor: Any) -> int:
    return int(tensor.data.shape[0])


def gguf_sizes(ffn: dict[int, dict[str, Any]]) -> list[int]:
    """N per layer from ``ffn_down`` (its input dimension, ggml ne0)."""
    sizes = []
    for layer in range(len(ffn)):
        if layer not in ffn or "ffn_down.weight" not in ffn[layer] or "ffn_up.weight" not in ffn[layer]:
            raise ExportError(f"GGUF layer {layer} has no ffn_up/ffn_down weights")
        sizes.append(int(ffn[layer]["ffn_down.weight"].shape[0]))
    return sizes


def _permuted_tensor(tensor: Any, part: str, perm: np.ndarray, n: int) -> tuple[np.ndarray, Any]:
    """(data, ggml type) of one FFN tensor with its neuron axis in ``perm`` order."""
    import gguf

    qt = gguf.GGMLQuantizationType
    data = tensor.data
    if part == "ffn_down.weight":
        if tensor.tensor_type in (qt.F32, qt.F16):
            return np.ascontiguousarray(data[:, perm]), tensor.tensor_type
        dense = gguf.quants.dequantize(data, tensor.tensor_type).astype(np.float32, copy=False)
        return np.ascontiguousarray(dense[:, perm]), qt.F32
    # gate/up weights and biases: one row (or entry) per neuron; a fused gate+up (phi3's ffn_up) has 2N rows.
    rows = _rows(tensor)
    if rows == n:
        idx = perm
    elif rows == 2 * n and part == "ffn_up.weight":
        idx = np.concatenate([perm, perm + n])
    else:
        raise ExportError(f"{tensor.name}: {rows} rows, expected {n} neurons")
    return np.ascontiguousarray(data[idx]), tensor.tensor_type


_NEURON_PARTS = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "ffn_gate.bias", "ffn_up.bias")


def export_gguf(layout: Layout, source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                model_id: str = "", progress: ProgressFn | None = None) -> Path:
    """Copy the GGUF ``source`` to ``out`` with FFN neurons in ``layout`` order and the layout record in
    ``coact.layout``. ``model_id`` is the source model's coact id (checked against the layout's)."""
    import gguf

    src = Path(source)
    if not is_gguf(src):
        raise ExportError(f"{src}: not a GGUF file")
    out = Path(out)
    check_output(out, kind="model export", is_kind=is_model_export, inputs=(src,))
    reader = gguf.GGUFReader(str(src))
    ffn = _ffn_tensors(reader)
    sizes = gguf_sizes(ffn)
    check_fits(layout, model_id, sizes, f"GGUF {src.name}")
    arch_field = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ExportError(f"{src}: no {gguf.Keys.General.ARCHITECTURE} key")
    replaced: dict[str, tuple[np.ndarray, Any]] = {}
    for layer in tracked(range(len(sizes)), progress, "permuting FFN tensors", total=len(sizes)):
        perm = np.asarray(layout.perms[layer], dtype=np.int64)
        for part, tensor in ffn[layer].items():
            if part in _NEURON_PARTS:
                replaced[tensor.name] = _permuted_tensor(tensor, part, perm, sizes[layer])
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=arch_field.contents(), endianess=reader.endianess)
        align = reader.fields.get(gguf.Keys.General.ALIGNMENT)
        if align is not None:
            writer.data_alignment = int(align.contents())
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or \
                    field.name == GGUF_KEY:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        writer.add_string(GGUF_KEY, json.dumps(layout_record(layout), sort_keys=True))
        for t in reader.tensors:
            data, ttype = replaced.get(t.name, (t.data, t.tensor_type))
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, ttype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            if t.name in replaced:
                writer.write_tensor_data(replaced[t.name][0])
            else:
                writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
    return out


# ------------------------------------------------------------------------------------------------------ entry
def gguf_source(model: str) -> tuple[Path, str | None]:
    """(GGUF path, model id if known without loading) of ``model``: a named model or a ``.gguf`` file."""
    if zoo.is_named(model):
        m = zoo.named(model)
        return m.gguf_path(cache_dir()), m.model_id
    p = Path(model).expanduser()
    if p.is_file() and is_gguf(p):
        return p, None
    raise ExportError(f"--format gguf needs a GGUF source: {', '.join(zoo.MODELS.names())} or a .gguf file "
                      f"(got {model!r})")


def model_for(layout: Layout, model: str | None) -> str:
    """``model``, or the named model the layout was solved for when ``model`` is None."""
    if model:
        return model
    for name in zoo.MODELS.names():
        if zoo.available(name) is None and zoo.named(name).model_id == layout.model_id:
            return name
    raise ExportError(f"give --model: the layout's model {layout.model_id!r} is not a named model")


def export_model(layout: str | os.PathLike[str] | Layout, fmt: str, model: str | ModelHandle | None,
                 out: str | os.PathLike[str], *, progress: ProgressFn | None = None) -> Path:
    """``coact export LAYOUT --format hf|gguf --model M --out OUT``: the model with its FFN in layout order."""
    if fmt not in MODEL_FORMATS:
        raise ExportError(f"unknown model export format {fmt!r}; choose one of {', '.join(MODEL_FORMATS)}")
    lay = layout if isinstance(layout, Layout) else load_layout(layout)
    if fmt == "hf":
        handle = model if isinstance(model, ModelHandle) else load_model(model_for(lay, model))
        return export_hf(lay, handle, out)
    if lay.has_experts:
        raise ExportError("--format gguf of a mixture-of-experts layout is not supported (expert tensors are "
                          "stacked per layer in GGUF); use --format hf")
    if isinstance(model, ModelHandle):
        raise ExportError("--format gguf needs a model name or .gguf path, not a loaded model")
    spec = model_for(lay, model)
    src, model_id = gguf_source(spec)
    if model_id is None:  # a local .gguf: its coact id is derived from its weights
        model_id = load_model(str(src)).model_id
    return export_gguf(lay, src, out, model_id=model_id, progress=progress)


__all__ = ["MODEL_FORMATS", "ExportError", "export_model", "export_hf", "export_gguf", "read_model_layout",
           "layout_record", "permuted", "is_model_export", "is_gguf", "check_fits"]
