"""Compact columns of a sample table: many strings in one buffer, integer labels in one array.

A folder of a million images listed as Python strings and ints costs about 150 bytes per
sample, and every loader worker that touches them copies the pages they live on (reference
counts are written on every access). [`StringArray`][autotimm.data.compact.StringArray] and
[`LabelArray`][autotimm.data.compact.LabelArray] keep them in numpy arrays instead: the
UTF-8 bytes of all strings plus one int64 offset each, and one int64 label each, which forked
workers share without copying.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["LabelArray", "StringArray"]

#: Strings gathered per numpy step in `StringArray.take` (bounds the temporary index arrays).
_CHUNK = 1 << 16


def _same_values(left: Sequence[Any], right: Any) -> bool:
    """List equality of two sequences (``right`` may be any sized iterable but a string)."""
    if isinstance(right, (str, bytes)) or not hasattr(right, "__len__") or not hasattr(right, "__iter__"):
        return False
    return len(left) == len(right) and all(a == b for a, b in zip(left, right, strict=True))


class StringArray(Sequence[str]):
    """An immutable sequence of strings stored as one UTF-8 byte array plus int64 offsets.

    Costs the strings' UTF-8 length plus 8 bytes per string, against about 60 bytes
    of object overhead for a Python ``str`` (and 100+ for a ``pathlib.Path``). Indexing
    returns ``str``; indexing with a slice, a list or an integer array returns a new
    `StringArray`. It compares equal to a list with the same strings.

    Names that are not valid UTF-8 (possible for file names on Linux) round-trip through
    Python's ``surrogateescape`` error handler, as ``os.listdir`` returns them.

    Args:
        strings: The strings, in order.

    Example:
        >>> names = StringArray(["cat/1.jpg", "dog/2.jpg"])
        >>> names[1], len(names), names == ["cat/1.jpg", "dog/2.jpg"]
        ('dog/2.jpg', 2, True)
    """

    __slots__ = ("_data", "_offsets")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = offsets

    @classmethod
    def _from_arrays(cls, data: np.ndarray, offsets: np.ndarray) -> StringArray:
        new = cls.__new__(cls)
        new._data, new._offsets = data, offsets
        return new

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays (the strings' UTF-8 bytes plus 8 per string)."""
        return int(self._data.nbytes + self._offsets.nbytes)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _string(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._data[start:end].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            size = len(self)
            position = int(index) + size if index < 0 else int(index)
            if not 0 <= position < size:
                raise IndexError(f"StringArray index {int(index)} out of range for {size} strings")
            return self._string(position)
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take(index)

    def take(self, indices: Sequence[int] | np.ndarray) -> StringArray:
        """The strings at ``indices``, in that order, as a new `StringArray`.

        Raises:
            IndexError: An index out of range.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"StringArray indices out of range for {len(self)} strings")
        indices = np.where(indices < 0, indices + len(self), indices)
        starts, ends = self._offsets[indices], self._offsets[indices + 1]
        lengths = ends - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        for first in range(0, len(indices), _CHUNK):  # gather in chunks: temporaries of O(chunk bytes)
            count = lengths[first : first + _CHUNK]
            base = offsets[first]
            positions = np.arange(int(count.sum()), dtype=np.int64)
            shift = np.repeat(starts[first : first + len(count)] - (offsets[first : first + len(count)] - base), count)
            data[base : base + len(positions)] = self._data[positions + shift]
        return StringArray._from_arrays(data, offsets)

    def __iter__(self) -> Iterator[str]:
        data = self._data.tobytes()
        offsets = self._offsets.tolist()
        for start, end in itertools.pairwise(offsets):
            yield data[start:end].decode("utf-8", "surrogateescape")

    def tolist(self) -> list[str]:
        """The strings as a Python list."""
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return np.array_equal(self._offsets, other._offsets) and np.array_equal(self._data, other._data)
        return _same_values(self, other)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence, like list

    def __add__(self, other: Iterable[str]) -> list[str]:
        return [*self, *other]

    def __radd__(self, other: Iterable[str]) -> list[str]:
        return [*other, *self]

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self[: min(3, len(self))])
        return f"StringArray([{shown}{', ...' if len(self) > 3 else ''}], n={len(self)})"


class LabelArray(Sequence[int]):
    """An immutable sequence of integer class indices in one int64 numpy array (8 bytes per label).

    Indexing returns Python ``int``; slices, lists and arrays of indices return a new
    `LabelArray`; ``np.asarray`` gives the array without a copy. It compares equal to
    a list with the same values.

    Args:
        labels: Integer class indices.

    Raises:
        ValueError: The labels are not one-dimensional integers.

    Example:
        >>> labels = LabelArray([0, 2, 1])
        >>> labels[1], labels == [0, 2, 1], np.asarray(labels).dtype.name
        (2, True, 'int64')
    """

    __slots__ = ("_values",)

    def __init__(self, labels: Iterable[int] | np.ndarray = ()) -> None:
        values = np.asarray(labels if isinstance(labels, (np.ndarray, Sequence)) else list(labels))
        if values.size == 0:
            values = values.reshape(0).astype(np.int64)
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
            raise ValueError(f"LabelArray needs one-dimensional integer labels, got {values.dtype} {values.shape}")
        self._values = values.astype(np.int64, copy=False)
        self._values.flags.writeable = False

    @property
    def values(self) -> np.ndarray:
        """The labels as a read-only int64 array."""
        return self._values

    @property
    def nbytes(self) -> int:
        """Bytes held by the array."""
        return int(self._values.nbytes)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return int(self._values[index])
        return LabelArray(self._values[np.asarray(index) if not isinstance(index, slice) else index])

    def __iter__(self) -> Iterator[int]:
        return iter(self._values.tolist())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self._values if dtype is None else self._values.astype(dtype, copy=False)
        return values.copy() if copy else values

    def tolist(self) -> list[int]:
        """The labels as a Python list of ints."""
        return self._values.tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LabelArray):
            return np.array_equal(self._values, other._values)
        return _same_values(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Iterable[int]) -> list[int]:
        return [*self, *other]

    def __radd__(self, other: Iterable[int]) -> list[int]:
        return [*other, *self]

    def __repr__(self) -> str:
        shown = ", ".join(str(v) for v in self._values[:6].tolist())
        return f"LabelArray([{shown}{', ...' if len(self) > 6 else ''}], n={len(self)})"
