"""Lazy package exports (PEP 562), so that importing one light module never loads torch, timm or Lightning.

The ONNX predictor must run where only numpy, Pillow and onnxruntime are
installed; an eager ``autotimm/__init__.py`` would import Lightning first.

A package lists its public names once, as imports inside ``if TYPE_CHECKING:``
(what type checkers and the API docs read), plus the literal ``__all__`` that
type checkers need for a library's re-exports; ``tests/test_layout.py`` checks
that the two agree. `lazy_exports` reads that import block from the package's
source, so there is no third list to keep in step.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports", "type_checking_imports"]


def type_checking_imports(source: str) -> dict[str, str]:
    r"""The names imported inside a module's top-level ``if TYPE_CHECKING:`` blocks.

    Args:
        source: The module's source code.

    Returns:
        Exported name -> the module it is imported from, in source order.

    Example:
        >>> type_checking_imports("if TYPE_CHECKING:\n    from a.b import C, D as E\n")
        {'C': 'a.b', 'E': 'a.b'}
    """
    where: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                    for alias in statement.names:
                        where[alias.asname or alias.name] = statement.module
    return where


def lazy_exports(namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` that import each export on first use.

    The exports are the names the package imports in its ``if TYPE_CHECKING:`` block.

    Args:
        namespace: The package's ``globals()``; a loaded name is cached there.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.
    """
    package = namespace["__name__"]
    where = type_checking_imports(Path(namespace["__file__"]).read_text(encoding="utf-8"))

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
