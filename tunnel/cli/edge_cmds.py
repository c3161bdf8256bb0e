"""`tunnel edge`, `tunnel connect`, `tunnel quick`, `tunnel demo` and `tunnel tunnels …`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the edge, connector and tunnel-management commands."""
