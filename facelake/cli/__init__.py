"""``facelake``: the command line of the engine (console script ``facelake = facelake.cli:main``).

Every subcommand is one :class:`Command` entry in :data:`COMMANDS`, naming a module that provides
``configure(parser)`` (its arguments, nested subcommands included) and ``run(args) -> int`` (the exit status).
A pipeline adds its command (``search``, ``sfhq describe``, ``sql``...) with one entry; keep the module's
top-level imports light and import heavy libraries inside ``run``, since ``facelake --help`` imports every
command module.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from facelake.lake.errors import FacelakeError

DESCRIPTION = "facelake: the face-dataset lake's command line (one subcommand per task, see below)"


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help and the module that configures and runs it."""

    name: str
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("status", "facelake.cli.status", "what the lake holds: every partition, committed or not"),
    Command("models", "facelake.models.cli", "make model weights offline from installed packages (import)"),
    Command("search", "facelake.cli.search", "text and image search over a CLIP embeddings asset"),
    Command("hyperface", "facelake.cli.hyperface", "HyperFace: export a variant's cleaned training set"),
    Command("sfhq", "facelake.cli.sfhq", "SFHQ parts: describe a part's files, counts and validation report"),
    Command(
        "sql",
        "facelake.cli.sql",
        "SQL over the catalog's views of every committed table (--views lists them)",
    ),
)
"""Every subcommand of ``facelake``, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    """The ``facelake`` parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="facelake", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for command in COMMANDS:
        module = importlib.import_module(command.module)
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        module.configure(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``facelake``; returns the exit status (1 with a one-line message for an :func:`expected_error`)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # the reader went away (``facelake status | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if not expected_error(exc):
            raise
        print(f"facelake {args.command}: error: {exc}", file=sys.stderr)
        return 1


def expected_error(exc: BaseException) -> bool:
    """An error a user can act on from its message alone (no traceback): the engine's own, I/O, or S3
    (unreachable endpoint, refused credentials)."""
    if isinstance(exc, FacelakeError | OSError):
        return True
    if "botocore" not in sys.modules:
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)
