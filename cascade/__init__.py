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
    from cascade.errors import CascadeError, PolicyError, RoutingError, ScorerError
    from cascade.model.scorer import OnnxScorer
    from cascade.policy import Policy, load_policy

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CascadeError": "cascade.errors",
    "Decision": "cascade.core.decision",
    "InFlightCounter": "cascade.core.capacity",
    "OnnxScorer": "cascade.model.scorer",
    "Planner": "cascade.core.planner",
    "Policy": "cascade.policy",
    "PolicyError": "cascade.errors",
    "PreparedPrompt": "cascade.core.prompt",
    "RoutingError": "cascade.errors",
    "ScorerError": "cascade.errors",
    "load_policy": "cascade.policy",
    "prepare_prompt": "cascade.core.prompt",
    "route": "cascade.core.planner",
}

__all__ = [
    "CascadeError",
    "Decision",
    "InFlightCounter",
    "OnnxScorer",
    "Planner",
    "Policy",
    "PolicyError",
    "PreparedPrompt",
    "RoutingError",
    "ScorerError",
    "__version__",
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
