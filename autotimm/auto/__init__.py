"""Time-budgeted model search: ``auto_fit`` picks a timm backbone and its hyper-parameters with Optuna.

Optuna is an optional dependency (``pip install 'autotimm[auto]'``), imported
only when ``auto_fit`` runs. Names are imported on first use.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and the API docs; at run time names load lazily
    from autotimm.auto.callbacks import OptunaPruning, TimeLimit
    from autotimm.auto.ensemble import EnsembleClassifier
    from autotimm.auto.presets import PRESETS, Preset, SearchSpace, list_presets, parse_time_limit
    from autotimm.auto.results import AutoFitResult
    from autotimm.auto.search import auto_fit

_EXPORTS: dict[str, list[str]] = {
    "autotimm.auto.callbacks": ["OptunaPruning", "TimeLimit"],
    "autotimm.auto.ensemble": ["EnsembleClassifier"],
    "autotimm.auto.presets": ["PRESETS", "Preset", "SearchSpace", "list_presets", "parse_time_limit"],
    "autotimm.auto.results": ["AutoFitResult"],
    "autotimm.auto.search": ["auto_fit"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "PRESETS",
    "AutoFitResult",
    "EnsembleClassifier",
    "OptunaPruning",
    "Preset",
    "SearchSpace",
    "TimeLimit",
    "auto_fit",
    "list_presets",
    "parse_time_limit",
]
