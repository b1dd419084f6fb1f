"""Evaluation: reports with metrics and figures, calibration, explanations (Grad-CAM, attention rollout)."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.evaluation.calibration import (
        CalibrationResult,
        calibrate_model,
        expected_calibration_error,
        fit_temperature,
        reliability_bins,
    )
    from autotimm.evaluation.explanations import Explanation, explain
    from autotimm.evaluation.multi_label import MultiLabelEvaluationReport, evaluate_multi_label, multi_label_metrics
    from autotimm.evaluation.plots import reliability_diagram
    from autotimm.evaluation.report import EvaluationReport, classification_metrics, evaluate

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "CalibrationResult",
    "EvaluationReport",
    "Explanation",
    "MultiLabelEvaluationReport",
    "calibrate_model",
    "classification_metrics",
    "evaluate",
    "evaluate_multi_label",
    "expected_calibration_error",
    "explain",
    "fit_temperature",
    "multi_label_metrics",
    "reliability_bins",
    "reliability_diagram",
]
