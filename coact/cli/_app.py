"""The typer app, the two consoles and the error policy shared by every command module.

Error policy (docs/ARCHITECTURE.md): a :class:`common.errors.UserError` (bad input, bad file, unavailable engine,
from any package) and an ``OSError`` about a path the user named (missing, read-only, full disk, a file where a
folder is expected) print one line ``error: ...`` on stderr and exit 2; Ctrl-C exits 130; any other exception is a
bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import functools
import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console

from coact.errors import CoactError
from common.errors import UserError

app = typer.Typer(
    name="coact",
    help="Place LLM FFN neurons in flash so co-activated neurons are read together.\n\n"
    "Quick start: coact demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (logs, CI, pipes) rich would wrap tables at 80 columns; 140 keeps every column readable.
out_console = Console() if Console().is_terminal else Console(width=140)
err_console = Console(stderr=True)

#: errno values of an OSError that mean "the path you gave cannot be used", not "coact has a bug".
PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
               errno.EEXIST, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EXDEV, errno.ELOOP}


def one_line(exc: BaseException) -> str:
    """The whole message of an exception on one line (white space folded)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__


def command(name: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.command`` plus the error policy of the module docstring."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                err_console.print("interrupted (a capture resumes when run again)")
                raise typer.Exit(130)
            except UserError as exc:
                typer.echo(f"error: {one_line(exc)}", err=True)  # plain echo: rich would wrap a long line
                raise typer.Exit(2)
            except OSError as exc:
                if exc.errno not in PATH_ERRNOS:
                    raise
                typer.echo(f"error: {one_line(exc)}", err=True)
                raise typer.Exit(2)

        return app.command(name, **kw)(wrapper)

    return deco


def emit_json(obj: Any) -> None:
    """Machine-readable output: JSON only, on stdout (progress and notes go to stderr)."""
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")


def logger(json_out: bool) -> Callable[[str], None]:
    """Where step notes go: stderr under ``--json`` (stdout holds only the JSON), else stdout."""
    console = err_console if json_out else out_console
    return lambda m: console.print(m)


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``"4,16,64"`` -> [4, 16, 64]; None stays None."""
    if text is None:
        return None
    try:
        vals = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise CoactError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise CoactError(f"{what} is empty")
    return vals


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> {"a": "x", "b": "y"}."""
    out: dict[str, str] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise CoactError(f"{what} must be NAME=VALUE, got {it!r}")
        out[name] = path
    return out


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["kicks=30000", "span=8"]`` -> {"kicks": 30000, "span": 8}: each value read as JSON (numbers, true/false,
    null), else kept as text; the solver registry then rejects unknown names and bad types."""
    out: dict[str, Any] = {}
    for key, text in parse_pairs(items, "--param").items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out
