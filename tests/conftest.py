"""Shared fixtures (kept tiny)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``.ci/test`` runs ``-n 2``) each worker computes with one torch thread: two workers with
    two threads each would oversubscribe the two cores, and two single-threaded workers keep both cores busy
    through the Python-bound parts too."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def direct_io_dir(tmp_path: Path):
    """A directory where O_DIRECT works: tmp_path if its file system supports it (not tmpfs), else a temporary
    directory inside the repository (on the real disk); skips if neither does."""
    from runtime.direct import direct_io_supported

    if direct_io_supported(tmp_path):
        yield tmp_path
        return
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix=".pytest-odirect-", dir=repo) as d:
        if not direct_io_supported(d):
            pytest.skip("no directory with O_DIRECT support (tmp_path and the repository are on tmpfs?)")
        yield Path(d)


# ---------------------------------------------------------------------------------- real model fixtures (lead)
# The real SmolLM2 is loaded once per test session; the first load on a machine de-quantises the GGUF (~30 s) and
# caches a float32 copy (see coact.models), later loads take ~1 s.
MODEL_TRACE_TOKENS = 512


@pytest.fixture(scope="session")
def smollm2():
    from coact.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_trace(smollm2, tmp_path_factory):
    """A real 512-token CATS-90 % trace of the built-in corpus (tokens [0, 512), windows of 256)."""
    from coact.workflow import capture

    out = tmp_path_factory.mktemp("trace") / "t"
    return capture(smollm2, "pydoc", out, tokens=MODEL_TRACE_TOKENS, ctx=256, sparsity=0.9, calib_tokens=512,
                   shard_tokens=256, progress=False)


# ------------------------------------------------------------------------------- tiny local model (no SmolLM2)
def save_tiny_model(folder: Path, seed: int = 0, *, hidden: int = 32, ffn: int = 64, layers: int = 2) -> Path:
    """A tiny random LlamaForCausalLM with a byte-level tokenizer (256 tokens), saved with save_pretrained: a
    local model for capture and pack tests that needs no download and loads in a fraction of a second."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def wiki_excerpt(tmp_path_factory, chars: int) -> str:
    """The first `chars` characters of WikiText-2 (a repeated sentence if the shared corpus is absent) written to a
    temporary file: the small real text the tiny-model family tests capture from."""
    text = Path(__file__).resolve().parent.parent / "../shared/corpora/wikitext2-test.txt"
    body = text.read_text(encoding="utf-8")[:chars] if text.exists() else "the quick brown fox. " * (chars // 20)
    p = tmp_path_factory.mktemp("corpus") / "text.txt"
    p.write_text(body, encoding="utf-8")
    return str(p)
