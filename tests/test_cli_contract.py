"""The CLI contract of docs/ARCHITECTURE.md: JSON only on stdout, one-line errors for user errors (including
unusable output paths), tracebacks for bugs, registry entries listed in --help. Runs on the committed data sample
(no model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import coact.cli.offline as offline
from coact.cli import app
from coact.sample import sample_dir
from runtime.layout import Layout, save_layout
from solvers import SOLVERS

SAMPLE = sample_dir()


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_json_is_alone_on_stdout(tmp_path: Path) -> None:
    res = invoke("stats", SAMPLE / "profile", "--out", tmp_path / "st", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_tokens"] == 1024
    res = invoke("compare", "--stats", tmp_path / "st", "--trace", SAMPLE / "heldout", "--no-bound",
                 "--out", tmp_path / "cmp", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # nothing but JSON on stdout
    assert {r["solver"] for r in rows} == {"identity", "random", "frequency", "ripple"}


def test_output_path_under_a_file_is_a_user_error(tmp_path: Path) -> None:
    lay = tmp_path / "l.safetensors"
    save_layout(Layout.identity(8, 2), lay)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(invoke("export", lay, "--format", "json", "--out", blocker / "sub" / "l.json"))
    assert "Not a directory" in line or "exists" in line


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(offline, "export_layout_file", broken)
    res = invoke("export", tmp_path / "whatever.safetensors")
    assert res.exit_code != 2 and isinstance(res.exception, ZeroDivisionError)


@pytest.mark.parametrize("spec", ["ripple+", "+ripple", "ripple++identity", "nope"])
def test_malformed_solver_chain(tmp_path: Path, spec: str) -> None:
    one_line_error(invoke("solve", tmp_path, "--solver", spec, "--out", tmp_path / "lay"))


def test_negative_time_limit(tmp_path: Path) -> None:
    invoke("stats", SAMPLE / "heldout", "--out", tmp_path / "st")
    one_line_error(invoke("solve", tmp_path / "st", "--solver", "local-search", "--time-limit", "-1",
                          "--out", tmp_path / "lay"))


def test_help_lists_registered_parts() -> None:
    out = invoke("solve", "--help").output
    assert "path-cover" in out and "ripple" in out
    out = invoke("replay", "--help").output
    assert "s3fifo" in out and "threads" in out
    assert len(SOLVERS) >= 11


def test_unknown_cache_policy_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(invoke("replay", tmp_path / "missing.pack", "--trace", SAMPLE / "heldout",
                                 "--policy", "nope"))
    assert "cache policy" in line and "s3fifo" in line
