"""Every `r1v` command and `r1v train` stage answers `--help` with its description."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from r1v.cli import app


def _commands(group, prefix=()):
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        path = (*prefix, name)
        yield path
        yield from _commands(cmd, path)


COMMANDS = list(_commands(get_command(app)))


def test_expected_commands_exist() -> None:
    names = {" ".join(c) for c in COMMANDS}
    for expected in ("inspect", "assemble", "convert", "score", "assets", "plan", "chat", "eval", "demo",
                     "train", "train sft", "train align", "train iterative-sft", "train grpo"):
        assert expected in names, f"missing command: {expected}"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p))
def test_help(path) -> None:
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output
    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    assert (cmd.help or cmd.short_help or "").strip(), f"{' '.join(path)} has no help text"


def test_top_level_help_lists_commands() -> None:
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "eval" in res.output and "train" in res.output
