"""Named corpora, parts, weighted mixtures, the corpus build and the `corpus` / `stats-merge` commands (issue 13)."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coact import corpora
from coact.cli import app
from coact.corpora import CORPORA, DEFAULT_RECIPE, PROFILE_SHARE, split_text
from coact.corpora.build import devils_dictionary, write_gz
from coact.corpus import load_text, mix_texts, parse_mixture
from coact.errors import CorpusError
from coact.stats import CoactStats

runner = CliRunner()
LOCAL = ("pydoc", "code", "literary")  # shipped with Python or in data/corpora/ (wiki needs shared/)


def test_every_corpus_states_domain_licence_and_source() -> None:
    assert len({c.domain for c in CORPORA.values()}) >= 4
    for c in CORPORA.values():
        assert c.domain and c.licence and c.source
    readme = (corpora.DATA / "README.md").read_text()
    for c in CORPORA.values():
        assert c.name in readme and c.licence in readme


@pytest.mark.parametrize("name", LOCAL)
def test_parts_are_disjoint_and_cover_the_text(name: str) -> None:
    text = load_text(name)
    prof, held = load_text(f"{name}@profile"), load_text(f"{name}@heldout")
    assert text.startswith(prof) and text.endswith(held)
    assert len(prof) + len(held) <= len(text) <= len(prof) + len(held) + 4  # only the cut's blank line(s) dropped
    assert abs(len(prof) / len(text) - PROFILE_SHARE) < 0.02
    assert load_text(f"{name}@profile") == prof  # deterministic


def test_pydoc_spec_is_unchanged() -> None:
    """Existing traces record the digest of 'pydoc': the text must not change."""
    from pydoc_data import topics

    assert load_text("pydoc") == "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def test_wiki_alias_reads_the_shared_wikitext() -> None:
    try:
        path = corpora.wikitext_path()
    except CorpusError:
        pytest.skip("shared/corpora/wikitext2-test.txt is not present")
    assert load_text("wikitext") == load_text("wiki") == path.read_text(encoding="utf-8")


def test_weighted_mixture_keeps_its_proportions_in_every_prefix() -> None:
    a = "\n\n".join(f"alpha {i} " + "a" * 300 for i in range(400))
    b = "\n\n".join(f"beta {i} " + "b" * 300 for i in range(400))
    mixed = mix_texts([a, b], [0.75, 0.25], block=600)
    for cut in (5_000, 20_000, len(mixed)):
        part = mixed[:cut]
        share = part.count("a") / (part.count("a") + part.count("b"))
        assert abs(share - 0.75) < 0.06, (cut, share)
    assert mix_texts([a, b], [0.75, 0.25], block=600) == mixed


def test_mixture_specs(tmp_path) -> None:
    (tmp_path / "x.txt").write_text("one\n\ntwo")
    assert parse_mixture("code:0.5+literary@profile:0.5") == [("code", 0.5), ("literary@profile", 0.5)]
    assert parse_mixture(f"{tmp_path / 'x.txt'}+pydoc") == [(str(tmp_path / "x.txt"), None), ("pydoc", None)]
    mixed = load_text("code@profile:0.5+literary@profile:0.5")
    assert "# file: abc.py" in mixed and "ABASEMENT" in mixed
    assert load_text("default") == load_text(DEFAULT_RECIPE)
    for bad in ("code:0.5+literary", "code:-1+literary:1", "code:0+literary:1", "code+"):
        with pytest.raises(CorpusError):
            load_text(bad)
    with pytest.raises(CorpusError, match="part"):
        load_text("code@middle")
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_text("nosuchcorpus@profile")


def test_split_without_blank_line_cuts_at_the_share() -> None:
    text = "x" * 1000
    assert split_text(text, "profile") == "x" * 800 and split_text(text, "heldout") == "x" * 200


def test_build_is_deterministic(tmp_path) -> None:
    text = "some text\n" * 100
    p1, p2 = write_gz(text, tmp_path / "a.gz"), write_gz(text, tmp_path / "b.gz")
    assert p1.read_bytes() == p2.read_bytes() and gzip.decompress(p1.read_bytes()).decode() == text
    # The committed literary corpus is exactly what the build extracts from Debian's dict-devil (when installed).
    if corpora.build.DEVIL_DICT.exists():
        assert devils_dictionary() == load_text("literary")


def test_corpus_list_cli() -> None:
    res = runner.invoke(app, ["corpus", "list", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    names = {r["name"] for r in out["corpora"]}
    assert set(CORPORA) == names and out["default_recipe"] == DEFAULT_RECIPE
    for r in out["corpora"]:
        if r["name"] in LOCAL:
            assert r["characters"] > 100_000
    res = runner.invoke(app, ["corpus", "list"])
    assert res.exit_code == 0 and "public domain" in res.stdout
    res = runner.invoke(app, ["corpus", "nope"])
    assert res.exit_code == 2 and "unknown corpus action" in res.output


def _stats(seed: int, T: int) -> CoactStats:
    rng = np.random.default_rng(seed)
    x = (rng.random((T, 2, 16)) < 0.3).astype(np.int64)
    return CoactStats(freq=x.sum(0), coact=[x[:, l].T @ x[:, l] for l in range(2)], n_tokens=T,
                      meta={"model_id": "m"})


def _saved_pair(tmp_path) -> tuple[CoactStats, CoactStats]:
    a, b = _stats(0, 50), _stats(1, 30)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    return a, b


def test_stats_merge_cli(tmp_path) -> None:
    a, b = _saved_pair(tmp_path)
    res = runner.invoke(app, ["stats-merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"),
                              "--json"])
    assert res.exit_code == 0, res.output
    m = CoactStats.load(tmp_path / "m")
    assert m.n_tokens == 80 and np.array_equal(m.freq, a.freq + b.freq)
    res = runner.invoke(app, ["stats-merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "w"),
                              "--weights", "1,x"])
    assert res.exit_code == 2 and "--weights" in res.output
    res = runner.invoke(app, ["stats-merge", str(tmp_path / "a"), "--out", str(tmp_path / "w")])
    assert res.exit_code == 2


def test_stats_merge_weights(tmp_path) -> None:
    a, b = _saved_pair(tmp_path)
    res = runner.invoke(app, ["stats-merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"),
                              "--weights", "2,1"])
    assert res.exit_code == 0, res.output
    m = CoactStats.load(tmp_path / "m")
    assert m.n_tokens == 130 and np.array_equal(m.freq, 2 * a.freq + b.freq)
    res = runner.invoke(app, ["stats-merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "x"),
                              "--weights", "1"])
    assert res.exit_code == 2 and "one non-negative integer per input" in res.output


def test_domain_sample_is_committed_with_its_shape() -> None:
    from coact.corpora.sample import HELDOUT_TOKENS, LAYERS, PROFILE_TOKENS, load_domain_sample

    s = load_domain_sample("sample")
    assert s.domains == list(CORPORA) and s.layers == LAYERS and s.n_neurons == 1536
    for d in CORPORA:
        assert s.profile[d].shape == (PROFILE_TOKENS, len(LAYERS), 192) and s.profile[d].dtype == np.uint8
        assert s.heldout[d].shape == (HELDOUT_TOKENS, len(LAYERS), 192)
    assert s.operating_point["budget"] == 0.2 and "sample data" in s.describe()
    with pytest.raises(CorpusError):
        load_domain_sample("gpu")


def test_domain_sample_build_cuts_layers_and_tokens(tmp_path) -> None:
    from coact.corpora.sample import build

    rng = np.random.default_rng(0)
    src = {d: {k: rng.integers(0, 256, (20, 5, 192), dtype=np.uint8) for k in ("b20_profile", "b20_heldout")}
           for d in CORPORA}
    for d, arrs in src.items():
        np.savez(tmp_path / f"acts_{d}_20_20.npz", **arrs)
    p = build(tmp_path, tmp_path / "out", layers=(1, 3), P=8, H=4)
    z = np.load(p)
    for d in CORPORA:
        assert np.array_equal(z[f"{d}_profile"], src[d]["b20_profile"][:8][:, [1, 3]])
        assert np.array_equal(z[f"{d}_heldout"], src[d]["b20_heldout"][:4][:, [1, 3]])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["layers"] == [1, 3]
    with pytest.raises(CorpusError):
        build(tmp_path / "missing", tmp_path / "o2")
