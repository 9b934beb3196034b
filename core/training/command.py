"""``likeness train``: argument parser and handler (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the CLI (filled in by the training issue)."""
