"""Optimization: optimizers and schedulers by name, and the parameter groups (weight decay, layer decay) they train."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.optim.optimizers import (
        OptimizerSpec,
        create_optimizer,
        get_optimizer,
        list_optimizers,
        register_optimizer,
    )
    from autotimm.optim.param_groups import parameter_groups
    from autotimm.optim.recipe import default_lr
    from autotimm.optim.schedulers import (
        LinearWarmup,
        SchedulerSpec,
        create_scheduler,
        get_scheduler,
        list_schedulers,
        metric_mode,
        register_scheduler,
    )

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "LinearWarmup",
    "OptimizerSpec",
    "SchedulerSpec",
    "create_optimizer",
    "create_scheduler",
    "default_lr",
    "get_optimizer",
    "get_scheduler",
    "list_optimizers",
    "list_schedulers",
    "metric_mode",
    "parameter_groups",
    "register_optimizer",
    "register_scheduler",
]
