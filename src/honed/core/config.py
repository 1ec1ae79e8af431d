"""Experiment configs: frozen dataclasses with presets, type-checked overrides and a stable hash.

A config class is a ``@dataclass(frozen=True)`` subclass of :class:`ExperimentConfig`. Its field
defaults ARE the ``small`` preset; ``smoke()`` and ``full()`` return modified copies. Overrides come
from ``--set key=value`` strings (parsed as YAML scalars) or a YAML file, and are checked against the
field's annotated type before the run starts.
"""
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from honed.core.errors import ConfigError

PRESETS = ("smoke", "small", "full")
# Fields that choose where or how a run executes but not what it computes: kept out of the hash.
UNHASHED_FIELDS = ("seeds", "threads")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Base for experiment configs. ``seeds`` lists the seeds a run covers (one folder each);
    ``threads`` is the torch intra-op thread count while a seed runs (0 = torch's default). Tiny
    models run fastest on one thread, so experiments on digits-sized nets default it to 1."""

    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 0

    @classmethod
    def small(cls) -> "ExperimentConfig":
        """Default preset: <= 3 min on 2 CPU cores."""
        return cls()

    @classmethod
    def smoke(cls) -> "ExperimentConfig":
        """Test preset: <= 20 s. Subclasses shrink epochs/data here."""
        return dataclasses.replace(cls(), seeds=(0,))

    @classmethod
    def full(cls) -> "ExperimentConfig":
        """Paper-like scale; subclasses enlarge it. Defaults to ``small`` where nothing larger exists."""
        return cls()


def preset(config_cls: type[ExperimentConfig], name: str) -> ExperimentConfig:
    """The ``smoke`` / ``small`` / ``full`` config of an experiment's Config class (ConfigError otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return getattr(config_cls, name)()


def field_types(config_cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass's fields, by field name."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else [value]
        elem = args[0] if args else Any
        return tuple(coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(items))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ConfigError(f"{key} must be an integer below 2**63 in size, got {value!r}")
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            value = _number_from_text(value, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _number_from_text(text: str, key: str) -> Any:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {text!r}") from None


POSITIVE_NAMES = re.compile(r"^(lr|.*_lr|lr_(head|encoder|adapter|full)|max_lr)$")
COUNT_NAMES = re.compile(r"^(epochs|.*_epochs|steps|.*_steps|batch_size|.*_batch|.*_repeats|hidden|.*_hidden|widths|"
                         r"channels|.*_channels|iterations|rounds)$")
FRACTION_NAMES = re.compile(r"^.*(_fraction|_prob)$")


def check_common_fields(cfg: ExperimentConfig) -> None:
    """Rules every experiment config obeys, by field name: ``seeds`` non-empty, distinct, each in
    [0, 2**63); ``threads`` >= 0; learning rates (``lr``, ``*_lr``) > 0; counts (``*epochs``, ``*steps``,
    ``batch_size``, ``*_batch``, ``*_repeats``, widths such as ``hidden`` / ``channels``) >= 0 and widths >= 1;
    fractions (``*_fraction``, ``*_prob``) in [0, 1]. Raises ConfigError naming the field."""
    seeds = list(cfg.seeds)
    if not seeds:
        raise ConfigError("seeds must list at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    if any(s < 0 or s >= 2**63 for s in seeds):
        raise ConfigError(f"seeds must lie in [0, 2**63), got {seeds}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    for name, value in to_dict(cfg).items():
        _check_named_value(name, value)


def _check_named_value(name: str, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if POSITIVE_NAMES.match(name) and any(not v > 0 for v in numbers):
        raise ConfigError(f"{name} is a learning rate and must be > 0, got {value!r}")
    if COUNT_NAMES.match(name):
        low = 1 if isinstance(value, tuple) else 0
        if any(v < low for v in numbers):
            raise ConfigError(f"{name} must be >= {low}{' in every entry' if low else ''}, got {value!r}")
    if FRACTION_NAMES.match(name) and any(not 0 <= v <= 1 for v in numbers):
        raise ConfigError(f"{name} is a fraction and must lie in [0, 1], got {value!r}")


def validate_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """:func:`check_common_fields`, then the config's own ``validate()`` if it has one; returns ``cfg``."""
    check_common_fields(cfg)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def override(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """Return ``cfg`` with ``values`` applied; unknown keys and wrong types raise ConfigError."""
    types_ = field_types(type(cfg))
    changes = {}
    for key, value in values.items():
        if key not in types_:
            import difflib

            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(types_)}"
            raise ConfigError(f"unknown config key '{key}' for {type(cfg).__name__}{hint}")
        changes[key] = coerce(value, types_[key], key)
    return validate_config(dataclasses.replace(cfg, **changes))


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Parse ``["lr=0.1", "widths=[8,16]"]`` into a dict; values are YAML scalars or lists."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse the value of '{key}': {raw!r}") from None
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config overrides from ``path`` (ConfigError if it is not a mapping)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8); pass a YAML file") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """A config as a dict of field name -> value."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def from_dict(config_cls: type[ExperimentConfig], data: Mapping[str, Any]) -> ExperimentConfig:
    """A config of ``config_cls`` from a mapping, every key and value checked (via ``override``)."""
    return override(config_cls(), data)


def config_hash(cfg: ExperimentConfig) -> str:
    """Folder name for a config: 'default' for the defaults, else a hash of the non-default fields.

    Stable across processes and Python versions (sorted JSON, sha256); seeds are excluded because
    each seed has its own sub-folder.
    """
    default = type(cfg)()
    diff = {
        k: v for k, v in to_dict(cfg).items()
        if k not in UNHASHED_FIELDS and v != getattr(default, k)
    }
    if not diff:
        return "default"
    blob = json.dumps(diff, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
