"""The consoles every ``cim`` command prints through.

On a terminal rich wraps long lines to its width, which reads well. Anywhere else (a pipe, a log
file, a test) rich would still hard-wrap at 80 columns, splitting an error message and the path in
it over two lines; scripts and logs grep those lines, so output that is not a terminal is never
wrapped.
"""
from __future__ import annotations

import json

import typer
from rich.console import Console


def make_console(*, stderr: bool = False, highlight: bool = True, width: int | None = None) -> Console:
    """A rich console for stdout (or stderr) that wraps only on a terminal."""
    console = Console(stderr=stderr, highlight=highlight, width=width)
    console.soft_wrap = not console.is_terminal
    return console


#: stdout and stderr of the ``cim`` command
console = make_console()
err_console = make_console(stderr=True)


def print_json(value: object) -> None:
    """A command's answer as indented JSON on stdout (Chinese as it is; dates and other values as text)."""
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))
