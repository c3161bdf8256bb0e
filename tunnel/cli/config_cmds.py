"""`tunnel config …`, `tunnel workers …` and `tunnel hash-password` (config model and generators)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the config, workers and hash-password commands."""
