"""Name registries shared by the optimizer and scheduler factories.

A `Registry` maps a lower-case name to a factory, in the style of timm's
``timm/models/_registry.py``: factories are added with a decorator, looked up by
name, and an unknown name fails with the list of accepted names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Registry", "import_from_path"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A mapping from names to factories with helpful errors.

    Args:
        kind: What the registry holds (``"optimizer"``, ``"scheduler"``), used in
            error messages.
        argument: The user-facing argument the names arrive through, used in
            error messages (for example ``"optimizer"``).

    Example:
        >>> reg = Registry("optimizer", argument="optimizer")
        >>> @reg.register("plain")
        ... def _plain(params, lr):
        ...     return None
        >>> reg.names()
        ['plain']
    """

    def __init__(self, kind: str, argument: str) -> None:
        self.kind = kind
        self.argument = argument
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Return a decorator that registers a factory under ``name``.

        Args:
            name: The name users pass; stored lower-case.

        Raises:
            ValueError: If ``name`` is already registered.
        """
        key = name.lower()

        def decorator(fn: F) -> F:
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered under ``name``.

        Raises:
            ValueError: If ``name`` is unknown; the message names the bad value,
                the closest matches and every accepted name.
        """
        key = name.lower() if isinstance(name, str) else None
        if key not in self._entries:
            close = difflib.get_close_matches(str(name).lower(), self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"Unknown {self.kind} {name!r} for argument `{self.argument}`.{hint} "
                f"Accepted names: {', '.join(self.names())}; or a dict "
                f'{{"class": "dotted.path.Class", "params": {{...}}}}.'
            )
        return self._entries[key]

    def names(self) -> list[str]:
        """Return every registered name, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries


def import_from_path(path: str, argument: str) -> Any:
    """Import an object from a dotted path such as ``"torch.optim.AdamW"``.

    Args:
        path: ``"package.module.Name"``.
        argument: The user-facing argument the path came from, for the error.

    Raises:
        ValueError: If the path is malformed, its module cannot be imported, or
            the module has no such attribute.
    """
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"`{argument}` class must be a dotted path like 'torch.optim.AdamW', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"`{argument}` class {path!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"`{argument}` class {path!r}: module {module_name!r} has no attribute {attr!r}") from err
