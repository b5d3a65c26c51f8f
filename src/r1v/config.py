"""Typed configs: dataclasses are the single source of truth; YAML files and `key=value` overrides fill them.

    cfg = load_config(SFTConfig, "configs/demo.yaml", ["optim.lr=1e-4", "seed=3"])

Nested dataclasses map to nested YAML mappings and dotted override keys. Every value is checked against
its field's type; unknown keys, bad types and failed `validate()` checks raise `ConfigError` naming the
file (or override) and the key. A dataclass may define `validate(self)` to reject contradictory options.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from r1v.errors import ConfigError

T = TypeVar("T")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). The value is read as YAML, so `x=[1,2]`, `y=null`, `z=true` work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; users mean the number
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p!r} is not a section")
    node[parts[-1]] = value


def _coerce(value: Any, tp: Any, where: str, base: Any = None) -> Any:
    """Check/convert `value` against type `tp`; raise ConfigError naming `where`.

    `base` is the field's default; for a nested section given as a partial mapping, the keys not given
    keep the values of that default (the owning config's own defaults), not the section class's.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where, base)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, where, base if isinstance(base, tp) else None)
    if origin in (list, tuple):
        return _coerce_list(value, origin, args[0] if args else Any, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    if tp is Path:
        return Path(value)
    return value


def _coerce_union(value: Any, args: tuple, where: str, base: Any) -> Any:
    """The first member type of a union that accepts `value` (None for an optional field)."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, where, base)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")


def _coerce_list(value: Any, origin: Any, inner: Any, where: str) -> list | tuple:
    """A list (or tuple) of `inner`; a string is split at commas (`key=a,b` overrides)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):  # nan passes every `x <= 0` check and poisons a run
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _at(where: str) -> str:
    """`where` for a message about the section itself (`cfg.yaml:` at the top level reads `cfg.yaml`)."""
    return where[:-1] if where.endswith(":") else where


def _field_default(f: dataclasses.Field, base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls: type[T], data: dict, where: str, base: Any = None) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{_at(where)}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    if base is not None:  # a partial section: start from the owning config's default for it
        kwargs = {name: getattr(base, name) for name in fields}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}{'.' if where and not where.endswith(':') else ''}{name}",
                               _field_default(fields[name], base))
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{_at(where)}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{_at(where)}: {e}") from None
        except ValueError as e:
            raise ConfigError(f"{_at(where)}: {e}") from None
    return obj


def from_dict(cls: type[T], data: dict, source: str = "<dict>") -> T:
    """Build and validate `cls` from a nested mapping."""
    return _build(cls, data or {}, f"{source}:")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file and line.

    A file with no settings at all (empty, or comments only) is an error: a config given on purpose that
    holds nothing is a truncated or wrong file, and running every default instead would hide that.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        raise ConfigError(f"{path}: config file is empty (no settings); give the settings or leave out --config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got a YAML {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + `key=value` overrides -> a validated `cls` instance."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    source = str(path) if path is not None else "overrides"
    if overrides and path is not None:
        source += " + overrides"
    return from_dict(cls, data, source)


def to_dict(cfg: Any) -> dict:
    """A config as plain data (for saving beside checkpoints and reports)."""
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}
