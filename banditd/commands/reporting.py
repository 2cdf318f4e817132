"""What every command that prints a report shares: its parser, how it prints, its exit code.

A command says only what is its own: how to build its report from the parsed arguments (a
JSON-able dict) and how to show it to people. ``--json`` prints the report itself as JSON.

    REPORT = reporting.Command(measure, render_text)
    reporting.add(sub, "kernels", help="...", description=__doc__, run=REPORT)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Report = dict[str, Any]
JSON_HELP = "print one JSON object on stdout"


def pretty(report: Report) -> str:
    """The report for people as indented JSON (for reports that have no table)."""
    return json.dumps(report, indent=2)


def key_values(width: int) -> Callable[[Report], str]:
    """A flat report for people: one ``key: value`` line each, the keys right-aligned."""
    return lambda report: "\n".join(f"{key:>{width}}: {value}" for key, value in report.items())


def emit(
    args: argparse.Namespace,
    report: Report,
    render: Callable[[Report], str],
    indent: int | None = None,
) -> int:
    """Print the report: JSON with ``--json`` (indented by ``indent``), else ``render``'s text."""
    print(json.dumps(report, indent=indent) if args.json else render(report), flush=True)
    return 0


def fail(command: str, exc: BaseException) -> int:
    """Say why the command failed, on stderr; the exit code of a failure."""
    print(f"{command}: {exc}", file=sys.stderr)
    return 1


@dataclass(frozen=True)
class Command:
    """A command's ``run(args) -> exit code``: build the report, print it (``emit``).

    errors: the exceptions that are the user's to fix (bad input, a missing file): said on
    stderr as ``<name>: <message>``, exit code 1. Anything else is a bug and propagates.
    """

    build: Callable[[argparse.Namespace], Report]
    render: Callable[[Report], str] = pretty
    json_indent: int | None = None
    name: str = ""
    errors: tuple[type[BaseException], ...] = ()
    json_help: str = JSON_HELP

    def __call__(self, args: argparse.Namespace) -> int:
        try:
            report = self.build(args)
        except self.errors as exc:
            return fail(self.name, exc)
        return emit(args, report, self.render, self.json_indent)


def add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str | None,
    run: Command | Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Add a reporting command (its description shown as written, ``--json``); the parsed args
    carry func=run. The caller adds the command's own options to the parser returned."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--json", action="store_true", help=run.json_help if isinstance(run, Command) else JSON_HELP
    )
    p.set_defaults(func=run)
    return p
