"""User-facing errors: each prints as one line and makes the CLI exit with code 2.

Components raise these (they subclass ``ValueError`` / ``ImportError`` where that is what a user
would catch) so that a bad input gives one clear sentence instead of a traceback deep in torch.
"""
import importlib
import math
from types import ModuleType


class HonedError(Exception):
    """Base of every error honed raises on purpose; ``str(err)`` is one line meant for a person."""


class ConfigError(HonedError, ValueError):
    """A config key that does not exist, a value of the wrong type, or an inconsistent setting."""


class UnknownIdError(HonedError, KeyError):
    """A registry lookup (experiment, dataset, model) for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputError(HonedError, ValueError):
    """A tensor or argument outside the domain a component accepts (shape, range, NaN, sign)."""


class MissingExtraError(HonedError, ImportError):
    """An optional engine is not installed; the message names the pip install that fixes it."""


class StoreError(HonedError, RuntimeError):
    """A run directory, result or checkpoint that is corrupt or was written by something else."""


class CorruptFileError(StoreError):
    """A file honed wrote that is damaged (unreadable, truncated, failing its checksum): the runner
    names it in one line and recomputes what it held. ``path`` is the damaged file."""

    def __init__(self, message: str, path: "str | None" = None) -> None:
        super().__init__(message)
        self.path = path


def require_extra(module: str, extra: str, install: str | None = None) -> ModuleType:
    """Import ``module`` lazily, or raise MissingExtraError naming ``pip install 'honed[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        how = install or f"pip install 'honed[{extra}]'"
        raise MissingExtraError(
            f"this needs the optional package '{module}' ({err.__class__.__name__}: {err}); "
            f"install it with: {how}"
        ) from None


def check_number(value: float, name: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a float or raise InputError when it is not a finite number >= (or >)
    ``minimum``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    bad = number <= minimum if strict else number < minimum
    if math.isnan(number) or math.isinf(number) or bad:
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return number


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Return ``value`` or raise InputError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
