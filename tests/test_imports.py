"""Every module of the package imports (catches broken imports that lint cannot see at run time)."""

from __future__ import annotations

import importlib
import pkgutil

import r1v


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(r1v.__path__, prefix="r1v."))


def test_every_module_imports() -> None:
    names = all_modules()
    assert "r1v.cli" in names and "r1v.rollout.engine" in names
    failures = {}
    for name in names:
        if name.startswith("r1v.rollout.vllm"):
            continue  # optional extra: imports vllm lazily inside; covered by its own test
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report every failure at once
            failures[name] = repr(e)
    assert not failures, failures


def test_tests_mirror_the_package() -> None:
    """Each subpackage with code has a matching tests/<subpackage>/ folder."""
    from pathlib import Path

    src = Path(r1v.__file__).parent
    tests = Path(__file__).parent
    missing = []
    for sub in sorted(p for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        has_code = any(f.name != "__init__.py" for f in sub.rglob("*.py"))
        if has_code and not (tests / sub.name).is_dir():
            missing.append(sub.name)
    assert not missing, f"tests/ has no folder for: {missing}"
