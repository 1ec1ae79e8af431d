"""Name -> object registries filled by decorators (timm-style), with close-match errors."""
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from honed.core.errors import UnknownIdError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection filled by ``@registry.register(name)``; lookups of unknown names fail clearly.

    >>> models = Registry("model")
    >>> @models.register("mlp")
    ... def mlp(): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        # Let users type the numeric prefix or the slug of an experiment id alone.
        alias = [k for k in self._items if k.split("-", 1)[0] == name or k.split("-", 1)[-1] == name]
        if len(alias) == 1:
            return self._items[alias[0]]
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._items)) or 'none'}"
        raise UnknownIdError(f"unknown {self.kind} '{name}'{hint}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def import_submodules(package_name: str) -> None:
    """Import every module of a package so the registration decorators in them run.

    This is what lets a new model, dataset or experiment be added by writing one file: no central
    list to edit.
    """
    import importlib
    import pkgutil

    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
