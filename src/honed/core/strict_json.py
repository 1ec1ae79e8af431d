"""Strict JSON: no NaN / Infinity tokens (they are not JSON and strict parsers refuse them).

A non-finite float becomes ``null`` and its place is recorded with the value it had, so a reader
learns why a number is missing (``{"arms.sgd.test_acc.mean": "nan"}``).
"""
import json
import math
from typing import Any


def strict(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``(copy of obj with non-finite floats as None, {dotted path: "nan" | "inf" | "-inf"})``;
    tuples become lists and numpy scalars / arrays plain Python values."""
    found: dict[str, str] = {}
    return _clean(obj, path, found), found


def _clean(obj: Any, path: str, found: dict[str, str]) -> Any:
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        found[path or "."] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, dict):
        return {k: _clean(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``strict(obj)[0]`` with ``allow_nan=False`` (so no NaN token can slip through)."""
    return json.dumps(strict(obj)[0], allow_nan=False, **kwargs)
