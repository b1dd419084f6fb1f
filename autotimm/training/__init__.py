"""Training: the trainer, callbacks (EMA, unfreezing), tuners, metrics, diagnostics, mixing, feature cache, trackers."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.training.curves import TrainingHistory
    from autotimm.training.diagnostics import LoggingConfig
    from autotimm.training.distillation import Distillation
    from autotimm.training.ema import EMA
    from autotimm.training.feature_cache import FeatureDataModule
    from autotimm.training.loggers import TrackerConfig, create_loggers, log_report
    from autotimm.training.metrics import MetricConfig, MetricManager, default_metrics
    from autotimm.training.mixing import mix_batch
    from autotimm.training.trainer import AutoTrainer
    from autotimm.training.tuner import TunerConfig
    from autotimm.training.unfreezing import UnfreezeSchedule

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "EMA",
    "AutoTrainer",
    "Distillation",
    "FeatureDataModule",
    "LoggingConfig",
    "MetricConfig",
    "MetricManager",
    "TrackerConfig",
    "TrainingHistory",
    "TunerConfig",
    "UnfreezeSchedule",
    "create_loggers",
    "default_metrics",
    "log_report",
    "mix_batch",
]
