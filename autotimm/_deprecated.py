"""The module paths of autotimm 0.1 that moved into subpackages keep working for one release, with a warning.

``import autotimm.onnx_predictor`` (or ``from autotimm.service import create_app``)
still works and emits a ``DeprecationWarning`` naming the new module. The
old path is an alias module whose attributes come from the new homes; no file
is left behind at the package root. The aliases go in autotimm 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

#: Old module path -> the modules that hold its names now (the first is named in the warning).
MOVED: dict[str, tuple[str, ...]] = {
    "autotimm.backbone": ("autotimm.models.backbone",),
    "autotimm.head": ("autotimm.models.head",),
    "autotimm.optimizers": ("autotimm.optim.optimizers",),
    "autotimm.schedulers": ("autotimm.optim.schedulers",),
    "autotimm.trainer": ("autotimm.training.trainer", "autotimm.optim.schedulers"),
    "autotimm.tuning": ("autotimm.training.tuner",),
    "autotimm.ema": ("autotimm.training.ema",),
    "autotimm.feature_cache": ("autotimm.training.feature_cache",),
    "autotimm.mixing": ("autotimm.training.mixing",),
    "autotimm.metrics": ("autotimm.training.metrics", "autotimm.optim.schedulers"),
    "autotimm.logging_config": ("autotimm.training.diagnostics",),
    "autotimm.finetuning": (
        "autotimm.classifier.finetuning",
        "autotimm.models.stages",
        "autotimm.optim.param_groups",
        "autotimm.training.unfreezing",
    ),
    "autotimm.inference": ("autotimm.classifier.predictor",),
    "autotimm.auto.ensemble": ("autotimm.classifier.ensemble",),
    "autotimm.synthetic": ("autotimm.data.synthetic",),
    "autotimm.inputs": ("autotimm.prediction.inputs",),
    "autotimm.preprocess": ("autotimm.prediction.preprocess",),
    "autotimm.onnx_predictor": ("autotimm.prediction.onnx_predictor", "autotimm.prediction.metadata"),
    "autotimm.batching": ("autotimm.serving.batching",),
    "autotimm.service": ("autotimm.serving.app",),
    "autotimm.service_http": ("autotimm.serving.http",),
    "autotimm.calibration": ("autotimm.evaluation.calibration", "autotimm.evaluation.plots"),
    "autotimm.explanations": ("autotimm.evaluation.explanations",),
    "autotimm.labelled_data": ("autotimm.evaluation.labelled_data",),
    "autotimm.report_plots": ("autotimm.evaluation.plots",),
    "autotimm.quantization": ("autotimm.exporting.quantization",),
    "autotimm.validation": ("autotimm.checks", "autotimm.classifier.arguments"),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths in `MOVED` and loads each as an alias of its new modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path, else ``None`` (the real finders come first)."""
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """The default module object."""
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        """Warn once, then forward attribute look-ups to the new modules."""
        old, homes = module.__name__, MOVED[module.__name__]
        warnings.warn(
            f"`{old}` moved to `{homes[0]}`; the old path works until autotimm 0.3",
            DeprecationWarning,
            stacklevel=2,  # warnings skips importlib's frames: this names the import statement
        )

        def __getattr__(name: str) -> Any:
            for home in homes:
                new = importlib.import_module(home)
                if hasattr(new, name):
                    return getattr(new, name)
            raise AttributeError(f"module {old!r} (now {homes[0]!r}) has no attribute {name!r}")

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__doc__ = f"Moved to `{homes[0]}`."


def install() -> None:
    """Put the finder for the old paths on ``sys.meta_path`` (once, after the real finders)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
