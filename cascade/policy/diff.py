"""What changes between two policies, field by field (``cascade policy diff OLD NEW``).

Both policies are compared as validated (defaults filled in, so writing out a default changes
nothing, and comments and formatting never count). Tiers are matched by name, so a tier that
moves reads as a change of order, not as every field of two tiers changing; a tier or workload
present in one policy only reads as added or removed, with what identifies it. Each change
belongs to one section, printed in this order: thresholds, tiers, models, workloads, learning,
other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cascade.policy.model import Policy, Workload

__all__ = ["SECTIONS", "Change", "diff_policies", "format_diff"]

SECTIONS = ("thresholds", "tiers", "models", "workloads", "learning", "other")
_ABSENT = object()
_SHOWN_CHARS = 80


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: its dotted path (tiers by name), and the values before and after
    (``None`` where the policy has no such field: added or removed)."""

    section: str
    field: str
    old: Any
    new: Any
    added: bool = False
    removed: bool = False


def diff_policies(old: Policy, new: Policy) -> list[Change]:
    """Every field of ``new`` that differs from ``old``, by section then in file order."""
    before, after = _comparable(old), _comparable(new)
    changes: list[Change] = []
    old_order = [t.name for t in old.tiers]
    new_order = [t.name for t in new.tiers]
    kept_old = [n for n in old_order if n in new_order]
    kept_new = [n for n in new_order if n in old_order]
    if kept_old != kept_new:
        changes.append(Change("tiers", "tiers (order)", old_order, new_order))
    _walk(before, after, (), changes)
    rank = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(changes, key=lambda c: rank[c.section])  # stable: file order within a section


def _comparable(policy: Policy) -> dict[str, Any]:
    data = policy.model_dump(mode="json")
    data["tiers"] = {tier["name"]: tier for tier in data["tiers"]}
    return dict(data)


def _walk(old: Any, new: Any, path: tuple[str, ...], out: list[Change]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
            here = (*path, str(key))
            if after is _ABSENT:
                out.append(Change(_section(here), _dotted(here), before, None, removed=True))
            elif before is _ABSENT:
                shown = _set_fields(after) if here[:1] == ("workloads",) else after
                out.append(Change(_section(here), _dotted(here), None, shown, added=True))
            else:
                _walk(before, after, here, out)
        return
    out.append(Change(_section(path), _dotted(path), old, new))


def _set_fields(workload: dict[str, Any]) -> dict[str, Any]:
    """An added workload's fields that differ from a workload's defaults."""
    defaults = Workload().model_dump(mode="json")
    return {k: v for k, v in workload.items() if defaults.get(k, _ABSENT) != v}


def _section(path: tuple[str, ...]) -> str:
    last = path[-1]
    if last == "threshold":
        return "thresholds"
    if last == "model" or path[0] in ("scorer", "verifier"):
        return "models"
    if path[0] == "tiers":
        return "tiers"
    if path[0] in ("workloads", "default_workload"):
        return "workloads"
    return path[0] if path[0] in SECTIONS else "other"


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def format_diff(old: Policy, new: Policy, changes: list[Change]) -> list[str]:
    """The changes as text lines, a heading per section; one line when nothing changes."""
    lines = [
        f"policy diff: {old.source} ({old.name} {old.fingerprint}) -> "
        f"{new.source} ({new.name} {new.fingerprint})"
    ]
    if not changes:
        return [*lines, "  no change: the two policies route alike"]
    width = min(40, max(len(c.field) for c in changes))
    for section in SECTIONS:
        chosen = [c for c in changes if c.section == section]
        if chosen:
            lines.append(f"  {section}:")
            lines += [f"    {c.field:<{width}}  {_what(c)}" for c in chosen]
    return lines


def _what(change: Change) -> str:
    if change.added:
        return f"added: {_show(change.new)}"
    if change.removed:
        return f"removed (was {_show(change.old)})"
    return f"{_show(change.old)} -> {_show(change.new)}"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, dict) and "name" in value and "kind" in value:  # a whole tier
        return (
            f"tier {value['name']} ({value['kind']}, model {value['model']}, threshold "
            f"{value['threshold']})"
        )
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
