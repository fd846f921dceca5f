"""The built wheel carries the model, policies and migrations, and works outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built without network access."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("cascade_router-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_the_shipped_resources(wheel: Path) -> None:
    """The wheel holds the ONNX model with its manifest, the policies, the schema and py.typed."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "cascade/py.typed",
        "cascade/_data/router_models/tfidf-lr-v1/model.onnx",
        "cascade/_data/router_models/tfidf-lr-v1/manifest.json",
        "cascade/_data/policies/default.yaml",
        "cascade/_data/policies/policy.schema.json",
        "cascade/_data/migrations/README.md",
    ):
        assert required in names, required


@pytest.mark.slow
def test_installed_wheel_routes_from_a_fresh_environment(wheel: Path, tmp_path: Path) -> None:
    """``cascade route`` works in a fresh virtual environment that has only the wheel installed."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The wheel's dependencies come from this test environment's site-packages: a .pth entry is
    # appended after the fresh environment's own site-packages, and lines in it are not processed
    # as site directories, so this checkout's editable install stays invisible.
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import cascade, cascade.resources as r; "
            "print(cascade.__file__); print(r.resource_dir('router_models'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert where[0].startswith(str(env_dir))
    assert where[1].endswith("cascade/_data/router_models")

    routed = subprocess.run(
        [str(env_dir / "bin" / "cascade"), "route", "What is 2 + 2?"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.startswith("tier ")
    assert "confidence" in routed.stdout
