"""Metric configuration and per-stage metric collections."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchmetrics
import torchmetrics.classification
from torch import nn
from torchmetrics import Metric

from autotimm.registry import import_from_path

__all__ = ["BACKENDS", "STAGES", "MetricConfig", "MetricManager", "as_metric_configs", "default_metrics"]

#: Stages a metric can be computed in.
STAGES = ("train", "val", "test")
#: Where ``metric_class`` is looked up.
BACKENDS = ("torchmetrics", "custom")
#: Name parts of metrics where higher is better.


def _torchmetrics_names() -> list[str]:
    names = set()
    for module in (torchmetrics, torchmetrics.classification):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, Metric) and not name.startswith("_"):
                names.add(name)
    return sorted(names)


@dataclass
class MetricConfig:
    """One metric: which class, with which arguments, in which stages, logged how.

    Args:
        name: Key the metric is logged under, as ``{stage}/{name}``. Letters,
            digits, ``_`` and ``-`` only.
        backend: ``"torchmetrics"`` (look ``metric_class`` up in torchmetrics)
            or ``"custom"`` (``metric_class`` is a dotted path to a
            `torchmetrics.Metric` subclass).
        metric_class: Class name such as ``"Accuracy"``, ``"F1Score"``,
            ``"MulticlassAUROC"``, or a dotted path.
        params: Constructor arguments. ``num_classes`` (and ``task="multiclass"``)
            are filled in when the class takes them and they are absent.
        stages: Stages to compute it in, a subset of ``("train", "val", "test")``.
        log_on_step: Log the per-batch value.
        log_on_epoch: Log the value accumulated over the epoch.
        prog_bar: Show it in the progress bar.

    Raises:
        ValueError: At construction, for a bad name, backend, stage or class.

    Example:
        >>> MetricConfig(name="accuracy", metric_class="Accuracy", params={"task": "multiclass"})
        MetricConfig(name='accuracy', backend='torchmetrics', metric_class='Accuracy', ...)
    """

    name: str
    backend: str = "torchmetrics"
    metric_class: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    log_on_step: bool = False
    log_on_epoch: bool = True
    prog_bar: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"MetricConfig `name` must be letters, digits, '_' or '-', got {self.name!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"MetricConfig {self.name!r}: unknown `backend` {self.backend!r}; accepted: {', '.join(BACKENDS)}"
            )
        if not self.metric_class:
            raise ValueError(f"MetricConfig {self.name!r}: `metric_class` is required")
        self.stages = list(self.stages)
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(
                f"MetricConfig {self.name!r}: unknown `stages` {bad or self.stages!r}; accepted: {', '.join(STAGES)}"
            )
        if not (self.log_on_step or self.log_on_epoch):
            raise ValueError(f"MetricConfig {self.name!r} logs nothing: set log_on_step or log_on_epoch")
        if not isinstance(self.params, dict):
            raise ValueError(f"MetricConfig {self.name!r}: `params` must be a dict, got {self.params!r}")
        self.resolve_class()

    def __repr__(self) -> str:  # short, so that doctest output stays readable
        return f"MetricConfig(name={self.name!r}, backend={self.backend!r}, metric_class={self.metric_class!r}, ...)"

    def resolve_class(self) -> type[Metric]:
        """Return the metric class ``metric_class`` names.

        Raises:
            ValueError: If it cannot be found or is not a ``torchmetrics.Metric``.
        """
        if self.backend == "custom" or "." in self.metric_class:
            cls = import_from_path(self.metric_class, argument=f"MetricConfig {self.name!r} metric_class")
        else:
            cls = getattr(torchmetrics, self.metric_class, None) or getattr(
                torchmetrics.classification, self.metric_class, None
            )
            if cls is None:
                close = difflib.get_close_matches(self.metric_class, _torchmetrics_names(), n=3)
                raise ValueError(
                    f"MetricConfig {self.name!r}: torchmetrics has no metric_class {self.metric_class!r}"
                    + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                )
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise ValueError(
                f"MetricConfig {self.name!r}: metric_class {self.metric_class!r} is not a torchmetrics.Metric subclass"
            )
        return cls

    def build(self, num_classes: int, multi_label: bool = False) -> Metric:
        """Instantiate the metric, injecting ``num_classes``, ``num_labels`` and ``task`` when taken.

        Args:
            num_classes: Number of classes (labels, for multi-label tasks).
            multi_label: Default ``task`` to ``"multilabel"`` rather than ``"multiclass"``.

        Raises:
            ValueError: If the class rejects ``params``.
        """
        cls = self.resolve_class()
        accepted = set(inspect.signature(cls.__init__).parameters)
        if cls.__new__ is not object.__new__:  # torchmetrics' task wrappers take their arguments in __new__
            accepted |= set(inspect.signature(cls.__new__).parameters)
        params = dict(self.params)
        if "num_classes" in accepted:
            params.setdefault("num_classes", num_classes)
        if "num_labels" in accepted:
            params.setdefault("num_labels", num_classes)
        if "task" in accepted:
            params.setdefault("task", "multilabel" if multi_label else "multiclass")
        try:
            return cls(**params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"MetricConfig {self.name!r}: {self.metric_class}(**{params}) failed: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for hyper-parameters and checkpoints."""
        return asdict(self)


