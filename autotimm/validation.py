"""Low-level argument checks shared by every subpackage; this module imports nothing of autotimm's.

Each check raises ``ValueError`` naming the argument, the bad value and what
is accepted.
"""

from __future__ import annotations

from typing import Any

__all__ = ["require_number"]


def require_number(
    name: str, value: Any, low: float, high: float | None = None, low_open: bool = False, integer: bool = False
) -> None:
    """Raise unless ``value`` is a number (not a bool) in ``[low, high)``, or ``(low, high)`` with ``low_open``.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        low: Lower bound, included unless ``low_open``.
        high: Upper bound, excluded; ``None`` for none.
        low_open: Exclude ``low`` itself.
        integer: Accept ints only.

    Raises:
        ValueError: Naming ``name``, the value and the accepted range.
    """
    kind = int if integer else (int, float)
    is_number = isinstance(value, kind) and not isinstance(value, bool)
    ok = is_number and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        accepted = f"in [{low:g}, {high:g})" if high is not None else f"{'>' if low_open else '>='} {low:g}"
        raise ValueError(f"`{name}` must be {'an int' if integer else 'a number'} {accepted}, got {value!r}")
