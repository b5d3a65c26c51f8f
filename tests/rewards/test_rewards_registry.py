"""Reward registry: built-in names, file.py:function plug-ins, parameters, combinations, clear errors."""

from __future__ import annotations

import pytest

from r1v.errors import ConfigError, R1VError
from r1v.rewards.registry import REWARDS, combine, get_reward

GOOD = "<think>think</think>\\boxed{4}"


def test_builtin_names():
    for name in ("accuracy", "format", "length", "repetition", "hybrid", "r1v"):
        assert name in REWARDS
    assert get_reward("format")(GOOD, {}) == {"overall": 1.0, "format": 1.0}
    length = get_reward("length", max_tokens=10, cache_tokens=5)
    assert length("", {"completion_tokens": 20})["overall"] == -1.0


def test_unknown_name_and_param():
    with pytest.raises(ConfigError, match="unknown reward 'acurracy'.*accuracy"):
        get_reward("acurracy")
    with pytest.raises(ConfigError, match="no parameter.*max_len.*max_tokens"):
        get_reward("length", max_len=3)


def test_plugin_from_file(tmp_path):
    plug = tmp_path / "my_rewards.py"
    plug.write_text(
        "def short(completion, columns):\n"
        "    return {'overall': 1.0 if len(completion) < columns.get('limit', 10) else 0.0, 'n': len(completion)}\n"
        "def plain(completion, columns, bonus=0.0):\n"
        "    return 0.5 + bonus\n"
        "def bad(completion, columns):\n"
        "    return 'oops'\n"
        "VALUE = 3\n")
    assert get_reward(f"{plug}:short")("abc", {}) == {"overall": 1.0, "n": 3.0}
    assert get_reward(f"{plug}:plain", bonus=0.25)("abc", {}) == {"overall": 0.75}
    with pytest.raises(R1VError, match="bad.*returned str"):
        get_reward(f"{plug}:bad")("abc", {})
    with pytest.raises(R1VError, match=r"my_rewards\.py has no function 'missing'.*short"):
        get_reward(f"{plug}:missing")
    with pytest.raises(R1VError, match="'VALUE'.*not a function"):
        get_reward(f"{plug}:VALUE")


def test_bad_plugins(tmp_path):
    with pytest.raises(R1VError, match="nope.py not found"):
        get_reward(f"{tmp_path}/nope.py:fn")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(R1VError, match="importing .*broken.py failed: ModuleNotFoundError"):
        get_reward(f"{broken}:fn")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n")
    with pytest.raises(R1VError, match="syntax.py failed: SyntaxError"):
        get_reward(f"{syntax}:f")


def test_combine(tmp_path):
    plug = tmp_path / "extra.py"
    plug.write_text("def bonus(completion, columns):\n    return 2.0\n")
    fn = combine([("accuracy", 1.0), ("format", 0.5), ("length", 1.0, {"max_tokens": 10, "cache_tokens": 5}),
                  (f"{plug}:bonus", 0.25)])
    parts = fn(GOOD, {"answer": "4", "completion_tokens": 8})
    assert parts["accuracy"] == 1.0 and parts["format"] == 1.0 and parts["bonus"] == 2.0
    assert parts["length"] == pytest.approx(-0.6) and parts["length/tokens"] == 8.0
    assert parts["overall"] == pytest.approx(1.0 + 0.5 - 0.6 + 0.5)
    assert combine({"format": 2.0})(GOOD, {})["overall"] == 2.0
    with pytest.raises(ConfigError):
        combine([])
    with pytest.raises(ConfigError):
        combine([("format",)])
