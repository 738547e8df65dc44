"""The ``streamchat`` command: one subcommand per module, each importing its heavy parts lazily."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

COMMANDS = ("chat", "bench", "serve", "faults")
"""In help order; a command whose module is not part of this install is left out."""


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = argparse.ArgumentParser(prog="streamchat", description="Streamed LLM chat: typed, timed events.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = f"streamchat.cli.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
