"""Every random generator a training run owns, captured and restored so a resumed run continues
exactly where the killed one stopped.

A run owns torch's, NumPy's and Python's global generators, and any generator held by its callbacks,
its data iterable, its loss or its evaluation function (a noise callback's ``torch.Generator``, a
random-crop transform's, an augmentation loss's ``numpy.random.Generator`` or ``random.Random``, an
attack bound into an ``evaluate`` closure). They are found by walking attributes, ``functools.partial``
arguments, bound methods and closure cells of those objects (a few levels deep, not into modules or
tensors), named by their path (``callbacks[0].generator``), and saved beside the checkpoint. An object may also define
``state_dict()`` / ``load_state_dict()`` (JSON values) for other state that must survive a resume.
"""
import functools
import random
import types
from typing import Any, Iterator

import numpy as np
import torch

MAX_DEPTH = 4


def _walk(obj: Any, path: str, depth: int, seen: set[int]) -> Iterator[tuple[str, Any]]:
    if id(obj) in seen or depth > MAX_DEPTH:
        return
    seen.add(id(obj))
    if isinstance(obj, (torch.Generator, np.random.Generator, random.Random)):
        yield path, obj
        return
    if isinstance(obj, (torch.nn.Module, torch.Tensor, np.ndarray, str, bytes, int, float, bool, type(None))):
        return
    if isinstance(obj, functools.partial):
        children = [(f"{path}.args[{i}]", v) for i, v in enumerate(obj.args)]
        children += [(f"{path}.keywords[{k!r}]", v) for k, v in obj.keywords.items()]
    elif isinstance(obj, types.MethodType):
        children = [(f"{path}.__self__", obj.__self__)]
    elif isinstance(obj, types.FunctionType):  # a closure (an ``evaluate`` lambda holding an attack)
        cells = zip(obj.__code__.co_freevars, obj.__closure__ or ())
        children = [(f"{path}.<{name}>", cell.cell_contents) for name, cell in cells if _filled(cell)]
    elif isinstance(obj, (list, tuple)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in obj.items() if isinstance(k, (str, int))]
    elif hasattr(obj, "__dict__"):
        children = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        return
    for child_path, child in children:
        yield from _walk(child, child_path, depth + 1, seen)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def owned_generators(roots: dict[str, Any]) -> dict[str, Any]:
    """``{attribute path: generator}`` for every generator reachable from ``roots``."""
    seen: set[int] = set()
    found: dict[str, Any] = {}
    for name, root in roots.items():
        for path, gen in _walk(root, name, 0, seen):
            found.setdefault(path, gen)
    return found


def capture(roots: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, json_state)`` of the global generators, the generators owned by ``roots`` and the
    ``state_dict()`` of each root that has one."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    state: dict[str, Any] = {"numpy": _numpy_global_state(), "python": _python_state(random.getstate())}
    for path, gen in owned_generators(roots).items():
        if isinstance(gen, torch.Generator):
            tensors[f"rng.gen.{path}"] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            state.setdefault("numpy_generators", {})[path] = gen.bit_generator.state
        else:
            state.setdefault("python_generators", {})[path] = _python_state(gen.getstate())
    for name, root in roots.items():
        if callable(getattr(root, "state_dict", None)) and not isinstance(root, torch.nn.Module):
            state.setdefault("objects", {})[name] = root.state_dict()
    return tensors, state


def restore(roots: dict[str, Any], tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Put back what :func:`capture` saved (generators missing from the file are left as they are)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors, key=_cuda_index) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in state:
        random.setstate(_python_tuple(state["python"]))
    gens = owned_generators(roots)
    for path, gen in gens.items():
        if isinstance(gen, torch.Generator) and f"rng.gen.{path}" in tensors:
            gen.set_state(tensors[f"rng.gen.{path}"])
        elif isinstance(gen, np.random.Generator) and path in state.get("numpy_generators", {}):
            gen.bit_generator.state = state["numpy_generators"][path]
        elif isinstance(gen, random.Random) and path in state.get("python_generators", {}):
            gen.setstate(_python_tuple(state["python_generators"][path]))
    for name, value in state.get("objects", {}).items():
        if name in roots and callable(getattr(roots[name], "load_state_dict", None)):
            roots[name].load_state_dict(value)


def _cuda_index(key: str) -> int:
    return int(key.rsplit(".", 1)[1]) if key.startswith("rng.cuda.") else -1


def _numpy_global_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_tuple(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
