"""Training state on disk without pickle: the structure as JSON, the tensors as safetensors.

Unpickling a file runs whatever code its author put in it, so a checkpoint downloaded from
someone else must never be read with ``pickle`` or ``torch.load(weights_only=False)``. A train
state (optimizer moments, RNG states, data position, queues of text items) is a tree of dicts,
lists, tuples, plain scalars, tensors and numpy arrays; :func:`save` writes it as

* ``NAME.json``: the tree, with each tensor replaced by ``{"__tensor__": key}`` and the types JSON
  lacks tagged (``{"__tuple__": [...]}``, ``{"__items__": [[k, v], ...]}`` for a dict whose keys
  are not all strings, ``{"__ndarray__": key, "dtype": ..., "shape": [...]}``);
* ``NAME.safetensors``: the tensors by key (a numpy array as its raw bytes, so that every dtype
  round-trips bit for bit, e.g. numpy's uint32 Mersenne-Twister state).

Floats go through ``repr`` (exact); nan and inf are written as JSON's common extension.
:func:`load` refuses a damaged or foreign file with a :class:`UserError` naming it.

:func:`load_legacy` reads the ``.pt`` train states written before this format with
``torch.load(weights_only=True)`` and an allow-list of the numpy types those held; a file that
needs anything else is refused, not executed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from megatron_spark.errors import UserError

_TAGS = ("__tensor__", "__tuple__", "__items__", "__ndarray__")


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        raw = np.ascontiguousarray(obj)
        tensors[key] = torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8)
        return {"__ndarray__": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    # A new kind of state must be turned into plain values by its owner (a to_dict()).
    raise TypeError(f"train state holds a {type(obj).__name__}, which safe_state cannot store")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return _tensor(tensors, obj["__tensor__"], where)
    if "__ndarray__" in obj:
        raw = _tensor(tensors, obj["__ndarray__"], where)
        try:
            return np.frombuffer(raw.numpy().tobytes(), dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
        except (TypeError, ValueError, KeyError) as e:
            raise UserError(f"{where}: array {obj['__ndarray__']} is damaged ({e})") from None
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {
            _hashable(_decode(k, tensors, where)): _decode(v, tensors, where) for k, v in obj["__items__"]
        }
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key


def _tensor(tensors: dict[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise UserError(f"{where}: refers to tensor {key!r}, which its .safetensors file lacks")
    return tensors[key]


def paths(stem: Path) -> tuple[Path, Path]:
    """The two files of the state saved at ``stem`` (``stem`` + .json / .safetensors)."""
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def save(state: Any, stem: Path) -> None:
    """Write ``state`` as ``stem.json`` + ``stem.safetensors`` (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    doc = _encode(state, tensors)
    js, st = paths(stem)
    # safetensors refuses views of one storage and non-contiguous tensors: copy only those.
    seen: set[int] = set()
    for key, t in tensors.items():
        if not t.is_contiguous() or t.untyped_storage().data_ptr() in seen:
            t = tensors[key] = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
    try:
        save_file(tensors, str(st))
    except SafetensorError as e:
        # safetensors reports a failed write (a full disk) as its own error type: give it back
        # its errno and file name so that it reads like any other write error.
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(st)) from e
    with open(js, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())


def load(stem: Path) -> Any:
    """The state :func:`save` wrote at ``stem``; a damaged file is a :class:`UserError`."""
    js, st = paths(stem)
    for p in (js, st):
        if not p.is_file():
            raise UserError(f"{p}: missing (incomplete checkpoint)")
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{js}: damaged train state ({e})") from None
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{st}: truncated or corrupt train state ({e})") from None
    return _decode(doc, tensors, str(js))


def check(stem: Path) -> None:
    """Raise :class:`UserError` if the state at ``stem`` is missing or damaged (headers and JSON
    only: safetensors checks that its file covers every tensor the header lists)."""
    js, st = paths(stem)
    for p in (js, st):
        if not p.is_file():
            raise UserError(f"{p}: missing (incomplete checkpoint)")
    try:
        json.loads(js.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{js}: damaged train state ({e})") from None
    try:
        with safe_open(str(st), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise UserError(f"{st}: truncated or corrupt train state ({e})") from None


LEGACY_SAFE_GLOBALS = (
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    np._core.multiarray._reconstruct,
)
"""What the ``.pt`` train states of earlier versions hold besides tensors and plain containers:
numpy's RNG state (an ndarray of uint32). Rebuilding those runs no user code."""


def load_legacy(path: Path) -> Any:
    """A ``.pt`` train state of an earlier version, read without running code from the file."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in LEGACY_SAFE_GLOBALS}
    try:
        # Lists the classes and functions the pickle would call, without calling any.
        foreign = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
    except Exception as e:  # noqa: BLE001 (zip and pickle parsers raise many kinds)
        raise UserError(f"{path}: truncated or corrupt train state ({type(e).__name__}: {e})") from None
    if foreign:
        raise UserError(
            f"{path}: refused: its pickle would call {', '.join(foreign[:3])}, which a train state "
            f"never holds (a checkpoint is read as tensors and plain values only)"
        )
    try:
        with torch.serialization.safe_globals(list(LEGACY_SAFE_GLOBALS)):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, EOFError...)
        raise UserError(f"{path}: truncated or corrupt train state ({type(e).__name__}: {e})") from None
