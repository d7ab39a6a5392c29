"""The sdist and wheel build from exactly what the Docker image copies, and install into a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from atlas_log import __version__


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` (sdist, then the wheel from the sdist) on a copy of what .dockerignore lets through."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(REPO / "pyproject.toml", tree)
    shutil.copy(REPO / "README.md", tree)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, tree)
    return out


def test_sdist_and_wheel_hold_the_package_data(dist: Path) -> None:
    wheels = list(dist.glob(f"atlas_log_exporter-{__version__}-py3-none-any.whl"))
    assert len(wheels) == 1 and len(list(dist.glob(f"atlas_log_exporter-{__version__}.tar.gz"))) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for required in (
        "atlas_log/py.typed",
        "atlas_log/lambda_handler.py",
        "atlas_log/simulator/data/org-event-types.txt",
    ):
        assert required in names
    entry_points = zipfile.ZipFile(wheels[0]).read(f"atlas_log_exporter-{__version__}.dist-info/entry_points.txt")
    assert b"atlas-log = atlas_log.cli:main" in entry_points


def test_the_wheel_installs_into_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    wheel = next(dist.glob("*.whl"))
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    assert run(venv / "bin" / "atlas-log", "--version").stdout.strip() == f"atlas-log, version {__version__}"
    commands = run(venv / "bin" / "atlas-log", "--help").stdout
    for command in ("run", "status", "verify", "health", "demo", "simulate"):
        assert f"  {command} " in commands
    run(venv / "bin" / "python", "-c", "import atlas_log.lambda_handler, atlas_log.progress")
    run(venv / "bin" / "python", "-m", "pip", "check")


@pytest.mark.slow
def test_the_lambda_package_imports_the_handler(tmp_path: Path) -> None:
    """deploy/lambda/build.sh: a zip of the exporter and its dependencies, importable on its own."""
    package = tmp_path / "lambda.zip"
    run("bash", REPO / "deploy" / "lambda" / "build.sh", package, cwd=tmp_path)
    names = zipfile.ZipFile(package).namelist()
    assert "atlas_log/lambda_handler.py" in names
    assert any(n.startswith("boto3/") for n in names) and any(n.startswith("httpx/") for n in names)
    assert not any(n.endswith(".so") for n in names)  # pure Python: one package for x86_64 and arm64
    unpacked = tmp_path / "task"
    zipfile.ZipFile(package).extractall(unpacked)
    probe = "import atlas_log.lambda_handler as h; print(h.handler.__name__)"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {probe}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "handler", proc.stderr
