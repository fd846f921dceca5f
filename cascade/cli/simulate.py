"""``cascade simulate-tier``: a simulated OpenAI-compatible model server for demos and tests."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate-tier`` command."""
