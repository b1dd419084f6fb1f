"""Learning-rate scheduler registry, factory and linear warm-up.

A scheduler factory returns a Lightning scheduler configuration: the
scheduler plus the ``interval`` it steps at. Per-epoch schedules (``step``,
``multistep``, ``exponential``, ``plateau``) step once per epoch; per-step
schedules (``cosine``, ``onecycle``, ``cosine_with_restarts``) span the
trainer's total number of optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler as TimmScheduler
from torch.optim import lr_scheduler

from autotimm.registry import Registry, import_from_path

__all__ = [
    "LinearWarmup",
    "SchedulerContext",
    "SchedulerSpec",
    "check_scheduler_spec",
    "create_scheduler",
    "get_scheduler",
    "list_schedulers",
    "metric_mode",
    "register_scheduler",
    "step_scheduler",
]

#: A scheduler name from `list_schedulers`, ``None``/``"none"``, or
#: ``{"class": "dotted.path.Scheduler", "params": {...}, "interval": "epoch"}``.
SchedulerSpec = str | dict[str, Any] | None

_SCHEDULERS = Registry("scheduler", argument="scheduler")


_HIGHER_IS_BETTER = ("acc", "f1", "auroc", "precision", "recall", "iou")


def metric_mode(name: str) -> str:
    """``"max"`` for accuracy-like logged names (``val/accuracy``, ``val/f1_macro``), else ``"min"``.

    Only the part after the last ``/`` is read, so ``val/loss`` is ``"min"``.

    Example:
        >>> metric_mode("val/f1_macro"), metric_mode("val/loss")
        ('max', 'min')
    """
    return "max" if any(k in name.rsplit("/", 1)[-1] for k in _HIGHER_IS_BETTER) else "min"


@dataclass(frozen=True)
class SchedulerContext:
    """What a scheduler factory knows about the training run.

    Attributes:
        total_steps: Optimizer steps the schedule spans (warm-up excluded);
            ``None`` when unknown (no trainer, or an endless run).
        steps_per_epoch: Optimizer steps in one epoch, or ``None``.
        epochs: Epochs the schedule spans (warm-up excluded), or ``None``.
    """

    total_steps: int | None
    steps_per_epoch: int | None
    epochs: int | None

    def require_steps(self, name: str) -> int:
        """Total steps, or a clear error when the run length is unknown."""
        if not self.total_steps or self.total_steps < 1:
            raise ValueError(
                f"scheduler {name!r} steps per batch and needs a finite training length: "
                "fit with a Trainer that sets max_epochs or max_steps"
            )
        return self.total_steps


SchedulerFactory = Callable[..., dict[str, Any]]


def register_scheduler(name: str) -> Callable[[SchedulerFactory], SchedulerFactory]:
    """Register a scheduler factory under ``name``.

    The factory is called as ``factory(optimizer, context, **scheduler_kwargs)``
    with a `SchedulerContext` and returns a Lightning scheduler config:
    ``{"scheduler": ..., "interval": "step" | "epoch"}`` plus ``"monitor"``
    for metric-driven schedulers.
    """
    return _SCHEDULERS.register(name)


def list_schedulers() -> list[str]:
    """Return every scheduler name that ``scheduler=`` accepts (``"none"`` included)."""
    return _SCHEDULERS.names()


def get_scheduler(name: str | None) -> SchedulerFactory:
    """Return the factory registered under ``name`` (``None`` means ``"none"``).

    Raises:
        ValueError: For an unknown name; the message lists the accepted names.
    """
    return _SCHEDULERS.get(name or "none")


def check_scheduler_spec(scheduler: Any, scheduler_kwargs: dict[str, Any] | None = None) -> None:
    """Check ``scheduler`` and its warm-up options early, before any optimizer exists.

    Raises:
        ValueError: For an unknown name (listing the accepted ones), another
            type, or both ``warmup_epochs`` and ``warmup_steps``.
    """
    if isinstance(scheduler, str):
        get_scheduler(scheduler)
    elif not (scheduler is None or isinstance(scheduler, dict)):
        raise ValueError(
            f"`scheduler` must be a name from list_schedulers(), None or a {{'class': ...}} dict, got {scheduler!r}"
        )
    if isinstance(scheduler_kwargs, dict) and {"warmup_steps", "warmup_epochs"} <= scheduler_kwargs.keys():
        raise ValueError("`scheduler_kwargs` takes warmup_epochs or warmup_steps, not both")


@register_scheduler("none")
def _none(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    return {}


@register_scheduler("cosine")
def _cosine(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("T_max", ctx.require_steps("cosine"))
    return {"scheduler": lr_scheduler.CosineAnnealingLR(optimizer, **kwargs), "interval": "step"}


@register_scheduler("onecycle")
def _onecycle(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("max_lr", [group["lr"] for group in optimizer.param_groups])
    kwargs.setdefault("total_steps", ctx.require_steps("onecycle"))
    # Momentum cycling needs a momentum or betas hyper-parameter (Adagrad has neither).
    kwargs.setdefault("cycle_momentum", any(k in optimizer.defaults for k in ("momentum", "betas")))
    return {"scheduler": lr_scheduler.OneCycleLR(optimizer, **kwargs), "interval": "step"}


@register_scheduler("step")
def _step(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("step_size", max(1, (ctx.epochs or 90) // 3))
    kwargs.setdefault("gamma", 0.1)
    return {"scheduler": lr_scheduler.StepLR(optimizer, **kwargs), "interval": "epoch"}


@register_scheduler("multistep")
def _multistep(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    epochs = ctx.epochs or 90
    kwargs.setdefault("milestones", sorted({max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))}))
    kwargs.setdefault("gamma", 0.1)
    return {"scheduler": lr_scheduler.MultiStepLR(optimizer, **kwargs), "interval": "epoch"}


@register_scheduler("exponential")
def _exponential(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("gamma", 0.9)
    return {"scheduler": lr_scheduler.ExponentialLR(optimizer, **kwargs), "interval": "epoch"}


@register_scheduler("plateau")
def _plateau(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    monitor = kwargs.pop("monitor", "val/loss")
    kwargs.setdefault("mode", metric_mode(monitor))
    kwargs.setdefault("factor", 0.1)
    kwargs.setdefault("patience", 10)
    scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}


@register_scheduler("cosine_with_restarts")
def _cosine_with_restarts(optimizer: torch.optim.Optimizer, ctx: SchedulerContext, **kwargs: Any) -> dict[str, Any]:
    total = ctx.require_steps("cosine_with_restarts")
    cycles = kwargs.pop("num_cycles", 3)
    kwargs.setdefault("t_initial", max(1, math.ceil(total / cycles)))
    kwargs.setdefault("cycle_limit", math.ceil(total / kwargs["t_initial"]) + 1)
    scheduler = CosineLRScheduler(optimizer, t_in_epochs=False, **kwargs)
    return {"scheduler": scheduler, "interval": "step"}


def _custom(spec: dict[str, Any], optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - {"class", "params", "interval", "monitor"}
    if "class" not in spec or unknown:
        raise ValueError(
            "`scheduler` dict must have the key 'class' and optionally 'params', 'interval', 'monitor', "
            f"got {sorted(spec)}"
        )
    cls = import_from_path(spec["class"], argument="scheduler")
    scheduler = cls(optimizer, **{**spec.get("params", {}), **kwargs})
    default_interval = "epoch"
    if isinstance(scheduler, TimmScheduler) and not scheduler.t_in_epochs:
        default_interval = "step"
    interval = spec.get("interval", default_interval)
    if interval not in ("step", "epoch"):
        raise ValueError(f"`scheduler` interval must be 'step' or 'epoch', got {interval!r}")
    config = {"scheduler": scheduler, "interval": interval}
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau) or "monitor" in spec:
        config["monitor"] = spec.get("monitor", "val/loss")
    return config


class LinearWarmup:
    """Linear learning-rate warm-up, handing over to the main schedule.

    For the first ``warmup_steps`` optimizer steps the learning rate of each
    group rises linearly, ``target * (i + 1) / (warmup_steps + 1)`` at step
    ``i``, then it is set to exactly ``target``, the learning rate the main
    schedule starts from, and the warm-up leaves the optimizer alone. While it
    runs, `step_scheduler` holds the main schedule back.

    Torch's ``SequentialLR`` cannot do this: it mixes neither per-epoch with
    per-step schedules nor ``ReduceLROnPlateau`` or timm schedulers.

    Args:
        optimizer: The optimizer, after the main scheduler was built on it.
        warmup_steps: Number of optimizer steps to warm up for (>= 1).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int) -> None:
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.target_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    @property
    def finished(self) -> bool:
        """Whether warm-up is over and the main schedule owns the learning rate."""
        return self.last_step >= self.warmup_steps

    def _apply(self) -> None:
        factor = min(1.0, (self.last_step + 1) / (self.warmup_steps + 1)) if not self.finished else 1.0
        for group, target in zip(self.optimizer.param_groups, self.target_lrs, strict=True):
            group["lr"] = target * factor

    def step(self) -> None:
        """Advance by one optimizer step."""
        if self.finished:
            return
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Return the warm-up state for checkpoints."""
        return {"warmup_steps": self.warmup_steps, "target_lrs": list(self.target_lrs), "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by `state_dict`."""
        self.warmup_steps = state_dict["warmup_steps"]
        self.target_lrs = list(state_dict["target_lrs"])
        self.last_step = state_dict["last_step"]


