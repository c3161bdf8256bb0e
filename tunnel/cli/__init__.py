"""The `tunnel` command line: one entry point, one module per command group.

Each command module exposes ``register(subparsers)``, which adds its commands; a command's
handler is stored as ``func`` on its parser and returns the process exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tunnel.cli import config_cmds, edge_cmds


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every `tunnel` command."""
    parser = argparse.ArgumentParser(
        prog="tunnel",
        description="Self-hosted tunnel edge with per-tunnel dynamic workers.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (edge_cmds, config_cmds):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `tunnel` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
