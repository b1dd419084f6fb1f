"""Low-level argument checks shared by every subpackage; this module imports nothing of autotimm's.

Each check raises ``ValueError`` naming the argument, the bad value and what
is accepted.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["is_int", "require_number"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer: an ``int`` or a numpy integer, not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _show(bound: float) -> str:
    """A bound as the messages show it: ``1``, ``0.5``, ``65536``."""
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _describe_range(low: float | None, high: float | None, low_open: bool, high_closed: bool) -> str:
    """The accepted range in words: ``in [0, 1)``, ``>= 1``, ``<= 10``, or ``""`` for any value."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_show(low)}, {_show(high)}{']' if high_closed else ')'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_show(low)}"
    if high is not None:
        return f"{'<=' if high_closed else '<'} {_show(high)}"
    return ""


def _in_range(value: Any, low: float | None, high: float | None, low_open: bool, high_closed: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value <= high if high_closed else value < high)
    return above and below


def require_number(
    name: str,
    value: Any,
    low: float | None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    high_closed: bool = False,
    allow_none: bool = False,
    hint: str = "",
) -> None:
    """Raise unless ``value`` is a number (not a bool) in the range from ``low`` to ``high``.

    The range is ``[low, high)`` by default; ``low_open`` excludes ``low`` and
    ``high_closed`` includes ``high``. The message reads, for example,
    ``"`top_k` must be an int in [1, 3] (the model has 3 classes), got 4"``.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        low: Lower bound, included unless ``low_open``; ``None`` for none.
        high: Upper bound, excluded unless ``high_closed``; ``None`` for none.
        low_open: Exclude ``low`` itself.
        integer: Accept integers only (see [`is_int`][autotimm.checks.is_int]);
            otherwise integers and floats.
        high_closed: Include ``high`` itself.
        allow_none: Accept ``None`` as well.
        hint: A few words shown in brackets after the range, e.g. ``"e.g. 0.75"``.

    Raises:
        ValueError: Naming ``name``, the value and what is accepted.

    Example:
        >>> require_number("lr", 0.1, 0, low_open=True)
        >>> require_number("batch_size", 0, 1, integer=True)
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be an int >= 1, got 0
    """
    if value is None and allow_none:
        return
    is_number = is_int(value) or (not integer and isinstance(value, float))
    if is_number and _in_range(value, low, high, low_open, high_closed):
        return
    accepted = " ".join(
        part
        for part in (
            "an int" if integer else "a number",
            _describe_range(low, high, low_open, high_closed),
            f"({hint})" if hint else "",
            "or None" if allow_none else "",
        )
        if part
    )
    raise ValueError(f"`{name}` must be {accepted}, got {value!r}")
