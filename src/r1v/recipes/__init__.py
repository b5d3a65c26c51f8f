"""r1v.recipes: one readable file per training stage, and the `r1v train STAGE` command group.

    r1v train sft --config configs/sft.yaml model=tiny train.max_steps=2

A stage is a module with `CONFIG` (its typed, named config dataclass) and `run(cfg, console=None) -> dict`
(the summary); the pipeline and `r1v train` call every stage that one way.
`STAGES` maps the command name to the module, so adding a stage is one line here. Stage modules are
imported only when their command runs, so `r1v --help` stays fast.

A YAML under `configs/` belongs to the stage named by a `# r1v-stage: NAME` line in it, or else to the
stage its file name starts with (`sft.yaml`, `sft_smol.yaml` -> sft; `iterative_sft.yaml` -> iterative-sft);
the config tests validate every one of them against that stage's `CONFIG`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

STAGES: dict[str, str] = {
    "align": "r1v.recipes.align",
    "sft": "r1v.recipes.sft",
    "iterative-sft": "r1v.recipes.iterative_sft",
    "distill": "r1v.recipes.distill",
    "rejection-sample": "r1v.recipes.rejection_sample",
    "grpo": "r1v.recipes.grpo",
    "pipeline": "r1v.recipes.pipeline",
    "mpo": "r1v.recipes.mpo",
    "rm": "r1v.recipes.reward_model",
    "connector-tune": "r1v.recipes.connector_tune",
    "agent-sft": "r1v.recipes.agent_sft",
    "reasoning-llm": "r1v.recipes.reasoning_llm",
}

_STAGE_LINE = re.compile(r"^#\s*r1v-stage:\s*([\w-]+)\s*$", re.MULTILINE)


def stage_module(name: str) -> ModuleType:
    """The module of stage `name` (ConfigError listing the known stages otherwise)."""
    from r1v.errors import ConfigError

    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def stage_for_config(path: str | Path) -> str | None:
    """The stage a YAML file is for: its `# r1v-stage: NAME` line, else the longest stage its name starts with."""
    path = Path(path)
    m = _STAGE_LINE.search(path.read_text())
    if m:
        return m.group(1)
    stem = path.stem.replace("_", "-")
    hits = [s for s in STAGES if stem == s or stem.startswith(s + "-")]
    return max(hits, key=len) if hits else None


def load_stage_config(name: str, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Stage `name`'s typed config from a YAML file and `key=value` overrides (validated)."""
    from r1v.config import load_config

    return load_config(stage_module(name).CONFIG, path, overrides)


def run_stage(name: str, path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Load the config and run stage `name`; returns its summary."""
    cfg = load_stage_config(name, path, overrides)
    return stage_module(name).run(cfg, console=None)


def _help(name: str) -> str:
    """The first line of the stage module's docstring, read without importing it (keeps --help fast)."""
    spec = importlib.util.find_spec(STAGES[name])
    if spec is None or spec.origin is None:
        return f"Train stage {name}."
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or f"Train stage {name}."
    return doc.strip().splitlines()[0]


train_app = typer.Typer(help="Train one stage of the R1V recipe from a YAML config plus key=value overrides.",
                        no_args_is_help=True)


def _command(name: str) -> None:
    def command(
        config: Annotated[Path | None, typer.Option("--config", help="The stage's YAML config (see configs/).")] = None,
        overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.max_steps=2.")] = None,
    ) -> None:
        from r1v.errors import R1VError, one_line

        try:
            run_stage(name, config, list(overrides or []))
        except R1VError as e:
            typer.secho(f"error: {one_line(e)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    command.__doc__ = _help(name)
    train_app.command(name=name, help=_help(name))(command)


for _name in STAGES:
    _command(_name)
