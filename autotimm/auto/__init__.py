"""Time-budgeted model search: ``auto_fit`` picks a timm backbone and its hyper-parameters with Optuna.

Optuna is an optional dependency (``pip install 'autotimm[auto]'``), imported
only when ``auto_fit`` runs. Names are imported on first use.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and the API docs; at run time names load lazily
    from autotimm.auto.callbacks import OptunaPruning, TimeLimit
    from autotimm.auto.cross_validation import CrossValidationResult, cross_validate
    from autotimm.auto.presets import PRESETS, Preset, SearchSpace, list_presets, parse_time_limit
    from autotimm.auto.results import AutoFitResult
    from autotimm.auto.search import auto_fit
    from autotimm.classifier.ensemble import EnsembleClassifier

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "PRESETS",
    "AutoFitResult",
    "CrossValidationResult",
    "EnsembleClassifier",
    "OptunaPruning",
    "Preset",
    "SearchSpace",
    "TimeLimit",
    "auto_fit",
    "cross_validate",
    "list_presets",
    "parse_time_limit",
]
