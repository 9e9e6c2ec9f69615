"""The ``biotorch`` command line: ``biotorch list``, ``info``, ``train``, ``eval``, ``push``, ``robustness``.

Each area registers its own sub-commands; run ``biotorch --help``.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biotorch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import publish, registry, robustness, train  # imported here so `biotorch --help` stays quick to start

    registry.add_commands(commands)
    train.add_commands(commands)
    publish.add_commands(commands)
    robustness.add_commands(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"biotorch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