def _additive(cfg: MetricConfig) -> bool:
    """Whether one update with batches concatenated equals an update per batch: torchmetrics' own metrics."""
    return cfg.backend == "torchmetrics" and "." not in cfg.metric_class


def default_metrics(num_classes: int, multi_label: bool = False) -> list[MetricConfig]:
    """The metrics used when none are given.

    Accuracy (in the progress bar), top-5 accuracy when there are more than
    five classes (single-label only), and macro-averaged F1.
    """
    configs = [MetricConfig(name="accuracy", metric_class="Accuracy", prog_bar=True)]
    if num_classes > 5 and not multi_label:
        configs.append(MetricConfig(name="top5_accuracy", metric_class="Accuracy", params={"top_k": 5}))
    configs.append(MetricConfig(name="f1_macro", metric_class="F1Score", params={"average": "macro"}))
    return configs


def as_metric_configs(metrics: Any, num_classes: int, multi_label: bool = False) -> list[MetricConfig]:
    """Normalise the ``metrics`` argument: ``None`` (defaults), a manager, configs or their dict forms.

    Raises:
        ValueError: For anything else.
    """
    if metrics is None:
        return default_metrics(num_classes, multi_label)
    if isinstance(metrics, MetricManager):
        return list(metrics.configs)
    if isinstance(metrics, MetricConfig):
        metrics = [metrics]
    if not isinstance(metrics, Sequence) or isinstance(metrics, str):
        raise ValueError(f"`metrics` must be a MetricManager or a list of MetricConfig, got {metrics!r}")
    return [MetricConfig(**m) if isinstance(m, dict) else m for m in metrics]


