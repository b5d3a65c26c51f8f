"""The one plug-in loader: `path/file.py:function` or `package.module:function` -> the function.

Rewards (`r1v.rewards.registry`), GRPO's reward model and iterative SFT's scorer are all loaded here. A file
plug-in is registered in `sys.modules` under a name derived from its resolved path, so it can pickle its own
functions and dataclasses. Every failure is one ConfigError naming the spec: a malformed spec, a missing
file, an import that raised, a missing name (listing what the file does define) or a name that is not
callable.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from r1v.errors import ConfigError


def _import_file(spec: str, path: Path, what: str) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"{what} {spec!r}: file {path} not found")
    mod_name = f"r1v_plugin_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigError(f"{what} {spec!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_name] = module  # lets the plug-in pickle its own functions / dataclasses
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config problem for the user
        sys.modules.pop(mod_name, None)
        raise ConfigError(f"{what} {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_callable(spec: str, what: str = "plug-in") -> Callable[..., Any]:
    """The function `spec` names (`path/file.py:function` or `package.module:function`); `what` names the
    plug-in in error messages ("reward plug-in", "scorer", ...)."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"{what} {spec!r}: expected 'path/file.py:function' or 'module:function'")
    if target.endswith(".py"):
        module = _import_file(spec, Path(target).expanduser(), what)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{what} {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if fn is None:
        known = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"{what} {spec!r}: {target} has no function {name!r} (it defines: "
                          f"{', '.join(known) or 'nothing callable'})")
    if not callable(fn):
        raise ConfigError(f"{what} {spec!r}: {name!r} in {target} is not a function")
    return fn
