"""autotimm: train, evaluate and ship image classifiers on any timm backbone.

Names are imported on first use (see ``autotimm._lazy``): ``import autotimm``
is cheap, and the ONNX predictor works without torch, timm or Lightning.
"""

from typing import TYPE_CHECKING

from autotimm._deprecated import install as _install_moved_paths
from autotimm._lazy import lazy_exports
from autotimm._version import __version__

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.auto import AutoFitResult, auto_fit
    from autotimm.classifier import EnsembleClassifier, HubUnavailableError, ImageClassifier, load_model
    from autotimm.data import (
        ImageDataModule,
        list_augmentation_presets,
        list_builtin_datasets,
        load_builtin_dataset,
        make_synthetic_dataset,
    )
    from autotimm.evaluation import CalibrationResult, EvaluationReport, Explanation, evaluate, explain
    from autotimm.exporting import (
        ExportParityError,
        ExportResult,
        PretrainedExport,
        QuantizationReport,
        export,
        export_pretrained,
        quantize_onnx,
    )
    from autotimm.models import (
        BackboneConfig,
        ClassificationHead,
        PretrainedWeightsUnavailableError,
        backbone_stages,
        create_backbone,
        list_backbones,
        load_torchvision_weights,
    )
    from autotimm.optim import (
        LinearWarmup,
        create_optimizer,
        create_scheduler,
        list_optimizers,
        list_schedulers,
        register_optimizer,
        register_scheduler,
    )
    from autotimm.prediction import OnnxPredictor, Prediction, read_metadata
    from autotimm.serving import create_app, gradio_app, run_server
    from autotimm.training import (
        EMA,
        AutoTrainer,
        FeatureDataModule,
        LoggingConfig,
        MetricConfig,
        MetricManager,
        TunerConfig,
        UnfreezeSchedule,
        default_metrics,
    )

__getattr__, __dir__ = lazy_exports(globals())
_install_moved_paths()

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
    "HubUnavailableError",
    "ImageClassifier",
    "ImageDataModule",
    "LinearWarmup",
    "LoggingConfig",
    "MetricConfig",
    "MetricManager",
    "OnnxPredictor",
    "Prediction",
    "PretrainedExport",
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
    "export_pretrained",
    "gradio_app",
    "list_augmentation_presets",
    "list_backbones",
    "list_builtin_datasets",
    "list_optimizers",
    "list_schedulers",
    "load_builtin_dataset",
    "load_model",
    "load_torchvision_weights",
    "make_synthetic_dataset",
    "quantize_onnx",
    "read_metadata",
    "register_optimizer",
    "register_scheduler",
    "run_server",
]
