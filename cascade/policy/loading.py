"""Reading policy files: YAML → validated :class:`Policy`, with errors that point at the line.

Errors read ``policies/x.yaml:14: tiers[1].max_concurency: unknown key; did you mean
max_concurrency?``: the file, the line, the key's path, and what is allowed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cascade.errors import PolicyError, PolicyProblem
from cascade.policy.model import CrossFieldError, Policy, _dotted
from cascade.resources import policy_path

Loc = tuple[str | int, ...]


def load_policy(name_or_path: str | Path) -> Policy:
    """Load and validate a policy file (or a shipped policy by name, e.g. ``default``)."""
    path = policy_path(name_or_path)
    text = _read(path)
    policy = parse_policy(text, source=str(path))
    if policy.learning.canary is not None:
        policy.learning.canary._candidate = _load_candidate(path, policy, text)
    return policy


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(
            [PolicyProblem(str(path), None, "", f"cannot read the file: {exc}")]
        ) from exc


def candidate_path(path: Path, canary_file: str) -> Path:
    """Where a canary's candidate file is: ``canary_file`` relative to the live policy's file."""
    return path.parent / canary_file


def _load_candidate(path: Path, live: Policy, text: str) -> Policy:
    """The candidate of ``live``'s ``learning.canary``, loaded and checked against ``live``."""
    assert live.learning.canary is not None
    found = candidate_path(path, live.learning.canary.policy)
    lines: dict[Loc, int] = {}
    if (root := yaml.compose(text, Loader=yaml.SafeLoader)) is not None:  # parsed already
        _index_lines(root, (), lines, [], str(path))
    loc: Loc = ("learning", "canary", "policy")

    def refused(message: str, *more: PolicyProblem) -> PolicyError:
        here = PolicyProblem(str(path), _line(loc, lines), _dotted(loc), message)
        return PolicyError([here, *more])

    if not found.is_file():
        raise refused(f"the candidate {found} is not a file")
    try:  # not load_policy: a candidate's own canary is refused below, never followed
        candidate = parse_policy(_read(found), source=str(found))
    except PolicyError as exc:
        raise refused(f"the candidate {found} does not load (below)", *exc.problems) from None
    if candidate.name != live.name:
        raise refused(
            f"the candidate {found} names policy {candidate.name!r}; a canary must have the live "
            f"policy's name {live.name!r} (its requests are recorded under that name)"
        )
    if candidate.learning.canary is not None:
        raise refused(f"the candidate {found} has a canary of its own; a candidate may not")
    return candidate


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Validate a policy given as YAML text; ``source`` names it in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyProblem(source, line, "", f"not valid YAML: {problem}")]) from exc
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PolicyError(
            [
                PolicyProblem(
                    source, 1, "", f"a policy is a mapping of keys (name, tiers, …); got {kind}"
                )
            ]
        )
    lines: dict[Loc, int] = {}
    duplicates: list[PolicyProblem] = []
    if root is not None:
        _index_lines(root, (), lines, duplicates, source)
    if duplicates:
        raise PolicyError(duplicates)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [p for err in exc.errors() for p in _problems(err, lines, source)]
        problems.sort(key=lambda p: (p.line or 0, p.location))
        raise PolicyError(problems) from None
    policy._source = source
    return policy


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of policy files, for editors (``policies/policy.schema.json``)."""
    schema = Policy.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cascade-router.dev/policy.schema.json",
        **schema,
    }


def _index_lines(
    node: yaml.Node, loc: Loc, out: dict[Loc, int], duplicates: list[PolicyProblem], source: str
) -> None:
    """Record the 1-based line of every key and item, and report duplicate keys."""
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*loc, key)
            if key in seen:
                duplicates.append(
                    PolicyProblem(
                        source, key_node.start_mark.line + 1, _dotted(child), "duplicate key"
                    )
                )
            seen.add(key)
            out[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, out, duplicates, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*loc, i), out, duplicates, source)


def _problems(err: ErrorDetails, lines: dict[Loc, int], source: str) -> Iterator[PolicyProblem]:
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, CrossFieldError):
        for rel, message in cause.problems:
            loc = (*_clean(err["loc"]), *rel)
            yield PolicyProblem(source, _line(loc, lines), _dotted(loc), message)
        return
    loc = _clean(err["loc"])
    yield PolicyProblem(source, _line(loc, lines), _dotted(loc), _explain(err, loc))


def _clean(loc: tuple[str | int, ...]) -> Loc:
    # pydantic adds the union member's class name ("TokenPrice") to paths inside a union; a
    # reader of the YAML file never wrote that name.
    return tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))


def _line(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _explain(err: ErrorDetails, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(allowed)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required key is missing"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = err.get("input")
    if kind != "value_error" and not isinstance(given, dict | list):
        message += f" (got {json.dumps(given, default=str)})"
    return message


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys a mapping at ``loc`` accepts, read from the JSON Schema."""
    schema = Policy.model_json_schema()
    defs = schema.get("$defs", {})
    nodes: list[dict[str, Any]] = [schema]
    for part in loc:
        nodes = [child for node in nodes for child in _children(_resolve(node, defs), part, defs)]
    keys: set[str] = set()
    for node in nodes:
        for option in _options(_resolve(node, defs), defs):
            keys.update(option.get("properties", {}))
    return sorted(keys)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _options(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    alternatives = node.get("anyOf", []) + node.get("oneOf", [])
    if alternatives:
        return [o for sub in alternatives for o in _options(_resolve(sub, defs), defs)]
    return [node]


def _children(node: dict[str, Any], part: str | int, defs: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for option in _options(node, defs):
        if isinstance(part, int) and "items" in option:
            found.append(option["items"])
        elif isinstance(part, str) and part in option.get("properties", {}):
            found.append(option["properties"][part])
        elif isinstance(part, str) and isinstance(option.get("additionalProperties"), dict):
            found.append(option["additionalProperties"])
    return found
