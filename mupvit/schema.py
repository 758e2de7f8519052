"""Typed dataclasses from plain YAML data: the one schema machinery of every file the project reads (experiment
configs, their launch sections, sweep files). Unknown keys and wrong types fail naming the dotted key, the value
and what is allowed; numbers must be finite.

A field may be declared `resumable(default)`: changing it does not change the optimisation (where the data lives,
how often to log, how many loader processes). The run's identity and the resume check both read that one mark.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from mupvit.errors import ConfigError, shown

# Integers beyond this are no config value (and overflow torch and numpy seeds).
MAX_INT = 2**63 - 1
RESUMABLE = "resumable"  # the field metadata key


def resumable(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that may change between a checkpoint and its resume (and does not name the run)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RESUMABLE: True})


def describe(tp: Any) -> str:
    """What a type accepts, in words ("one of 'sp', 'mup'", "an integer or null", ...)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping of " + ", ".join(f.name for f in dataclasses.fields(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", Any: "any value"}.get(
        tp, str(tp))


def coerce_value(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp` (dataclasses built from mappings), or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {shown(value)}, expected {describe(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce_value(key, value, arg)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [coerce_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of names to values, got {shown(value)}")
        _, value_tp = typing.get_args(tp)
        for name in value:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{key}: key {shown(name)} is not a name; use a non-empty string")
        return {name: coerce_value(f"{key}.{name}", v, value_tp) for name, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if abs(value) > MAX_INT:
            raise ConfigError(f"{key}: got {shown(value)}, expected an integer of at most {MAX_INT}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value}, expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from a mapping; absent keys take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        where = prefix or "config"
        listed = ", ".join(shown(k, 40).strip("'") for k in unknown[:8]) + (f" (+{len(unknown) - 8} more)"
                                                                          if len(unknown) > 8 else "")
        raise ConfigError(f"{where}: unknown key(s) {listed}; allowed: {', '.join(names)}")
    kwargs = {name: coerce_value(f"{prefix}.{name}" if prefix else name, data[name], hints[name])
              for name in names if name in data}
    try:
        return cls(**kwargs)
    except TypeError:  # a required field left out
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"{prefix or 'config'}: missing key(s) {', '.join(missing)}") from None


def leaf_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) of every leaf of a nested dataclass type, in declaration order; the entries of a
    mapping of names to dataclasses stand as `*` (evals.*.every)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaf_fields(tp, f"{key}.")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            yield from leaf_fields(typing.get_args(tp)[1], f"{key}.*.")
        else:
            yield key, f, tp


def resumable_keys(cls: type) -> frozenset[str]:
    """The dotted keys of `cls` declared `resumable` (patterns, where a mapping's entries stand as `*`)."""
    return frozenset(key for key, f, _ in leaf_fields(cls) if f.metadata.get(RESUMABLE))


def matches(key: str, patterns: frozenset[str]) -> bool:
    """Whether a dotted key is one of `patterns` (resumable_keys), a `*` standing for any one name."""
    parts = key.split(".")
    return any(len(p := pattern.split(".")) == len(parts) and all(a in ("*", b) for a, b in zip(p, parts, strict=True))
               for pattern in patterns)


def _dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_signs(obj: Any, positive: tuple[str, ...], non_negative: tuple[str, ...] = (), prefix: str = "") -> None:
    """Numbers of `obj` (dotted attribute paths) that must be > 0, and those that must be >= 0; None passes (an
    unset optional). Errors name `prefix` + the key."""
    for keys, allow_zero in ((positive, False), (non_negative, True)):
        for key in keys:
            value = _dotted(obj, key)
            if value is not None and ((value < 0) if allow_zero else (value <= 0)):
                raise ConfigError(f"{prefix}{key}: got {value}, expected a "
                                  f"{'non-negative' if allow_zero else 'positive'} number")


# A name that becomes one folder (a run name, a sweep name): no separators, no leading dot, so it cannot climb out
# of the folder it is made in.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_folder_name(key: str, value: str) -> None:
    """Refuse a name that would not stay one folder below its parent (`../x`, `a/b`, `.hidden`, empty)."""
    if not FOLDER_NAME.fullmatch(value) or len(value) > 200:
        raise ConfigError(f"{key}: got {shown(value)}, expected a plain name (letters, digits, '.', '_', '-', '+', "
                          "'='; no '/', not starting with '.'): it names a folder")
