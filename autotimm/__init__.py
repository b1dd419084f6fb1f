"""autotimm: train, evaluate and ship image classifiers on any timm backbone.

Names are imported on first use (see ``autotimm._lazy``): ``import autotimm``
is cheap, and the ONNX predictor works without torch, timm or Lightning.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and the API docs; at run time names load lazily
    from autotimm.auto import AutoFitResult, EnsembleClassifier, auto_fit
    from autotimm.backbone import BackboneConfig, PretrainedWeightsUnavailableError, create_backbone, list_backbones
    from autotimm.calibration import CalibrationResult
    from autotimm.classifier import ImageClassifier
    from autotimm.data import (
        ImageDataModule,
        list_augmentation_presets,
        list_builtin_datasets,
        load_builtin_dataset,
    )
    from autotimm.ema import EMA
    from autotimm.evaluation import EvaluationReport, evaluate
    from autotimm.explanations import Explanation, explain
    from autotimm.exporting import ExportParityError, ExportResult, export
    from autotimm.feature_cache import FeatureDataModule
    from autotimm.finetuning import UnfreezeSchedule, backbone_stages
    from autotimm.head import ClassificationHead
    from autotimm.logging_config import LoggingConfig
    from autotimm.metrics import MetricConfig, MetricManager, default_metrics
    from autotimm.onnx_predictor import OnnxPredictor, read_metadata
    from autotimm.optimizers import create_optimizer, list_optimizers, register_optimizer
    from autotimm.prediction import Prediction
    from autotimm.quantization import QuantizationReport, quantize_onnx
    from autotimm.schedulers import LinearWarmup, create_scheduler, list_schedulers, register_scheduler
    from autotimm.service import create_app, run_server
    from autotimm.synthetic import make_synthetic_dataset
    from autotimm.trainer import AutoTrainer, TunerConfig

__version__ = "0.1.0"

_EXPORTS: dict[str, list[str]] = {
    "autotimm.auto": ["AutoFitResult", "EnsembleClassifier", "auto_fit"],
    "autotimm.backbone": ["BackboneConfig", "PretrainedWeightsUnavailableError", "create_backbone", "list_backbones"],
    "autotimm.calibration": ["CalibrationResult"],
    "autotimm.classifier": ["ImageClassifier"],
    "autotimm.ema": ["EMA"],
    "autotimm.evaluation": ["EvaluationReport", "evaluate"],
    "autotimm.explanations": ["Explanation", "explain"],
    "autotimm.exporting": ["ExportParityError", "ExportResult", "export"],
    "autotimm.feature_cache": ["FeatureDataModule"],
    "autotimm.finetuning": ["UnfreezeSchedule", "backbone_stages"],
    "autotimm.onnx_predictor": ["OnnxPredictor", "read_metadata"],
    "autotimm.quantization": ["QuantizationReport", "quantize_onnx"],
    "autotimm.data": [
        "ImageDataModule",
        "list_augmentation_presets",
        "list_builtin_datasets",
        "load_builtin_dataset",
    ],
    "autotimm.head": ["ClassificationHead"],
    "autotimm.logging_config": ["LoggingConfig"],
    "autotimm.metrics": ["MetricConfig", "MetricManager", "default_metrics"],
    "autotimm.prediction": ["Prediction"],
    "autotimm.optimizers": ["create_optimizer", "list_optimizers", "register_optimizer"],
    "autotimm.service": ["create_app", "run_server"],
    "autotimm.schedulers": ["LinearWarmup", "create_scheduler", "list_schedulers", "register_scheduler"],
    "autotimm.synthetic": ["make_synthetic_dataset"],
    "autotimm.trainer": ["AutoTrainer", "TunerConfig"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "EMA",
    "AutoFitResult",
    "AutoTrainer",
    "BackboneConfig",
    "CalibrationResult",
    "ClassificationHead",
    "EnsembleClassifier",
    "EvaluationReport",
    "Explanation",
    "ExportParityError",
    "ExportResult",
    "FeatureDataModule",
    "ImageClassifier",
    "ImageDataModule",
    "LinearWarmup",
    "LoggingConfig",
    "MetricConfig",
    "MetricManager",
    "OnnxPredictor",
    "Prediction",
    "PretrainedWeightsUnavailableError",
    "QuantizationReport",
    "TunerConfig",
    "UnfreezeSchedule",
    "__version__",
    "auto_fit",
    "backbone_stages",
    "create_app",
    "create_backbone",
    "create_optimizer",
    "create_scheduler",
    "default_metrics",
    "evaluate",
    "explain",
    "export",
    "list_augmentation_presets",
    "list_backbones",
    "list_builtin_datasets",
    "list_optimizers",
    "list_schedulers",
    "load_builtin_dataset",
    "make_synthetic_dataset",
    "quantize_onnx",
    "read_metadata",
    "register_optimizer",
    "register_scheduler",
    "run_server",
]
