"""The one plug-in loader: file and module specs, and one clear ConfigError for each way a spec fails."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from r1v.errors import ConfigError
from r1v.plugins import load_callable


def test_file_and_module_specs_load_the_function(tmp_path: Path) -> None:
    plug = tmp_path / "plug.py"
    plug.write_text("from dataclasses import dataclass\n\n@dataclass\nclass Box:\n    x: int\n\n"
                    "def make(x):\n    return Box(x)\n")
    make = load_callable(f"{plug}:make")
    assert make(3).x == 3 and pickle.loads(pickle.dumps(make(4))).x == 4  # registered, so it pickles
    assert load_callable("os.path:join")("a", "b") == "a/b"


@pytest.mark.parametrize(("spec", "message"), [
    ("no-colon", "expected 'path/file.py:function' or 'module:function'"),
    ("{d}/missing.py:f", "missing.py not found"),
    ("{d}/broken.py:f", "importing .*broken.py failed: ZeroDivisionError"),
    ("{d}/ok.py:absent", r"ok.py has no function 'absent' \(it defines: present\)"),
    ("{d}/ok.py:VALUE", "'VALUE' in .*ok.py is not a function"),
    ("not_a_module_xyz:f", "importing not_a_module_xyz failed: ModuleNotFoundError"),
])
def test_every_failure_is_one_config_error_naming_the_spec(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "ok.py").write_text("VALUE = 3\n\ndef present():\n    return 1\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_callable(spec.format(d=tmp_path), "scorer")
    assert str(info.value).startswith("scorer '")
