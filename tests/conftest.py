"""Shared fixtures (kept tiny)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


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
