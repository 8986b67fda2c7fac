"""One registry idiom for everything a recipe names: losses, models, datasets, runtimes, exporters."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from edgekd.errors import EdgeKDError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to components; unknown names fail with the closest match and the known names.

    >>> LOSSES = Registry("loss"); LOSSES.register("kd_soft")(SoftTargetKD)
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise EdgeKDError(self.unknown_message(name))
        return self._items[name]

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Look up `name` and call it with `kwargs` (a class or factory)."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._items)) or "(none)"
        close = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} known: {known}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
