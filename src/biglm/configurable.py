"""Typed dataclass configs: build from dicts / YAML, apply dotted command-line overrides, save.

Resolution order is defaults < YAML file < command line. Unknown keys are errors that name the key
and the nearest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from biglm.errors import BiglmError, ConfigError, check
from biglm.files import atomic_write_text
from biglm.textio import decode_utf8

T = TypeVar("T")


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 4, 4


def _shown(value: Any) -> str:
    """``repr(value)`` cut short (a value from a file may be huge, or a YAML alias nested without end)."""
    return _REPR.repr(value)


def _nearest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}={_shown(value)}: expected one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {_shown(value)}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}={_shown(value)}: expected a list")
        if origin is tuple:
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in value)
            if len(args) != len(value):
                raise ConfigError(f"{where}={_shown(value)}: expected {len(args)} values")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return [_coerce(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={_shown(value)}: expected a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}={_shown(value)}: expected true or false")
    if tp in (int, float, str):
        if tp is str and not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{where}={_shown(value)}: expected str")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if tp is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            out = tp(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}={_shown(value)}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(out):
            raise ConfigError(f"{where}={_shown(value)}: expected a finite number")
        return out
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` naming the nearest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{str(path)[:80]}'{_nearest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a (nested) dataclass."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, list | tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), str(path))) or {}
    except BiglmError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (ValueError, RecursionError) as e:  # an over-long integer, nesting deeper than the parser goes
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML for a config ({msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


_OPTION = re.compile(r"--[A-Za-z_][\w-]*(\.[\w-]+)+(=.*)?$")


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type | None = None,
                    allowed: Iterable[str] = ()) -> dict[str, Any]:
    """Apply ``--section.field value`` (or ``--section.field=value``) pairs onto a nested dict.

    Values are parsed as YAML scalars so numbers and booleans keep their types; when ``cls`` is given,
    each dotted key is checked against its fields first (``allowed`` lists extra dotted keys such as
    ``model.preset``). Errors name the option as typed.
    """
    data = dict(data)
    i = 0
    while i < len(overrides):
        item = overrides[i]
        if not item.startswith("--"):
            raise ConfigError(f"unexpected argument '{item}': overrides look like --section.field value")
        key = item[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"{item}: missing value (overrides look like {item} VALUE)")
            raw = overrides[i + 1]
            if _OPTION.match(raw):
                raise ConfigError(f"{item}: missing value (the next argument is the option {raw})")
            i += 2
        key = key.replace("-", "_")
        parts = key.split(".")
        if cls is not None and key not in set(allowed):
            problem = unknown_key(cls, parts, allowed)
            if problem:
                raise ConfigError(f"--{item[2:].split('=', 1)[0]}: {problem}")
        node = data
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def _field_type(tp: Any, name: str) -> tuple[Any, bool]:
    """The annotated type of field ``name`` of dataclass ``tp`` (Optional unwrapped); (None, False) if absent."""
    hints = typing.get_type_hints(tp)
    if name not in {f.name for f in dataclasses.fields(tp)}:
        return None, False
    ftp = hints[name]
    if typing.get_origin(ftp) in (typing.Union, types.UnionType):
        ftp = next(a for a in typing.get_args(ftp) if a is not type(None))
    return ftp, True


def unknown_key(cls: type, parts: list[str], allowed: Iterable[str] = ()) -> str | None:
    """None if the dotted key ``parts`` names a field of dataclass ``cls`` (or is in ``allowed``), else
    "unknown config key 'a.b'; did you mean 'a.c'?" with the nearest valid key."""
    allowed = set(allowed)
    if ".".join(parts) in allowed:
        return None
    tp: Any = cls
    for depth, p in enumerate(parts):
        dotted = ".".join(parts)
        if not dataclasses.is_dataclass(tp):
            return f"unknown config key '{dotted}': '{'.'.join(parts[:depth])}' has no sub-fields"
        ftp, ok = _field_type(tp, p)
        if not ok:
            names = [f.name for f in dataclasses.fields(tp)]
            names += [a.split(".")[depth] for a in allowed
                      if a.count(".") == depth and a.split(".")[:depth] == parts[:depth]]
            match = difflib.get_close_matches(p, names, n=1, cutoff=0.0)
            if not match:
                return f"unknown config key '{dotted}'"
            fixed = [*parts[:depth], match[0], *parts[depth + 1:]]
            if depth + 1 < len(parts) and unknown_key(cls, fixed, allowed) is not None:
                fixed = fixed[:depth + 1]  # the rest does not fit either: suggest the section
            return f"unknown config key '{dotted}'; did you mean '{'.'.join(fixed)}'?"
        tp = ftp
    return None


def check_keys(data: dict[str, Any], cls: type, where: str, allowed: Iterable[str] = (),
               _prefix: tuple[str, ...] = ()) -> None:
    """Raise ``ConfigError`` ("WHERE: unknown config key ...") for the first key of the nested mapping
    ``data`` that is no field of ``cls``; lists of dataclasses are checked item by item."""
    allowed = set(allowed)
    for key, value in data.items():
        parts = [*_prefix, str(key)]
        problem = unknown_key(cls, parts, allowed)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if ".".join(parts) in allowed:
            continue
        tp: Any = cls
        for p in parts:
            tp, _ = _field_type(tp, p)
        if isinstance(value, dict) and dataclasses.is_dataclass(tp):
            check_keys(value, cls, where, allowed, tuple(parts))
        elif isinstance(value, list) and typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp) or (Any,)
            for i, item in enumerate(value):
                if isinstance(item, dict) and dataclasses.is_dataclass(inner):
                    check_keys(item, inner, f"{where}: {'.'.join(parts)}[{i}]", ())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path, cls: type, allowed: Iterable[str] = (),
                     _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with its ``base:`` chain merged in (bases first, the file on top); every key is checked
    against ``cls`` (``allowed`` lists dotted keys that are no field, such as ``model.preset``)."""
    allowed = tuple(allowed)
    path = Path(path).resolve()
    check(path not in _seen, f"{path}: 'base:' chain loops back to itself")
    data = load_yaml(path)
    base = data.pop("base", None)
    check_keys(data, cls, str(path), allowed)
    if base is None:
        return data
    check(isinstance(base, str), f"{path}: 'base' must be a path to another YAML file")
    return deep_merge(read_config_file(path.parent / base, cls, allowed, (*_seen, path)), data)


