"""The confidence scorer: P(the weak tier suffices) for a prompt, from a shipped ONNX model.

A model folder (``router_models/<name>/``) holds ``model.onnx`` and ``manifest.json`` (parsed
and checked by :mod:`cascade.model.manifest`). :class:`OnnxScorer` verifies the model's sha256
against the manifest before onnxruntime ever sees the bytes, then scores text through
:func:`cascade.model.features.normalize`, the same function training used. onnxruntime is
imported only when a scorer is built, so ``import cascade.model.scorer`` stays cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from cascade.errors import ModelIntegrityError, RuntimeMissingError, ScorerError
from cascade.model.features import normalize, prompt_features
from cascade.model.manifest import Manifest, load_manifest
from cascade.resources import model_dir

__all__ = [
    "Device",
    "OnnxScorer",
    "Scorer",
    "choose_providers",
]

Device = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_LOG_ERRORS_ONLY = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


class Scorer(Protocol):
    """Anything that turns prompts into confidences in [0, 1]: P(the weak tier suffices)."""

    def score(self, text: str) -> float:
        """Confidence for one prompt."""
        ...

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        """Confidences for several prompts, in order."""
        ...


def choose_providers(device: Device, available: Sequence[str]) -> list[str]:
    """The execution providers to request, most preferred first, for ``device``.

    CUDA is requested whenever onnxruntime offers it (CPU listed second as the fallback);
    whether it really loaded is only known from the session (see :class:`OnnxScorer`).
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


class OnnxScorer:
    """Scores prompts with a router model folder through onnxruntime.

    ``model`` is a shipped model's name (a folder in ``router_models/``) or a folder path.
    ``device="auto"`` uses CUDA when onnxruntime-gpu can load it and the CPU otherwise;
    ``providers`` and ``device`` say what the session really uses. Raises
    :class:`~cascade.errors.ModelIntegrityError` when the file does not match its manifest,
    :class:`~cascade.errors.RuntimeMissingError` without onnxruntime, and
    :class:`~cascade.errors.ScorerError` for anything else that stops the model from loading.
    """

    manifest: Manifest
    providers: tuple[str, ...]
    device: str

    def __init__(
        self,
        model: str | Path = "prompt-features-v1",
        *,
        device: Device = "auto",
        intra_op_threads: int = 1,
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if intra_op_threads < 0:
            raise ValueError(
                f"intra_op_threads must be >= 0 (0: onnxruntime decides), got {intra_op_threads}"
            )
        directory = model_dir(model)
        self.manifest = load_manifest(directory)
        path = directory / self.manifest.file
        model_bytes = _verified_bytes(path, self.manifest)
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = _LOG_ERRORS_ONLY
        providers = choose_providers(device, ort.get_available_providers())
        try:
            self._session: Any = ort.InferenceSession(model_bytes, options, providers=providers)
        except Exception as exc:  # onnxruntime's own error types are not importable API
            raise ScorerError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
        self.providers = tuple(self._session.get_providers())
        # onnxruntime-gpu lists CUDA as available even when it cannot load it, then runs on CPU
        self.device = "cuda" if _CUDA in self.providers else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise ScorerError(
                f"device='cuda' but onnxruntime could not start CUDA for {path}; "
                f"the session fell back to {', '.join(self.providers)}"
            )
        self._check_signature(path)

    def _check_signature(self, path: Path) -> None:
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        spec_in, spec_out = self.manifest.input, self.manifest.output
        if inputs != [spec_in.name] or spec_out.name not in outputs:
            raise ScorerError(
                f"{path}: the graph's inputs {inputs} and outputs {sorted(outputs)} do not match "
                f"the manifest ({spec_in.name!r} -> {spec_out.name!r}); retrain the model"
            )
        width = outputs[spec_out.name][-1]
        if isinstance(width, int) and not 0 <= spec_out.column < width:
            raise ScorerError(f"{path}: output column {spec_out.column} is outside 0..{width - 1}")

    def score(self, text: str) -> float:
        """P(the weak tier suffices) for one prompt, in [0, 1]."""
        return self.score_batch([text])[0]

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        """P(the weak tier suffices) for each prompt, in order; one onnxruntime call."""
        if not texts:
            return []
        batch = self._inputs(texts)
        spec_in, spec_out = self.manifest.input, self.manifest.output
        try:
            (probabilities,) = self._session.run([spec_out.name], {spec_in.name: batch})
        except Exception as exc:  # onnxruntime's own error types are not importable API
            raise ScorerError(f"model {self.manifest.name!r} failed to score: {exc}") from exc
        column: list[float] = probabilities[:, spec_out.column].astype(float).tolist()
        return column

    def _inputs(self, texts: Sequence[str]) -> np.ndarray:
        """The graph's input for ``texts``, by the manifest's preprocessing function."""
        if self.manifest.input.dtype == "float":  # cascade.features.prompt_features
            return np.array([prompt_features(t) for t in texts], dtype=np.float32)
        return np.array([normalize(t) for t in texts], dtype=object).reshape(-1, 1)


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
        import onnxruntime  # noqa: PLC0415 - optional and heavy; only a scorer needs it
    except ImportError as exc:
        raise RuntimeMissingError(
            'onnxruntime is not installed: pip install "cascade-router[cpu]" '
            '(or "cascade-router[gpu]" for CUDA; never both in one environment)'
        ) from exc
    return onnxruntime
