"""autotimm: train, evaluate and ship image classifiers on any timm backbone."""

from autotimm.backbone import BackboneConfig, PretrainedWeightsUnavailableError, create_backbone, list_backbones
from autotimm.classifier import ImageClassifier
from autotimm.head import ClassificationHead
from autotimm.logging_config import LoggingConfig
from autotimm.metrics import MetricConfig, MetricManager, default_metrics
from autotimm.optimizers import create_optimizer, list_optimizers, register_optimizer
from autotimm.schedulers import LinearWarmup, create_scheduler, list_schedulers, register_scheduler
from autotimm.synthetic import make_synthetic_dataset

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig",
    "ClassificationHead",
    "ImageClassifier",
    "LinearWarmup",
    "LoggingConfig",
    "MetricConfig",
    "MetricManager",
    "PretrainedWeightsUnavailableError",
    "__version__",
    "create_backbone",
    "create_optimizer",
    "create_scheduler",
    "default_metrics",
    "list_backbones",
    "list_optimizers",
    "list_schedulers",
    "make_synthetic_dataset",
    "register_optimizer",
    "register_scheduler",
]
