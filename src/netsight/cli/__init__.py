"""The ``netsight`` command line.

Every subcommand is a :class:`Command`: a function that adds its arguments to an
``argparse`` parser and a function that runs it, in its own module of this package
(``netsight.cli.cam``, ...), next to what the commands share
(:mod:`netsight.cli.common`). They are registered in one place, :data:`COMMANDS`;
adding a subcommand means writing a module with its ``COMMAND`` and adding one line
there. A command only parses its arguments, calls the library and prints.

Errors the user can fix (a bad model spec, a checkpoint that does not fit, a
forward pass that fails, a bad column name, ...) are printed as
``netsight: error: <message>`` on stderr with exit code 2 and no traceback
(``netsight --traceback ...`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

import torch

from netsight._version import __version__
from netsight.cli import (
    cam,
    demo,
    diagram,
    explore,
    features,
    filters,
    layers,
    patterns,
    report,
    runs,
    summary,
    tensorboard,
)
from netsight.cli.cam import EXIT_PARTIAL
from netsight.cli.common import EXIT_USAGE, USER_ERRORS, Command, Parser, UsageError

__all__ = [
    "COMMANDS",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "Command",
    "UsageError",
    "build_parser",
    "main",
]

#: Every subcommand, in the order ``netsight --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    summary.COMMAND,
    diagram.COMMAND,
    features.COMMAND,
    cam.COMMAND,
    filters.COMMAND,
    patterns.COMMAND,
    layers.COMMAND,
    report.COMMAND,
    explore.COMMAND,
    runs.COMMAND,
    tensorboard.COMMAND,
    demo.COMMAND,
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command.

    Args:
        commands: the subcommands to register.

    Returns:
        The parser; ``parse_args`` sets ``command`` and ``run`` on the namespace.
    """
    parser = Parser(
        prog="netsight",
        description="See inside a PyTorch network.",
    )
    parser.add_argument("--version", action="version", version=f"netsight {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback on errors (for bug reports)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in commands:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
        )
        command.configure(p)
        p.set_defaults(run=command.run)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``netsight`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 for a usage or user error (printed as
        ``netsight: error: ...`` on stderr), 1 when ``cam`` skipped a method the
        user named (the others were written), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, bad arguments
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        # building a model draws from the global RNG: an in-process caller keeps its own
        with torch.random.fork_rng(devices=[]):
            code: int = args.run(args)
    except KeyboardInterrupt:
        print("netsight: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`netsight summary ... | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netsight: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return code
