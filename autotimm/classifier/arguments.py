"""`ImageClassifier`'s own argument checks, and the plain form of its hyper-parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autotimm.checks import require_number
from autotimm.optim.optimizers import check_optimizer_spec
from autotimm.optim.schedulers import check_scheduler_spec

__all__ = [
    "COMPILE_MODES",
    "check_class_names",
    "check_class_weights",
    "check_classifier_arguments",
    "check_compile",
    "plain_data",
]

#: The ``torch.compile`` modes ``ImageClassifier(compile=...)`` accepts (``True`` is ``"default"``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def check_compile(compile: Any) -> str | None:
    """The ``torch.compile`` mode of ``ImageClassifier(compile=...)``, or ``None`` for eager.

    Args:
        compile: ``False``, ``True`` (``"default"``) or one of `COMPILE_MODES`.

    Raises:
        ValueError: For anything else; the message names the argument, the value and what is accepted.
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    accepted = ", ".join(["False", "True", *(repr(m) for m in COMPILE_MODES)])
    raise ValueError(f"`compile` must be one of {accepted}; got {compile!r}")


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """Return the names as strings, or raise if there are not ``num_classes`` of them.

    Raises:
        ValueError: For the wrong number of names.
    """
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"`class_names` has {len(names)} names for num_classes={num_classes}")
    return names


def check_class_weights(class_weights: Sequence[float] | None, num_classes: int) -> list[float] | None:
    """Return the weights as floats, or raise unless they are ``num_classes`` numbers >= 0, not all 0.

    A weight of 0 is allowed: ``ImageDataModule(class_weights="balanced")`` gives it
    to a class without training images.

    Raises:
        ValueError: For the wrong number of weights, a negative one, or all zero.
    """
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if len(weights) != num_classes or any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"`class_weights` must be {num_classes} numbers >= 0, not all 0, got {list(class_weights)!r}")
    return weights


def check_classifier_arguments(
    num_classes: Any,
    lr: Any,
    weight_decay: Any,
    optimizer: Any,
    optimizer_kwargs: Any,
    scheduler: Any,
    scheduler_kwargs: Any,
    head_dropout: Any,
    label_smoothing: Any,
    mixup_alpha: Any,
    cutmix_alpha: Any,
) -> None:
    """Validate [`ImageClassifier`][autotimm.ImageClassifier]'s scalar and name arguments at construction.

    Raises:
        ValueError: Naming the argument, the value and what is accepted.
    """
    require_number(
        "num_classes", num_classes, 2, integer=True, allow_none=True, hint="a softmax classifier needs two classes"
    )
    require_number("lr", lr, 0, low_open=True)
    require_number("weight_decay", weight_decay, 0)
    require_number("head_dropout", head_dropout, 0, 1)
    require_number("label_smoothing", label_smoothing, 0, 1)
    require_number("mixup_alpha", mixup_alpha, 0)
    require_number("cutmix_alpha", cutmix_alpha, 0)
    # Fail now, with the accepted values, rather than at fit time.
    check_optimizer_spec(optimizer)
    check_scheduler_spec(scheduler, scheduler_kwargs)
    for name, value in (("optimizer_kwargs", optimizer_kwargs), ("scheduler_kwargs", scheduler_kwargs)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"`{name}` must be a dict or None, got {value!r}")


def plain_data(value: Any) -> Any:
    """Numpy scalars and arrays inside dicts, lists and tuples as plain Python values.

    Hyper-parameters are stored in checkpoints, which load with torch's
    ``weights_only=True``; that refuses numpy objects.

    Example:
        >>> plain_data({"lr": np.float64(0.1), "mean": np.array([0.5, 0.5])})
        {'lr': 0.1, 'mean': [0.5, 0.5]}
    """
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_data(item) for item in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
