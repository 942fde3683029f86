"""Config plumbing (stdlib only): dicts, YAML files and dotted overrides such as `--optim.lr=3e-3`.

Unknown keys are always rejected with a suggestion; values are coerced to the field's type and validated by the
section's `__post_init__`. A section may list renamed keys in a `RENAMED` class attribute: the old name still
loads (from YAML files, overrides and checkpoints written before the rename) with a one-line note.
"""
from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from pathlib import Path
from typing import Any

from ebt.config.sections import RunConfig
from ebt.errors import Note, UserError


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (often a string from the command line) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):   # every float setting is a finite quantity (rates, sizes, levels)
                raise UserError(f"{where}={value!r} is not a finite number: give a finite value")
            return number
        if tp is str:
            return str(value)
        if tp is tuple:
            if isinstance(value, str):
                value = [float(v) for v in value.strip("()[] ").split(",")]
            return tuple(value)
    except UserError:
        raise
    except (TypeError, ValueError, OverflowError):   # OverflowError: an int given as 1e400
        raise UserError(f"{where}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise UserError(f"config section {where or 'root'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        key = _current_name(cls, key, path)
        if key not in fields:
            raise UserError(f"unknown config key {path!r}{_suggest(key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _suggest(key: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(options), n=1)
    return f": did you mean {close[0]!r}?" if close else f": known keys are {', '.join(options)}"


class RenamedKeyWarning(Note, FutureWarning):
    """A config key was given by its old name (it still works)."""


def _current_name(cls: type, key: str, path: str) -> str:
    """`key` of section `cls`, translated (with a note) when it is an old name in `cls.RENAMED`."""
    new = getattr(cls, "RENAMED", {}).get(key)
    if new is None:
        return key
    warnings.warn(f"config key {path!r} is now {path[:len(path) - len(key)] + new!r}; the old name still works",
                  RenamedKeyWarning, stacklevel=3)
    return new


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a new config with dotted overrides such as {"optim.lr": "3e-3"} applied and validated."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node, cls = data, type(cfg)
        for i, part in enumerate(parts):
            part = parts[i] = _current_name(cls, part, ".".join(parts[:i + 1])) if cls is not None else part
            cls = typing.get_type_hints(cls).get(part) if cls is not None else None
            cls = cls if dataclasses.is_dataclass(cls) else None
            if not isinstance(node, dict) or part not in node:
                known = node.keys() if isinstance(node, dict) else []
                raise UserError(f"unknown config key {'.'.join(parts[:i + 1])!r}{_suggest(part, known)}")
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise UserError(f"{dotted!r} is a section, not a value: set one of its keys, e.g. {dotted}.KEY=VALUE")
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def load_yaml(path: str | Path, base: Any = None) -> Any:
    """Load a YAML file of (possibly partial) sections over `base` (default: the library defaults)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist: check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text: pass a YAML file") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections")
    flat = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):   # an empty file or section changes nothing
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", data)
    return apply_overrides(base or RunConfig(), flat)


def save_yaml(cfg: Any, path: str | Path) -> None:
    import yaml

    data = to_dict(cfg)
    data["optim"]["betas"] = list(data["optim"]["betas"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
