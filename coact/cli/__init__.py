"""The `coact` command line (typer + rich).

Thin by rule: each command parses its options, calls one library function and renders the result. The commands
live in :mod:`coact.cli.offline` (demo, trace, stats, solve, evaluate, pack, replay, compare, export) and
:mod:`coact.cli.flash` (device-profile, pipelines, fio-check), :mod:`coact.cli.scale` (synth, synth-fit) and :mod:`coact.cli.verify` (verify); importing this package registers all of them on
:data:`app`. Errors: see :mod:`coact.cli._app`.
"""
from __future__ import annotations

from coact.cli import corpora, flash, offline, online, scale, verify  # noqa: F401  (importing registers the commands)
from coact.cli._app import app


def main() -> None:  # pragma: no cover - console entry point alias
    app()


__all__ = ["app", "main"]
