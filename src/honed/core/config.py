"""Experiment configs: frozen dataclasses with presets, type-checked overrides and a stable hash.

A config class is a ``@dataclass(frozen=True)`` subclass of :class:`ExperimentConfig`. Its field
defaults ARE the ``small`` preset; ``smoke()`` and ``full()`` return modified copies. Overrides come
from ``--set key=value`` strings (parsed as YAML scalars) or a YAML file, and are checked against the
field's annotated type before the run starts.
"""
import dataclasses
import hashlib
import json
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
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


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
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


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
