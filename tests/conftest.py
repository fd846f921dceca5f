"""Shared fixtures: small policies written to disk the way users write them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TWO_TIERS = """\
name: team-a
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: http://127.0.0.1:8001/v1
    price: {gpu_usd_per_hour: 2.0, tokens_per_second: 1000}
    max_concurrency: 2
    overflow: big
    threshold: 0.7
  - name: big
    model: openai/gpt-4o
    kind: api
    price: {input_usd_per_mtok: 2.5, cached_input_usd_per_mtok: 1.25, output_usd_per_mtok: 10}
"""


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write policy text to a file and return its path."""

    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
