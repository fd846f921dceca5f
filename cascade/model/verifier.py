"""The verifier runtime: P(a candidate answer is good enough), given witnesses' answers.

After a cheap tier answers, the router may ask for evidence (more samples of that tier, or a
second cheap tier's answer: the *witnesses*) and accept the candidate only when the verifier's
confidence clears the policy's threshold; otherwise it escalates. :class:`OnnxVerifier` loads a
verifier model folder (``router_models/verifier-v2``) the way :class:`~cascade.model.scorer.
OnnxScorer` loads a scorer (sha256 checked, onnxruntime imported on first use, one intra-op
thread by default) and computes :func:`~cascade.model.answer_features.answer_features`, the
function its training used. One call on text answers costs a fraction of a millisecond
(``benchmarks/bench_verifier``); on a code candidate it runs the candidate's and the witnesses'
code in a sandbox first (:mod:`cascade.model.code_evidence`, tens of milliseconds: call it off
the event loop, as the router does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cascade.errors import ScorerError
from cascade.model.answer_features import answer_features, judgeable
from cascade.model.manifest import Manifest
from cascade.model.session import Device, open_model

__all__ = ["DEFAULT_VERIFIER", "OnnxVerifier", "Verification", "Verifier"]

DEFAULT_VERIFIER = "verifier-v2"


@dataclass(frozen=True)
class Verification:
    """One question to a verifier: a candidate answer to ``prompt`` and its witnesses.

    ``logprobs``: the candidate's token logprobs, when its tier returned them.
    """

    prompt: str
    candidate: str
    witnesses: tuple[str, ...]
    logprobs: tuple[float, ...] | None = None


class Verifier(Protocol):
    """Anything that says how likely a candidate answer is good enough, in [0, 1]."""

    def confidence(
        self,
        prompt: str,
        candidate: str,
        witnesses: Sequence[str],
        logprobs: Sequence[float] | None = None,
    ) -> float:
        """P(the candidate is good enough) given the witnesses."""
        ...

    def can_judge(self, prompt: str, candidate: str) -> bool:
        """Whether the candidate is in a form the verifier's confidence means something for."""
        ...


class OnnxVerifier:
    """A verifier model folder, run by onnxruntime.

    ``model`` is a shipped verifier's name (a folder in ``router_models/``) or a folder path.
    Raises :class:`~cascade.errors.ModelIntegrityError` when the file does not match its
    manifest, :class:`~cascade.errors.RuntimeMissingError` without onnxruntime, and
    :class:`~cascade.errors.ScorerError` for anything else that stops it from loading (a scorer
    model given instead of a verifier among them).
    """

    manifest: Manifest
    providers: tuple[str, ...]
    device: str

    def __init__(
        self,
        model: str | Path = DEFAULT_VERIFIER,
        *,
        device: Device = "cpu",
        intra_op_threads: int = 1,
    ) -> None:
        opened = open_model(
            model, kind="verifier", device=device, intra_op_threads=intra_op_threads
        )
        self.manifest, self._session = opened.manifest, opened.session
        self.providers, self.device = opened.providers, opened.device
        self._input, self._output = self.manifest.input.name, self.manifest.output.name
        self._column = self.manifest.output.column

    def confidence(
        self,
        prompt: str,
        candidate: str,
        witnesses: Sequence[str],
        logprobs: Sequence[float] | None = None,
    ) -> float:
        """P(``candidate`` is good enough), given ``witnesses`` (other answers to ``prompt``)."""
        features = np.array(
            [answer_features(prompt, candidate, witnesses, logprobs)], dtype=np.float32
        )
        return float(self.confidence_of_features(features)[0])

    def can_judge(self, prompt: str, candidate: str) -> bool:
        """Whether ``candidate`` is in a form this verifier was measured on (see
        :func:`~cascade.model.answer_features.judgeable`); the verify step keeps an answer it
        cannot judge unverified (or escalates it, as the policy says)."""
        return judgeable(prompt, candidate)

    def confidence_batch(self, items: Sequence[Verification]) -> list[float]:
        """:meth:`confidence` of each item, in order; one onnxruntime call."""
        if not items:
            return []
        features = np.array(
            [answer_features(i.prompt, i.candidate, i.witnesses, i.logprobs) for i in items],
            dtype=np.float32,
        )
        return [float(c) for c in self.confidence_of_features(features)]

    def confidence_of_features(self, features: np.ndarray) -> np.ndarray:
        """P(good) for rows of :func:`answer_features` already computed (evaluation uses it)."""
        try:
            (probabilities,) = self._session.run(
                [self._output], {self._input: np.asarray(features, dtype=np.float32)}
            )
        except Exception as exc:  # onnxruntime's own error types are not importable API
            raise ScorerError(f"model {self.manifest.name!r} failed to verify: {exc}") from exc
        return np.asarray(probabilities[:, self._column], dtype=np.float64)