def _warmup_steps(kwargs: dict[str, Any], steps_per_epoch: int | None) -> int:
    epochs, steps = kwargs.pop("warmup_epochs", None), kwargs.pop("warmup_steps", None)
    if epochs is not None and steps is not None:
        raise ValueError("`scheduler_kwargs` takes warmup_epochs or warmup_steps, not both")
    for key, value in (("warmup_epochs", epochs), ("warmup_steps", steps)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"`scheduler_kwargs` {key} must be a non-negative int, got {value!r}")
    if epochs:
        if not steps_per_epoch:
            raise ValueError("warmup_epochs needs a known number of steps per epoch: fit with a Trainer")
        return epochs * steps_per_epoch
    return steps or 0


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler: SchedulerSpec = "cosine",
    scheduler_kwargs: dict[str, Any] | None = None,
    total_steps: int | float | None = None,
    steps_per_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """Build the Lightning scheduler configs for ``optimizer``.

    Args:
        optimizer: The optimizer to schedule.
        scheduler: A name from `list_schedulers`, ``None``/``"none"``, or
            ``{"class": "torch.optim.lr_scheduler.X", "params": {...}}`` with
            optional ``"interval"`` (default ``"epoch"``) and ``"monitor"``.
        scheduler_kwargs: Constructor arguments, plus ``warmup_epochs`` or
            ``warmup_steps`` for a linear warm-up before the schedule.
        total_steps: Optimizer steps in the whole run (``inf`` or ``None`` when
            unknown).
        steps_per_epoch: Optimizer steps per epoch, when known.

    Returns:
        A list of Lightning scheduler configs: empty for no scheduling, the main
        schedule, and a per-step `LinearWarmup` last when warm-up is on.

    Raises:
        ValueError: For an unknown name, bad arguments, or a warm-up as long as
            the whole run.
    """
    kwargs = dict(scheduler_kwargs or {})
    warmup = _warmup_steps(kwargs, steps_per_epoch)
    known_total = int(total_steps) if total_steps is not None and math.isfinite(total_steps) else None
    if warmup and known_total is not None and warmup >= known_total:
        raise ValueError(f"warm-up of {warmup} steps is not shorter than the whole run of {known_total} steps")
    main_steps = known_total - warmup if known_total is not None else None
    epochs = main_steps // steps_per_epoch if main_steps is not None and steps_per_epoch else None
    ctx = SchedulerContext(total_steps=main_steps, steps_per_epoch=steps_per_epoch, epochs=epochs)

    if isinstance(scheduler, dict):
        label = scheduler.get("class")
        build = lambda: _custom(scheduler, optimizer, kwargs)  # noqa: E731
    elif scheduler is None or isinstance(scheduler, str):
        label = scheduler or "none"
        factory = get_scheduler(label)
        build = lambda: factory(optimizer, ctx, **kwargs)  # noqa: E731
    else:
        raise ValueError(f"`scheduler` must be a name, a dict or None, got {type(scheduler).__name__}")
    try:
        main = build()
    except TypeError as err:
        raise ValueError(f"scheduler {label!r} rejected `scheduler_kwargs` {sorted(kwargs)}: {err}") from err

    configs = [main] if main else []
    if warmup:
        configs.append({"scheduler": LinearWarmup(optimizer, warmup), "interval": "step"})
    return configs


