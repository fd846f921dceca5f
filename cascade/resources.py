"""Where the shipped resources live: router models, policies and migrations.

An installed wheel carries them inside the package (``cascade/_data/<kind>``); a source checkout
(editable install, or running from the repository) keeps them at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cascade.errors import ResourceNotFoundError

ResourceKind = Literal["router_models", "policies", "migrations"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(kind: ResourceKind) -> Path:
    """The directory holding the shipped resources of one kind."""
    for candidate in (_PACKAGE_DIR / "_data" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise ResourceNotFoundError(
        f"cannot find the shipped {kind!r} directory next to {_PACKAGE_DIR}; "
        "reinstall cascade-router (the wheel carries it) or run from a source checkout"
    )


def model_dir(name_or_path: str | Path) -> Path:
    """Resolve a router model by name (a folder in ``router_models/``) or by path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = resource_dir("router_models")
    candidate = shipped / str(name_or_path)
    if candidate.is_dir():
        return candidate
    available = sorted(p.name for p in shipped.iterdir() if (p / "manifest.json").is_file())
    raise ResourceNotFoundError(
        f"router model {str(name_or_path)!r} not found: it is neither a directory nor one of the "
        f"shipped models ({', '.join(available) or 'none'}) in {shipped}"
    )


def policy_path(name_or_path: str | Path) -> Path:
    """Resolve a policy by name (``default`` → ``policies/default.yaml``) or by path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resource_dir("policies")
    for candidate in (shipped / f"{name_or_path}.yaml", shipped / str(name_or_path)):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in shipped.glob("*.yaml"))
    raise ResourceNotFoundError(
        f"policy {str(name_or_path)!r} not found: it is neither a file nor one of the shipped "
        f"policies ({', '.join(available) or 'none'}) in {shipped}"
    )
