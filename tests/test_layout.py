"""The package is laid out as its architecture: one room per step, arrows pointing down only.

Read from the source with ``ast`` (every import, also those inside functions; imports under
``if TYPE_CHECKING:`` are annotations only and do not count), so a new module that breaks the
layering fails here with the offending line, not in a review.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cascade"

ROOMS = ("core", "policy", "model", "tiers", "run", "ledger", "training", "server", "cli")
TOP = {"__init__", "__main__", "errors", "logs", "resources"}
"""Modules that may sit at the top of the package, beside the rooms."""

NEVER: dict[str, set[str]] = {
    "core": {"run", "tiers", "ledger", "training", "server", "cli", "simulator"},
    "policy": {"core", "model", "run", "tiers", "ledger", "training", "server", "cli", "simulator"},
    "model": {"run", "tiers", "ledger", "training", "server", "cli", "simulator"},
    "tiers": {"run", "ledger", "training", "server", "cli", "simulator"},
    "run": {"ledger", "training", "server", "cli", "simulator"},
    "ledger": {"run", "server", "cli", "simulator", "tiers"},
    "training": {"run", "tiers", "ledger", "server", "cli", "simulator"},
    "server": {"cli", "training"},
    # The simulator stands in for engines and providers: it knows nothing of the router. (It
    # counts tokens like the router does, with cascade.core.tokens, a leaf of plain functions.)
    "simulator": {"model", "tiers", "run", "ledger", "training", "server", "cli"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports() -> dict[str, list[tuple[str, int]]]:
    """cascade module -> the cascade modules it imports, with the line of each import."""
    found: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        name = _module_name(path)
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target == "cascade" or target.startswith("cascade."):
                    found[name].append((target, node.lineno))
    return found


def test_every_module_lives_in_a_room() -> None:
    """At the top of the package only the public API, errors, logs and resources."""
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in TOP]
    assert loose == []
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert rooms <= {*ROOMS, "simulator"}


@pytest.mark.parametrize("room", sorted(NEVER))
def test_arrows_point_down(room: str) -> None:
    """No module of a room imports a room above it (DESIGN.md's dependency order)."""
    wrong = [
        f"{module}:{line} imports {target}"
        for module, targets in _imports().items()
        if _room(module) == room
        for target, line in targets
        if _room(target) in NEVER[room]
    ]
    assert wrong == []


def test_the_simulator_counts_tokens_but_knows_nothing_else_of_the_router() -> None:
    """The simulated engines use only errors, their own modules and the token counter."""
    allowed = {"cascade.errors", "cascade.core.tokens"}
    wrong = [
        f"{module}:{line} imports {target}"
        for module, targets in _imports().items()
        if _room(module) == "simulator"
        for target, line in targets
        if _room(target) != "simulator" and target not in allowed
    ]
    assert wrong == []


def test_no_import_cycles_between_modules() -> None:
    """Following imports from any module never leads back to it."""
    graph = {module: {t for t, _ in targets} for module, targets in _imports().items()}
    assert _cycles(graph) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_is_over_400_lines() -> None:
    """A module past 400 lines hides a second concept; split it."""
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
