"""autotimm: train, evaluate and ship image classifiers on any timm backbone."""

from autotimm.backbone import BackboneConfig, PretrainedWeightsUnavailableError, create_backbone, list_backbones
from autotimm.classifier import ImageClassifier
from autotimm.data import ImageDataModule, list_augmentation_presets, list_builtin_datasets, load_builtin_dataset
from autotimm.head import ClassificationHead
from autotimm.logging_config import LoggingConfig
from autotimm.metrics import MetricConfig, MetricManager, default_metrics
from autotimm.optimizers import create_optimizer, list_optimizers, register_optimizer
from autotimm.schedulers import LinearWarmup, create_scheduler, list_schedulers, register_scheduler
from autotimm.synthetic import make_synthetic_dataset
from autotimm.trainer import AutoTrainer, TunerConfig

__version__ = "0.1.0"

__all__ = [
    "AutoTrainer",
    "BackboneConfig",
    "ClassificationHead",
    "ImageClassifier",
    "ImageDataModule",
    "LinearWarmup",
    "LoggingConfig",
    "MetricConfig",
    "MetricManager",
    "PretrainedWeightsUnavailableError",
    "TunerConfig",
    "__version__",
    "create_backbone",
    "create_optimizer",
    "create_scheduler",
    "default_metrics",
    "list_augmentation_presets",
    "list_backbones",
    "list_builtin_datasets",
    "list_optimizers",
    "list_schedulers",
    "load_builtin_dataset",
    "make_synthetic_dataset",
    "register_optimizer",
    "register_scheduler",
]
