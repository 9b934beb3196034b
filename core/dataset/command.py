"""``likeness prepare``: argument parser and handler (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command to the CLI (filled in by the dataset issue)."""
