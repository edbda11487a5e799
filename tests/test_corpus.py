"""Corpora: built-in pydoc, text files, saved datasets, mixtures, and reproducible non-overlapping windows."""
from __future__ import annotations

import numpy as np
import pytest

from coact.corpus import load_text, text_digest, token_windows
from coact.errors import CorpusError


def test_pydoc_is_builtin_and_stable():
    a, b = load_text("pydoc"), load_text("pydoc")
    assert len(a) > 100_000 and text_digest(a) == text_digest(b)


def test_text_file_dataset_and_mixture(tmp_path):
    import datasets

    (tmp_path / "a.txt").write_text("alpha beta\n\ngamma")
    datasets.Dataset.from_dict({"text": ["one", "", "two"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_text(str(tmp_path / "a.txt")) == "alpha beta\n\ngamma"
    assert load_text(str(tmp_path / "ds")) == "one\n\ntwo"
    mix = load_text(f"{tmp_path / 'a.txt'}+{tmp_path / 'ds'}")
    assert mix == "alpha beta\n\ngamma\n\none\n\ntwo"


def test_missing_and_foreign_corpora(tmp_path):
    with pytest.raises(CorpusError):
        load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(CorpusError):
        load_text(str(tmp_path / "folder"))


def test_windows_cover_the_range_without_overlap():
    stream = np.arange(1000)
    prof = np.concatenate(token_windows(stream, 0, 600, 256))
    held = np.concatenate(token_windows(stream, 600, 300, 256))
    assert np.array_equal(prof, np.arange(600)) and np.array_equal(held, np.arange(600, 900))
    assert [len(w) for w in token_windows(stream, 0, 600, 256)] == [256, 256, 88]
    with pytest.raises(CorpusError):
        token_windows(stream, 900, 200, 256)
    with pytest.raises(CorpusError):
        token_windows(stream, 0, 0, 256)
