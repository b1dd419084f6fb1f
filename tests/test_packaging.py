"""The wheel ships the package and its data files, the license and metadata, and nothing of the repository besides.

The wheel is built offline (``--no-build-isolation``: setuptools comes from the
test environment) from a copy of the checkout, so the build leaves no
``build/`` or ``*.egg-info`` folder behind in the working tree. It takes a few
seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.packaging

#: Not part of the source a wheel is built from (caches, outputs, environments).
_SKIP = (".git", ".venv", "venv", "site", "build", "dist", "runs", "lightning_logs", "autotimm_output", "__pycache__")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout (others may edit the working tree while the tests run)."""
    copy = tmp_path_factory.mktemp("source") / "autotimm"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(*_SKIP, "*.egg-info", "*.pyc", ".*_cache"),
        symlinks=True,
    )
    return copy


def _files(source: Path, pattern: str) -> list[str]:
    """The package's files matching a pattern, as their paths in the wheel."""
    return sorted(path.relative_to(source).as_posix() for path in (source / "autotimm").rglob(pattern))


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    result = subprocess.run(
        [*command, "-w", str(out), str(source)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("autotimm-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.fixture(scope="module")
def names(wheel) -> set[str]:
    return set(wheel.namelist())


@pytest.fixture(scope="module")
def metadata(wheel, names):
    (path,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(path).decode("utf-8"))


def test_wheel_ships_the_data_files(names):
    assert "autotimm/serving/web/index.html" in names
    assert "autotimm/py.typed" in names


def test_wheel_ships_every_subpackage(source, names):
    packages = _files(source, "__init__.py")
    assert "autotimm/__init__.py" in packages and "autotimm/serving/__init__.py" in packages
    assert [name for name in packages if name not in names] == []


def test_wheel_ships_every_module(source, names):
    modules = _files(source, "*.py")
    assert [name for name in modules if name not in names] == []


def test_wheel_ships_nothing_else(names):
    top = {name.split("/")[0] for name in names}
    assert "autotimm" in top and len(top) == 2 and all(t == "autotimm" or t.endswith(".dist-info") for t in top)
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/", "docs/"))]
    assert not [name for name in names if "/tests/" in name or "/benchmarks/" in name]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_wheel_ships_the_license(wheel, names, metadata):
    (license_file,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(license_file).decode("utf-8")
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_wheel_metadata(metadata):
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert not [c for c in classifiers if c.startswith("License ::")]  # the license expression says it
    assert metadata.get_all("Project-URL")
    extras = metadata.get_all("Provides-Extra")
    assert {"datasets", "onnx", "serve", "auto", "all"} <= set(extras)
    all_extra = [r for r in metadata.get_all("Requires-Dist") if r.endswith('extra == "all"')]
    assert len(all_extra) == 1
    for extra in ("datasets", "onnx", "serve", "auto"):
        assert extra in all_extra[0]
    assert metadata.get_payload().lstrip().startswith("# autotimm")  # the README is the long description


def test_wheel_installs_the_command(wheel, names):
    (path,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "autotimm = autotimm.cli:main" in wheel.read(path).decode("utf-8")
