"""The policy field reference (``policies/REFERENCE.md``), generated from the models' docstrings."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cascade.policy.learning import Canary
from cascade.policy.model import (
    Budgets,
    Engine,
    Escalation,
    GpuPrice,
    Learning,
    Policy,
    Probe,
    PromptSettings,
    ScorerSettings,
    ServiceTier,
    Tier,
    Timeouts,
    TokenPrice,
    VerifierSettings,
    Verify,
    Workload,
)

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Policy (top level)", Policy),
    ("tiers[]", Tier),
    ("tiers[].price — per token", TokenPrice),
    ("tiers[].price — GPU time", GpuPrice),
    ("tiers[].timeouts", Timeouts),
    ("tiers[].verify", Verify),
    ("tiers[].engine", Engine),
    ("tiers[].service_tiers.<service_tier>", ServiceTier),
    ("workloads.<name>", Workload),
    ("escalation", Escalation),
    ("prompt", PromptSettings),
    ("scorer", ScorerSettings),
    ("verifier", VerifierSettings),
    ("budgets", Budgets),
    ("learning", Learning),
    ("learning.canary", Canary),
    ("probes[]", Probe),
]

_HEADER = """\
# Policy file reference

Generated from cascade's policy models by `cascade policy reference`; do not edit by hand.
Unknown keys are errors. Editors validate against `policy.schema.json` (add
`# yaml-language-server: $schema=policy.schema.json` at the top of a file).
"""


def render_reference() -> str:
    """Markdown tables of every policy field: type, default, meaning."""
    parts = [_HEADER]
    for title, model in _SECTIONS:
        parts.append(f"\n## `{title}`\n\n{_first_line(model.__doc__)}\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if field.is_required():
                default = "**required**"
            elif field.default_factory is not None:
                default = f"`{_show(field.default_factory())}`"  # type: ignore[call-arg]
            elif field.default is PydanticUndefined:
                default = ""
            else:
                default = f"`{_show(field.default)}`"
            meaning = " ".join((field.description or "").split())
            parts.append(f"| `{name}` | {_type_name(field.annotation)} | {default} | {meaning} |")
    return "\n".join(parts) + "\n"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "{…}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if value == "":
        return '""'

    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _type_name(annotation: Any) -> str:  # noqa: PLR0911 - one return per kind of annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return {
            "str": "string",
            "int": "integer",
            "float": "number",
            "bool": "boolean",
            "Decimal": "number",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)
