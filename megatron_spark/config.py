"""Typed dataclass configs from YAML plus ``key=value`` overrides, checked field by field.

Every component owns a small frozen dataclass with a docstring under each field; a run's config is
a tree of them. :func:`load_config` builds that tree from a YAML file and command-line overrides
(``grpo.clip_high=0.28``, values parsed as YAML; a mapping value such as ``task.file={...}``
merges into the section it names, key by key, as a YAML file's section would) and rejects, with one line naming the key:

* an unknown key, at any depth (the message names the dotted key, the valid keys at that level
  and the closest one when there is a near miss),
* a value of the wrong type (the message names the expected type, or the valid choices of a
  ``Literal``), or a float that is nan or infinite,
* a dataclass's own ``__post_init__`` complaint (re-raised with the section's name).

:func:`dump_config` writes the resolved tree back as YAML (next to every run's outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from megatron_spark.errors import UserError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` checked (and minimally converted: int -> float, list -> tuple) against ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{source}: {key}={value!r} is invalid; choose {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:
            # An optional section (``FileTaskConfig | None``): its own error (an unknown key, a
            # bad value) says more than "wrong type".
            return _build(sections[0], value, key, source)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except UserError:
                continue
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: {key} must be a mapping of {tp.__name__} fields")
        return _build(tp, value, key, source)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{source}: {key}={value!r} has the wrong type; expected a list")
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: {key} must be a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept what Python reads as a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected true or false")
    if tp is int and isinstance(value, bool):
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected int")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is float and not math.isfinite(value):
        # Comparisons with nan are all false, so nan would slip through checks like `lr <= 0`.
        raise UserError(f"{source}: {key}={value!r} is invalid; expected a finite number")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
        raise UserError(
            f"{source}: unknown key '{where}{unknown[0]}'{hint}; valid keys"
            f"{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name, source)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (UserError, ValueError, TypeError) as e:
        message = str(e)
        # "keep_checkpoints=0 is invalid ..." from the train section reads "train.keep_checkpoints=0 ...".
        head = re.match(r"[A-Za-z_]\w*", message)
        if head and head.group(0) in fields:
            raise UserError(f"{source}: {prefix + '.' if prefix else ''}{message}") from None
        raise UserError(f"{source}: {prefix or cls.__name__}: {message}") from None


def _merge(base: Any, update: Any) -> Any:
    """``update`` laid over ``base``: mappings merge key by key (recursively), anything else
    replaces. So ``task.file={prompt_key: q}`` changes one key of the file section and keeps the
    rest, as the same lines in the YAML file would."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return update
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base.get(key), value)
    return merged


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if node.get(p) is None:  # absent, or ``null`` in the file: the override starts it
            node[p] = {}
        child = node[p]
        if not isinstance(child, dict):
            raise UserError(f"override {dotted}: '{p}' is not a section")
        node = child
    node[leaf] = _merge(node.get(leaf), value)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as YAML)."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' must look like key=value (e.g. grpo.clip_high=0.28)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        parsed.append((key.strip(), value))
    return parsed


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from the YAML file at ``path`` (None: all defaults) and ``overrides``."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of config sections at the top level")
        data = loaded or {}
    for key, value in parse_overrides(list(overrides)):
        _set_path(data, key, value)
    return _build(cls, data, "", source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config tree (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
