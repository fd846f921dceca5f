"""Router model commands: ``cascade train``, ``eval``, ``score`` and ``calibrate``."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the router model commands."""