class MetricManager(nn.Module):
    """Builds and holds one metric instance per configured stage.

    The instances live in `torch.nn.ModuleDict` s (``train_metrics``,
    ``val_metrics``, ``test_metrics``), so they move with the model to its device.

    Args:
        configs: The metric configurations.
        num_classes: Number of classes, injected into classification metrics.
        multi_label: Build multi-label metrics (``task="multilabel"``) by default.

    Raises:
        ValueError: For duplicate names or any invalid configuration.

    Example:
        >>> manager = MetricManager([MetricConfig(name="accuracy", metric_class="Accuracy")], num_classes=3)
        >>> list(manager.get_metrics("val"))
        ['accuracy']
    """

    def __init__(self, configs: Sequence[MetricConfig], num_classes: int, multi_label: bool = False) -> None:
        super().__init__()
        configs = list(configs)
        for cfg in configs:
            if not isinstance(cfg, MetricConfig):
                raise ValueError(f"`metrics` must hold MetricConfig objects, got {type(cfg).__name__}: {cfg!r}")
        names = [cfg.name for cfg in configs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate metric names: {duplicates}")
        self.configs = configs
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.train_metrics = nn.ModuleDict()
        self.val_metrics = nn.ModuleDict()
        self.test_metrics = nn.ModuleDict()
        for cfg in configs:
            for stage in cfg.stages:
                self.get_metrics(stage)[cfg.name] = cfg.build(num_classes, multi_label)
        # Batches waiting to update the metrics logged per epoch only, per stage (see `step_values`).
        self._pending: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {stage: [] for stage in STAGES}

    def get_metrics(self, stage: str) -> nn.ModuleDict:
        """Return the metric instances of ``stage`` ("train", "val" or "test").

        Raises:
            ValueError: For an unknown stage.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; accepted: {', '.join(STAGES)}")
        return getattr(self, f"{stage}_metrics")

    def items(self, stage: str) -> Iterator[tuple[MetricConfig, Metric]]:
        """Yield ``(config, metric)`` for every metric of ``stage``."""
        metrics = self.get_metrics(stage)
        for cfg in self.configs:
            if cfg.name in metrics:
                yield cfg, metrics[cfg.name]

    #: Batches buffered before the metrics logged per epoch only are updated, all at once (see `step_values`).
    UPDATE_EVERY = 32

    def step_values(
        self, stage: str, preds: torch.Tensor, target: torch.Tensor
    ) -> list[tuple[str, torch.Tensor, bool]]:
        """Update every metric of ``stage`` with a batch; return the per-batch values to log.

        The torchmetrics metrics logged per epoch only are updated once every
        `UPDATE_EVERY` batches with those batches concatenated (and by
        `epoch_values` with what is left): their states are sums and
        concatenations, so the epoch value is the same as with an update per
        batch, at a fraction of torchmetrics' per-call cost. The predictions
        are kept detached, on their device (no host sync).

        Returns:
            ``(key, value, prog_bar)`` for the metrics with ``log_on_step``: the
            key is ``"{stage}/{name}"``, with ``_step`` added when the metric is
            logged per epoch too (Lightning's naming).
        """
        values, deferred = [], False
        for cfg, metric in self.items(stage):
            if cfg.log_on_step:
                value = metric(preds, target)  # updates the epoch state too
                suffix = "_step" if cfg.log_on_epoch else ""
                values.append((f"{stage}/{cfg.name}{suffix}", value, cfg.prog_bar))
            elif _additive(cfg):
                deferred = True
            else:  # a custom metric's update may not be additive over batches
                metric.update(preds, target)
        if deferred:
            pending = self._pending[stage]
            pending.append((preds.detach(), target.detach()))
            if len(pending) >= self.UPDATE_EVERY:
                self.flush(stage)
        return values

    def flush(self, stage: str) -> None:
        """Update the metrics of ``stage`` with the batches `step_values` buffered."""
        pending, self._pending[stage] = self._pending[stage], []
        if not pending:
            return
        preds = torch.cat([p for p, _ in pending]) if len(pending) > 1 else pending[0][0]
        target = torch.cat([t for _, t in pending]) if len(pending) > 1 else pending[0][1]
        for cfg, metric in self.items(stage):
            if not cfg.log_on_step and _additive(cfg):
                metric.update(preds, target)

    def epoch_values(self, stage: str) -> list[tuple[str, torch.Tensor, bool]]:
        """Compute the epoch value of every metric of ``stage`` that saw a batch, then reset them all.

        Under DDP, ``compute`` gathers the states of every process, so each
        process gets the value over the whole epoch.

        Returns:
            ``(key, value, prog_bar)`` for the metrics with ``log_on_epoch``;
            ``_epoch`` is added to the key when the metric is logged per step too.
        """
        self.flush(stage)
        values = []
        for cfg, metric in self.items(stage):
            if cfg.log_on_epoch and metric.update_count > 0:
                suffix = "_epoch" if cfg.log_on_step else ""
                values.append((f"{stage}/{cfg.name}{suffix}", metric.compute(), cfg.prog_bar))
            metric.reset()
        return values
