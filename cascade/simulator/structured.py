"""JSON answers: an instance of a JSON Schema, a tool call's arguments, and their breakage.

Weak profiles sometimes emit JSON that does not parse, at their calibrated rate: the breakage
is the kind models really produce (a truncated object, a trailing remark, single quotes).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["break_json", "dumps", "schema_instance"]

_MAX_DEPTH = 6
_STRING_HINTS = {
    "location": "Paris, France",
    "city": "Paris",
    "country": "France",
    "unit": "celsius",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "date": "2024-05-01",
    "language": "en",
    "currency": "USD",
    "url": "https://example.com",
}
_QUERY_FIELDS = {"query", "q", "question", "text", "prompt", "search", "input", "topic"}


def schema_instance(schema: Any, prompt: str, rng: random.Random, name: str = "") -> Any:
    """A value that validates against the common subset of JSON Schema ``schema``."""
    return _instance(schema, prompt, rng, name, 0)


def _instance(schema: Any, prompt: str, rng: random.Random, name: str, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return _string(name, prompt)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.randrange(len(enum))]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _instance(options[0], prompt, rng, name, depth + 1)
    kind = _kind(schema)
    if kind in ("object", "array"):
        return _composite(kind, schema, prompt, rng, name=name, depth=depth)
    return _scalar(kind, schema, prompt, rng, name)


def _composite(
    kind: str, schema: Mapping[str, Any], prompt: str, rng: random.Random, *, name: str, depth: int
) -> Any:
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [_instance(schema.get("items"), prompt, rng, name, depth + 1) for _ in range(count)]
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    return {
        str(key): _instance(sub, prompt, rng, str(key), depth + 1)
        for key, sub in properties.items()
    }


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "array" if "items" in schema else "string"


def _scalar(
    kind: str, schema: Mapping[str, Any], prompt: str, rng: random.Random, name: str
) -> Any:
    if kind in ("integer", "number"):
        low = int(schema.get("minimum", 1))
        high = max(int(schema.get("maximum", max(low, 0) + 10)), low)
        return rng.randint(low, high)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(name, prompt)


def _string(name: str, prompt: str) -> str:
    lowered = name.lower()
    if lowered in _QUERY_FIELDS:
        return " ".join(prompt.split()[:8])
    for hint, value in _STRING_HINTS.items():
        if hint in lowered:
            return value
    return f"{name or 'value'} from the request"


def break_json(text: str, rng: random.Random) -> str:
    """``text`` (valid JSON) turned into the invalid JSON a weak model emits."""
    way = rng.randrange(3)
    if way == 1:
        return text + "\nI hope this helps!"
    if way == 2 and '"' in text:
        return text.replace('"', "'")
    return text[: max(1, len(text) - rng.randint(1, 3))]  # stopped before the closing brace


def dumps(value: Any) -> str:
    """JSON the way models print it: compact separators after keys, unicode kept."""
    return json.dumps(value, ensure_ascii=False)