def step_scheduler(
    scheduler: Any,
    metric: Any,
    global_step: int,
    current_epoch: int,
    warmup: LinearWarmup | None = None,
) -> None:
    """Step one scheduler the way its kind requires.

    Called from `ImageClassifier.lr_scheduler_step`. Torch schedulers get
    ``step()`` (``step(metric)`` for ``ReduceLROnPlateau``); timm schedulers get
    ``step_update(num_updates)`` or ``step(epoch)``; the main schedule waits
    while a warm-up runs and then counts from zero.

    Args:
        scheduler: The scheduler to step.
        metric: The monitored value, for metric-driven schedulers.
        global_step: Optimizer steps taken so far.
        current_epoch: The epoch in progress (0-based).
        warmup: The run's warm-up, if any.
    """
    if isinstance(scheduler, LinearWarmup):
        scheduler.step()
        return
    offset = warmup.warmup_steps if warmup is not None else 0
    if global_step <= offset:
        return  # still warming up
    if isinstance(scheduler, TimmScheduler):
        if scheduler.t_in_epochs:
            # Epochs are of equal length, so this many epoch ends fell within the warm-up.
            warmup_epochs = offset * (current_epoch + 1) // global_step
            scheduler.step(epoch=current_epoch + 1 - warmup_epochs, metric=metric)
        else:
            scheduler.step_update(num_updates=global_step - offset, metric=metric)
    elif metric is None:
        scheduler.step()
    else:
        scheduler.step(metric)
