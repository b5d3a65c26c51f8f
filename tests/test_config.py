"""Typed configs: YAML + key=value overrides, type checks and errors that name the file and key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from r1v.config import load_config, parse_override, to_dict
from r1v.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Stage:
    name: str = "sft"
    steps: int = 10
    policy: Literal["connector", "full"] = "connector"
    resume: bool = False
    optim: Optim = field(default_factory=Optim)
    note: str | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def test_yaml_and_overrides(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 2e-4\n")
    cfg = load_config(Stage, p, ["optim.lr=3e-5", "policy=full", "resume=true", "optim.betas=[0.8,0.9]"])
    assert cfg.steps == 5 and cfg.optim.lr == 3e-5 and cfg.policy == "full" and cfg.resume is True
    assert cfg.optim.betas == [0.8, 0.9]
    assert to_dict(cfg)["optim"]["lr"] == 3e-5


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["stepz=3"], "unknown key"),
        (["steps=abc"], "steps: expected an integer"),
        (["policy=lora"], "policy: 'lora' is not one of"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["steps=0"], "steps must be >= 1"),
        (["resume=maybe"], "resume: expected true/false"),
        (["novalue"], "expected key=value"),
    ],
)
def test_errors_name_the_key(tmp_path, overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(Stage, None, overrides)


def test_bad_yaml_names_file_and_line(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("steps: 3\noptim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+"):
        load_config(Stage, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, tmp_path / "missing.yaml")


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("x=1e-3") == ("x", 1e-3)
    assert parse_override("s=hello world") == ("s", "hello world")


@dataclass
class Owner:
    optim: Optim = field(default_factory=lambda: Optim(lr=5e-5, betas=[0.5, 0.6]))
    inner: Stage = field(default_factory=lambda: Stage(name="own", steps=7, optim=Optim(lr=1.0)))


def test_partial_sections_keep_the_owners_defaults() -> None:
    cfg = load_config(Owner, None, ["optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.5, 0.6]
    cfg = load_config(Owner, None, ["inner.steps=3"])
    assert (cfg.inner.name, cfg.inner.steps, cfg.inner.optim.lr) == ("own", 3, 1.0)
    cfg = load_config(Owner, None, ["inner.optim.betas=[0.1,0.2]"])
    assert cfg.inner.optim.lr == 1.0 and cfg.inner.optim.betas == [0.1, 0.2] and cfg.inner.steps == 7
    assert load_config(Owner).optim.lr == 5e-5