def load_config(cls: type[T], path: str | Path | None, overrides: Iterable[str] = (), *,
                base: dict[str, Any] | None = None, allowed: Iterable[str] = ()) -> T:
    """Resolve a config of class ``cls`` (which has ``from_dict(data, where)``): defaults < ``base`` (a saved
    run's config) < the YAML file ``path`` (with its bases) < ``--section.field value`` ``overrides``."""
    allowed = tuple(allowed)
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_config_file(path, cls, allowed))
    data = apply_overrides(data, list(overrides), cls, allowed)
    return cls.from_dict(data, str(path) if path is not None else "config")  # type: ignore[attr-defined]


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or dict) as YAML."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def changed_fields(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = (),
                   prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ between two config dicts (as ``to_dict`` / ``config.yaml``
    give them), with the old and new value; mappings are compared key by key, anything else whole.
    Keys in ``ignore`` (dotted) and everything under them are skipped, and so are keys only one side has
    (a field added or removed by another biglm version is no change of the run)."""
    skip = set(ignore)
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) & set(new), key=str):
        name = f"{prefix}{key}"
        if name in skip:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, skip, f"{name}.")
        elif a != b:
            out.append((name, a, b))
    return out


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """``train.lr 0.003 -> 0.01, train.steps 6 -> 8`` (the first ``limit``, then how many more)."""
    text = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")
