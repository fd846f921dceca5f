"""cascade: send every LLM request to the cheapest tier that can handle it.

``import cascade`` is cheap and has no side effects: the names below are loaded on first use, and
nothing here imports onnxruntime, scikit-learn or litellm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cascade.core.capacity import InFlightCounter
    from cascade.core.decision import Decision
    from cascade.core.planner import Planner, route
    from cascade.core.prompt import PreparedPrompt, prepare_prompt
    from cascade.core.request import ChatRequest
    from cascade.errors import CascadeError, PolicyError, RoutingError, ScorerError, TierError
    from cascade.model.scorer import OnnxScorer
    from cascade.policy import Policy, load_policy
    from cascade.run.attempts import Attempt, Completion, UpstreamError, describe_attempts
    from cascade.run.router import Router

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Attempt": "cascade.run.attempts",
    "CascadeError": "cascade.errors",
    "ChatRequest": "cascade.core.request",
    "Completion": "cascade.run.attempts",
    "Decision": "cascade.core.decision",
    "InFlightCounter": "cascade.core.capacity",
    "OnnxScorer": "cascade.model.scorer",
    "Planner": "cascade.core.planner",
    "Policy": "cascade.policy",
    "PolicyError": "cascade.errors",
    "PreparedPrompt": "cascade.core.prompt",
    "Router": "cascade.run.router",
    "RoutingError": "cascade.errors",
    "ScorerError": "cascade.errors",
    "TierError": "cascade.errors",
    "UpstreamError": "cascade.run.attempts",
    "describe_attempts": "cascade.run.attempts",
    "load_policy": "cascade.policy",
    "prepare_prompt": "cascade.core.prompt",
    "route": "cascade.core.planner",
}

__all__ = [
    "Attempt",
    "CascadeError",
    "ChatRequest",
    "Completion",
    "Decision",
    "InFlightCounter",
    "OnnxScorer",
    "Planner",
    "Policy",
    "PolicyError",
    "PreparedPrompt",
    "Router",
    "RoutingError",
    "ScorerError",
    "TierError",
    "UpstreamError",
    "__version__",
    "describe_attempts",
    "load_policy",
    "prepare_prompt",
    "route",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cascade' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
