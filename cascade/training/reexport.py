"""Re-issue a prompt-features model for today's feature columns, scoring exactly as before.

A feature version that only appends columns (``prompt-features-v2`` added three to v1's 25)
leaves the columns an older model knows unchanged; with weight 0 on the new ones, the model
loads in today's runtime and gives the same confidences. ``python -m cascade.training.reexport
router_models/NAME`` rewrites ``model.onnx`` and ``manifest.json`` (sha256, input shape,
feature version, parity against the old file, provenance) and leaves every other field as it
was: training data, calibration and metrics still describe the same model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import TrainingError
from cascade.model.features import FEATURE_NAMES, PROMPT_FEATURES_VERSION
from cascade.model.manifest import FEATURES_PREPROCESSING
from cascade.training.feature_model import export_onnx, feature_matrix, onnx_confidence, read_onnx
from cascade.training.train import PARITY_TEXTS, PARITY_TOLERANCE

__all__ = ["main", "reexport"]


def reexport(directory: Path) -> dict[str, Any]:
    """Rewrite the folder's model for today's columns; returns the new manifest's fields."""
    path = directory / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    old = (directory / manifest["file"]).read_bytes()
    if hashlib.sha256(old).hexdigest() != manifest["sha256"]:
        raise TrainingError(f"{directory}: model file does not match its manifest's sha256")
    known = int(manifest["input"]["shape"][1])
    if manifest["input"]["preprocessing"] != FEATURES_PREPROCESSING or known > len(FEATURE_NAMES):
        raise TrainingError(f"{directory}: not a prompt-features model with fewer columns")
    if manifest["feature_version"] == PROMPT_FEATURES_VERSION:
        return manifest
    new = export_onnx(read_onnx(old), opset=int(manifest["opset"]))
    features = feature_matrix(list(PARITY_TEXTS))
    diff = float(
        np.abs(onnx_confidence(old, features[:, :known]) - onnx_confidence(new, features)).max()
    )
    if diff > PARITY_TOLERANCE:
        raise TrainingError(f"{directory}: the re-exported model differs by {diff:.2e}")
    manifest["created_by"] += (
        f"; re-exported from feature_version {manifest['feature_version']} by "
        f"python -m cascade.training.reexport {directory} (max abs diff {diff:.2g})"
    )
    manifest.update(sha256=hashlib.sha256(new).hexdigest(), feature_version=PROMPT_FEATURES_VERSION)
    manifest["input"]["shape"] = [None, len(FEATURE_NAMES)]
    (directory / manifest["file"]).write_bytes(new)
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Re-export each named model folder."""
    parser = argparse.ArgumentParser(
        prog="python -m cascade.training.reexport", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folders", nargs="+", type=Path, help="model folders to re-export")
    for folder in parser.parse_args(argv).folders:
        print(f"{folder}: {reexport(folder)['created_by']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
