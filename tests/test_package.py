"""The package surface: what ``import cascade`` costs and exposes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cascade


def _fresh_import(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def test_import_has_no_heavy_dependencies() -> None:
    """``import cascade`` loads neither onnxruntime, scikit-learn, litellm, numpy nor pydantic."""
    code = (
        "import sys, json, cascade;"
        "print(json.dumps(sorted(m for m in ('onnxruntime','sklearn','litellm','numpy','pydantic',"
        "'skl2onnx','torch','yaml') if m in sys.modules)))"
    )
    assert json.loads(_fresh_import(code)) == []


def test_all_is_sorted_and_complete() -> None:
    """``cascade.__all__`` is sorted and every name in it resolves."""
    assert cascade.__all__ == sorted(cascade.__all__)
    for name in cascade.__all__:
        assert getattr(cascade, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A misspelt name fails like any module attribute, naming the attribute."""
    with pytest.raises(AttributeError, match="has no attribute 'rout'"):
        cascade.rout  # noqa: B018
