"""Lazy package exports (PEP 562), so that importing one light module never loads torch, timm or Lightning.

The ONNX predictor must run where only numpy, Pillow and onnxruntime are
installed; an eager ``autotimm/__init__.py`` would import Lightning first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, list[str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` that import each export on first use.

    Args:
        package: The package's ``__name__`` (for error messages).
        exports: Module path -> the public names it provides.
        namespace: The package's ``globals()``; a loaded name is cached there.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
