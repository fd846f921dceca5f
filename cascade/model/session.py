"""Loading a model folder into an onnxruntime session: the one way scorers and verifiers load.

A model folder (``router_models/<name>/``) holds ``model.onnx`` and ``manifest.json`` (parsed and
checked by :mod:`cascade.model.manifest`). :func:`open_model` checks the manifest's ``kind``,
verifies the file's sha256 before onnxruntime ever sees the bytes, builds the session with the
requested threads and device, and checks the graph's signature against the manifest.
onnxruntime is imported only here, when a model is opened, so importing the runtimes is cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cascade.errors import ModelIntegrityError, RuntimeMissingError, ScorerError
from cascade.model.manifest import Manifest, ModelKind, load_manifest
from cascade.resources import model_dir

__all__ = ["Device", "OpenModel", "choose_providers", "open_model"]

Device = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_LOG_ERRORS_ONLY = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


@dataclass(frozen=True)
class OpenModel:
    """A checked model: its manifest, the onnxruntime session and where it really runs."""

    manifest: Manifest
    session: Any
    providers: tuple[str, ...]
    device: str


def choose_providers(device: Device, available: Sequence[str]) -> list[str]:
    """The execution providers to request, most preferred first, for ``device``.

    CUDA is requested whenever onnxruntime offers it (CPU listed second as the fallback);
    whether it really loaded is only known from the session (see :func:`open_model`).
    """
    if device == "cpu":
        return [_CPU]
    if _CUDA in available:
        return [_CUDA, _CPU]
    if device == "cuda":
        raise ScorerError(
            f"device='cuda' but onnxruntime offers no {_CUDA} (it offers {', '.join(available)}); "
            'install "cascade-router[gpu]" on a machine with CUDA, or use device="auto" or "cpu"'
        )
    return [_CPU]


def open_model(
    model: str | Path, *, kind: ModelKind, device: Device, intra_op_threads: int
) -> OpenModel:
    """Open the model folder ``model`` (a shipped name or a path) as a model of ``kind``.

    Raises ``ValueError`` for a bad ``device`` or thread count,
    :class:`~cascade.errors.ModelIntegrityError` when the file does not match its manifest,
    :class:`~cascade.errors.RuntimeMissingError` without onnxruntime, and
    :class:`~cascade.errors.ScorerError` for anything else that stops the model from loading
    (a verifier opened as a scorer, or the other way round, among them).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if intra_op_threads < 0:
        raise ValueError(
            f"intra_op_threads must be >= 0 (0: onnxruntime decides), got {intra_op_threads}"
        )
    directory = model_dir(model)
    manifest = load_manifest(directory)
    if manifest.kind != kind:
        raise ScorerError(
            f"{directory}: the model is a {manifest.kind}, not a {kind}; "
            f'use a {kind} model here (its manifest says "kind": "{kind}")'
        )
    path = directory / manifest.file
    model_bytes = _verified_bytes(path, manifest)
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _LOG_ERRORS_ONLY
    providers = choose_providers(device, ort.get_available_providers())
    try:
        session: Any = ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as exc:  # onnxruntime's own error types are not importable API
        raise ScorerError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
    used = tuple(session.get_providers())
    # onnxruntime-gpu lists CUDA as available even when it cannot load it, then runs on CPU
    runs_on = "cuda" if _CUDA in used else "cpu"
    if device == "cuda" and runs_on != "cuda":
        raise ScorerError(
            f"device='cuda' but onnxruntime could not start CUDA for {path}; "
            f"the session fell back to {', '.join(used)}"
        )
    _check_signature(session, manifest, path)
    return OpenModel(manifest, session, used, runs_on)


def _check_signature(session: Any, manifest: Manifest, path: Path) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    spec_in, spec_out = manifest.input, manifest.output
    if inputs != [spec_in.name] or spec_out.name not in outputs:
        raise ScorerError(
            f"{path}: the graph's inputs {inputs} and outputs {sorted(outputs)} do not match "
            f"the manifest ({spec_in.name!r} -> {spec_out.name!r}); retrain the model"
        )
    width = outputs[spec_out.name][-1]
    if isinstance(width, int) and not 0 <= spec_out.column < width:
        raise ScorerError(f"{path}: output column {spec_out.column} is outside 0..{width - 1}")


def _verified_bytes(path: Path, manifest: Manifest) -> bytes:
    """The model file's bytes, after checking them against the manifest's sha256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScorerError(
            f"{path}: cannot read the model file named by the manifest: {exc}"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 is {actual} but its manifest expects {manifest.sha256}: the file is "
            "corrupted, truncated or was replaced. Reinstall cascade-router (or restore the model "
            f"folder), or re-train it, which rewrites both files: {manifest.created_by}"
        )
    return data


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime  # noqa: PLC0415 - optional and heavy; only an opened model needs it
    except ImportError as exc:
        raise RuntimeMissingError(
            'onnxruntime is not installed: pip install "cascade-router[cpu]" '
            '(or "cascade-router[gpu]" for CUDA; never both in one environment)'
        ) from exc
    return onnxruntime
