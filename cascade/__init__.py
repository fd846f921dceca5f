"""cascade: send every LLM request to the cheapest tier that can handle it.

``import cascade`` is cheap and has no side effects: the names below are loaded on first use, and
nothing here imports onnxruntime, scikit-learn or litellm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cascade.errors import CascadeError, PolicyError, RoutingError, ScorerError

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CascadeError": "cascade.errors",
    "PolicyError": "cascade.errors",
    "RoutingError": "cascade.errors",
    "ScorerError": "cascade.errors",
}

__all__ = [
    "CascadeError",
    "PolicyError",
    "RoutingError",
    "ScorerError",
    "__version__",
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
