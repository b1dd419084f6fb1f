"""The package's layout: layers, no import loops, no private names across subpackages, lazy exports, old paths.

The imports are read from the source (ast), deferred and ``TYPE_CHECKING``
imports included: a loop that only a deferred import avoids is still a loop.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import autotimm
from autotimm._deprecated import MOVED
from autotimm._lazy import type_checking_imports

PACKAGE = Path(autotimm.__file__).parent

#: The subpackages bottom to top; a module may import only from its own layer's package or from a lower layer.
#: Modules at the package root are the bottom layer, except ``autotimm/__init__.py`` (the flat API, on top).
LAYERS: list[set[str]] = [
    {"_lazy", "_version", "_deprecated", "checks", "registry"},
    {"data", "models"},
    {"optim", "prediction"},
    {"training"},
    {"evaluation"},
    {"classifier"},
    {"exporting", "serving"},
    {"auto"},
    {"cli"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every absolute or relative import of autotimm in a file."""
    found = []
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            if module == "autotimm" or module.startswith("autotimm."):
                found.append((module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("autotimm")]
    return found


def _group(module: str) -> str:
    """The subpackage (or root module) a module belongs to: ``autotimm.training.ema`` -> ``training``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "autotimm"


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_has_a_layer():
    groups = {_group(name) for name in MODULES} - {"autotimm"}
    assert groups - set(LAYER_OF) == set(), "a new subpackage or root module needs a place in LAYERS"
    root_modules = {_group(name) for name in MODULES if name.count(".") == 1 and MODULES[name].name != "__init__.py"}
    assert root_modules <= LAYERS[0], f"only small shared modules stay at the package root, got {root_modules}"


def test_lower_layers_never_import_higher_ones():
    upward = []
    for name, path in MODULES.items():
        if name == "autotimm":
            continue
        for module, _, line in _imports(path):
            if module == "autotimm":
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the package root")
            elif LAYER_OF[_group(module)] > LAYER_OF[_group(name)]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} (a higher layer)")
    assert upward == []


def test_nothing_outside_cli_imports_cli():
    offenders = [
        f"{name}:{line}"
        for name, path in MODULES.items()
        if _group(name) != "cli"
        for module, _, line in _imports(path)
        if _group(module) == "cli"
    ]
    assert offenders == []


def test_no_import_loops():
    graph = {name: {module for module, _, _ in _imports(path) if module in MODULES} for name, path in MODULES.items()}
    # A package's __init__ re-exports lazily: importing a name from it means importing the submodule that holds it.
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            graph[name] = set(type_checking_imports(path.read_text(encoding="utf-8")).values()) | {
                m for m in graph[name] if not m.startswith(name + ".")
            }
    loops, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                loops.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state and name != "autotimm":
            visit(name, [name])
    assert loops == []


def test_no_private_names_imported_from_another_module():
    offenders = []
    for name, path in MODULES.items():
        for module, names, line in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != name:
                offenders.append(f"{name}:{line} imports {private} from {module}")
    assert offenders == []


def _private_names_defined(path: Path) -> set[str]:
    """Private functions, classes, class attributes and ``self._x`` attributes a file defines."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def test_no_private_attributes_used_across_modules():
    """``obj._x`` where ``_x`` belongs to another module (``self._x`` and ``cls._x`` are the owner's own)."""
    defined = {name: _private_names_defined(path) for name, path in MODULES.items()}
    offenders = []
    for name, path in MODULES.items():
        own = defined[name]
        theirs = set().union(*(names for module, names in defined.items() if module != name))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.endswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr in theirs - own
            ):
                offenders.append(f"{name}:{node.lineno} uses .{node.attr}")
    assert offenders == []


def test_low_level_checks_import_nothing_of_ours():
    assert _imports(PACKAGE / "checks.py") == []
    assert _imports(PACKAGE / "registry.py") == []


@pytest.mark.parametrize("package", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_lazy_exports_are_one_list(package):
    """A package's public names are its TYPE_CHECKING imports; ``__all__`` lists the same names and each loads."""
    module = importlib.import_module(package)
    declared = type_checking_imports(MODULES[package].read_text(encoding="utf-8"))
    if not declared:
        return
    assert set(module.__all__) - {"__version__"} == set(declared)
    for name in declared:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_warn_and_still_work(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"`{old}` moved to `{MOVED[old][0]}`"):
        module = importlib.import_module(old)
    new = importlib.import_module(MOVED[old][0])
    public = [n for n in getattr(new, "__all__", []) if not n.startswith("_")]
    assert public, f"{MOVED[old][0]} has no __all__"
    for name in public:
        assert getattr(module, name) is getattr(new, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_documented_deep_paths():
    from autotimm.classifier import ImageClassifier
    from autotimm.evaluation import evaluate
    from autotimm.exporting import export
    from autotimm.prediction import OnnxPredictor, Prediction

    assert ImageClassifier is autotimm.ImageClassifier and evaluate is autotimm.evaluate
    assert export is autotimm.export and OnnxPredictor is autotimm.OnnxPredictor and Prediction is autotimm.Prediction
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new paths never warn
        importlib.import_module("autotimm.serving.app")
        importlib.import_module("autotimm.prediction.onnx_predictor")


def test_old_path_warning_points_at_the_import():
    code = "import warnings; warnings.simplefilter('always'); import autotimm.onnx_predictor"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.startswith("<string>:1: DeprecationWarning: `autotimm.onnx_predictor` moved to")


def test_no_module_reads_the_version_from_the_root():
    for name, path in MODULES.items():
        for module, names, line in _imports(path):
            assert not (module == "autotimm" and "__version__" in names), f"{name}:{line}"
