"""The confidence scorer: P(the weak tier suffices) for a prompt, from a shipped ONNX model.

A model folder (``router_models/<name>/``) holds ``model.onnx`` and ``manifest.json``;
:func:`cascade.model.session.open_model` checks both (sha256 before onnxruntime ever sees the
bytes) and :class:`OnnxScorer` scores text through :func:`cascade.model.features.normalize` or
:func:`~cascade.model.features.prompt_features`, the functions training used. onnxruntime is
imported only when a scorer is built, so ``import cascade.model.scorer`` stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from cascade.errors import ScorerError
from cascade.model.features import normalize, prompt_features
from cascade.model.manifest import Manifest
from cascade.model.session import Device, choose_providers, open_model

__all__ = [
    "Device",
    "OnnxScorer",
    "Scorer",
    "choose_providers",
]


_KEEP_ROWS = 512
"""Rows :class:`OnnxScorer` remembers after scoring, so the planner reads them without work."""
_KEEP_CHARS = 8192
"""Longer texts are not remembered (featurized again when asked): the cache holds the texts as
keys, and a client's megabyte prompts must not stay in memory after their requests."""


class Scorer(Protocol):
    """Anything that turns prompts into confidences in [0, 1]: P(the weak tier suffices)."""

    def score(self, text: str) -> float:
        """Confidence for one prompt."""
        ...

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        """Confidences for several prompts, in order."""
        ...


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
        model: str | Path = "prompt-features-v2",
        *,
        device: Device = "auto",
        intra_op_threads: int = 1,
    ) -> None:
        opened = open_model(model, kind="scorer", device=device, intra_op_threads=intra_op_threads)
        self.manifest, self._session = opened.manifest, opened.session
        self.providers, self.device = opened.providers, opened.device
        self._rows: dict[str, tuple[float, ...]] = {}
        self._rows_lock = threading.Lock()

    @property
    def feature_version(self) -> str | None:
        """The version of the numbers :meth:`features` returns (None: a text model has none)."""
        return self.manifest.feature_version if self.manifest.input.dtype == "float" else None

    def features(self, text: str) -> tuple[float, ...] | None:
        """The row of numbers the model scores ``text`` from (None for a text model): kept in the
        ledger for replay. A text scored moments ago is not featurized again."""
        if self.manifest.input.dtype != "float":
            return None
        with self._rows_lock:
            row = self._rows.get(text)
        if row is None:
            row = tuple(float(v) for v in np.asarray(prompt_features(text), dtype=np.float32))
        return row

    def score(self, text: str) -> float:
        """P(the weak tier suffices) for one prompt, in [0, 1]."""
        return self.score_batch([text])[0]

    def score_batch(self, texts: Sequence[str]) -> list[float]:
        """P(the weak tier suffices) for each prompt, in order; one onnxruntime call."""
        if not texts:
            return []
        column: list[float] = self._run(self._inputs(texts)).tolist()
        return column

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """P(the weak tier suffices) for rows of numbers already made (a float model's input,
        such as the ledger's ``features`` read back for replay), as float64; one onnxruntime
        call. A text model has no such input: :class:`~cascade.errors.ScorerError`."""
        spec = self.manifest.input
        if spec.dtype != "float":
            raise ScorerError(
                f"model {self.manifest.name!r} reads text, not rows of numbers: it cannot score "
                "stored features"
            )
        width = spec.shape[-1]
        if rows.ndim != 2 or (width is not None and rows.shape[1] != width):
            raise ScorerError(
                f"model {self.manifest.name!r} reads rows of {width} numbers, got an array of "
                f"shape {rows.shape}"
            )
        if not len(rows):
            return np.zeros(0)
        return self._run(np.ascontiguousarray(rows, dtype=np.float32))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        spec_in, spec_out = self.manifest.input, self.manifest.output
        try:
            (probabilities,) = self._session.run([spec_out.name], {spec_in.name: batch})
        except Exception as exc:  # onnxruntime's own error types are not importable API
            raise ScorerError(f"model {self.manifest.name!r} failed to score: {exc}") from exc
        column: np.ndarray = probabilities[:, spec_out.column].astype(np.float64)
        return column

    def _keep(self, texts: Sequence[str], rows: np.ndarray) -> None:
        """Remember the last rows scored, for :meth:`features` (oldest dropped first)."""
        kept = {
            text: tuple(row.tolist())
            for text, row in zip(texts, rows, strict=True)
            if len(text) <= _KEEP_CHARS
        }
        with self._rows_lock:
            self._rows.update(kept)
            while len(self._rows) > _KEEP_ROWS:
                del self._rows[next(iter(self._rows))]

    def _inputs(self, texts: Sequence[str]) -> np.ndarray:
        """The graph's input for ``texts``, by the manifest's preprocessing function."""
        if self.manifest.input.dtype == "float":  # cascade.features.prompt_features
            rows = np.array([prompt_features(t) for t in texts], dtype=np.float32)
            if len(texts) <= _KEEP_ROWS:
                self._keep(texts, rows)
            return rows
        return np.array([normalize(t) for t in texts], dtype=object).reshape(-1, 1)
