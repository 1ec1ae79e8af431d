"""JSON files with a checksum, for the pieces of a run (cached parts, seed results).

A file is ``{"format": "honed-json-v1", "sha256": <of the value>, "value": <the value>}``. Reading one
that is truncated, not JSON, or whose value no longer matches its checksum raises
:class:`~honed.core.errors.CorruptFileError` naming the file; the runner then moves it aside and
recomputes what it held. A plain JSON file (written before checksums) is read as its value.
"""
import hashlib
import json
from pathlib import Path
from typing import Any

from honed.core.atomic import atomic_write_json
from honed.core.errors import CorruptFileError
from honed.core.strict_json import strict

FORMAT = "honed-json-v1"


def value_digest(value: Any) -> str:
    """sha256 of the canonical strict JSON of ``value`` (sorted keys)."""
    text = json.dumps(strict(value)[0], sort_keys=True, allow_nan=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_checked_json(path: str | Path, value: Any, **info: Any) -> Path:
    """Write ``value`` with its checksum (and ``info`` beside it, e.g. ``runtime_s``), atomically."""
    clean = strict(value)[0]
    return atomic_write_json(path, {"format": FORMAT, "sha256": value_digest(clean), **info, "value": clean})


def read_checked_json(path: str | Path) -> Any:
    """The value of a file :func:`write_checked_json` wrote, its checksum verified."""
    return read_checked_entry(path)[0]


def read_checked_entry(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(value, info) of a file :func:`write_checked_json` wrote, its checksum verified; ``info`` holds
    what was written beside the value (``runtime_s``, ``source``), empty for a plain JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is corrupt ({err.__class__.__name__})", str(path)) from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        if value_digest(data.get("value")) != data.get("sha256"):
            raise CorruptFileError(f"{path} fails its checksum (damaged on disk)", str(path))
        info = {k: v for k, v in data.items() if k not in ("format", "sha256", "value")}
        return data["value"], info
    return data, {}


def move_aside(path: str | Path) -> Path:
    """Rename a damaged file to ``<name>.corrupt`` (kept for inspection, never read again)."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)
    return target
