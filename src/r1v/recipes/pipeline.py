"""A generation's recipe as ordered stages handing off through named checkpoint folders.

    r1v train pipeline --config configs/r1v.yaml scale=micro
    r1v train pipeline --config configs/r1v2.yaml scale=tiny out_dir=runs/r1v2_tiny

Each step names a stage of `r1v.recipes.STAGES` (`reasoning-llm` among them: text-only SFT of an LLM on
`<think>` arithmetic), the stage's config as in its own YAML, and per-scale overrides (`micro`:
the same stages on the `smol`/`tiny` presets with tiny step counts; `tiny` adds overrides on top for
tests). `inputs` hands checkpoints on: `{model: sft}` sets the step's `model` to the `final` folder of
step `sft` (`{reasoning_llm: reason.final}` for any key of that step's summary; dotted keys such as
`select.checkpoints` reach nested fields, and a list field receives a one-element list). Every step writes
into `out_dir/<step name>/`; with `resume: true` a step whose `summary.json` exists is not run again.

After every step the pipeline evaluates the models named in the step's `report` rows on the held-out
set (greedy): accuracy overall and per task family, mean thinking length, hallucination rate (rendered
tasks with known scenes), and the effective-sample ratio of RL steps, then writes `report.json`
(`{"stages": [{"name", "accuracy", ...}]}`), `report.md`, `report.html` and `plots/*.png`. Strings in
step configs may say `{data}` (the folder `prepare` writes rendered/text data into), `{out}` or `{seed}`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from r1v.config import from_dict, to_dict
from r1v.data.sources import atomic_write_text
from r1v.errors import ConfigError

Scale = Literal["full", "micro", "quick", "tiny"]
CASCADE = ("micro", "quick", "tiny")
"""Scale overrides apply in this order: scale `quick` applies `micro` then `quick`; `tiny` all three."""


@dataclass
class ReportRow:
    """One row of the stage table: a label and the summary key holding the model folder to evaluate."""

    label: str = ""
    model: str = "final"
    """A key of the step's summary (dotted for nested values, e.g. `rounds.1.model`)."""
    versus: str = ""
    """The label of the earlier row this one is compared with ("" = the row before)."""
    pass_at_k: bool = False
    """Also sample `eval.pass_k` answers per held-out item (pass@1 and pass@k: what RL from here can sharpen)."""


@dataclass
class Step:
    """One stage run of the pipeline."""

    name: str = ""
    """Folder name under `out_dir` and the name later steps hand off from."""
    stage: str = "sft"
    """A stage of `r1v.recipes.STAGES`."""
    config: dict[str, Any] = field(default_factory=dict)
    """The stage's config (the mapping its own YAML holds)."""
    micro: dict[str, Any] = field(default_factory=dict)
    """Overrides merged into `config` at scale micro (and quick, tiny)."""
    quick: dict[str, Any] = field(default_factory=dict)
    """Overrides merged on top at scale quick (and tiny)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Overrides merged on top at scale tiny (tests)."""
    only: list[str] = field(default_factory=list)
    """Scales this step runs at ([] = all); a hand-off from a step that did not run keeps the config value."""
    inputs: dict[str, str] = field(default_factory=dict)
    """config key -> `step` (its `final` folder) or `step.summary_key`."""
    report: list[ReportRow] = field(default_factory=lambda: [ReportRow()])
    """Models of this step evaluated into the table ([] for none)."""


@dataclass
class Prepare:
    """Data written into `out_dir/data` before the steps (0 = not written)."""

    train: int = 0
    """Rendered tasks with a worked `<think>` chain -> `{data}/train.jsonl`."""
    heldout: int = 0
    """Held-out rendered tasks (the report's evaluation set) -> `{data}/heldout.jsonl`."""
    text: int = 0
    """Text-only `<think>` arithmetic for the reasoning LLM -> `{data}/text.jsonl`."""
    rl: int = 0
    """RL prompts drawn from their own stream (scenes the chain data does not show) -> `{data}/rl.jsonl`;
    0: the train tasks' prompts."""
    align: int = 0
    """Rendered perception questions with one-word answers (the connector's alignment data) -> `{data}/align.jsonl`."""
    val: int = 0
    """Validation tasks for choices made during a run (R1V3's checkpoint choice), their own held-out stream
    -> `{data}/val.jsonl` (prompts only)."""
    pairs: int = 0
    """Preference pairs (chosen: the worked chain; rejected: a hallucinated figure) -> `{data}/pairs.jsonl`."""
    heldout_pairs: int = 0
    """Held-out preference pairs (the reward model's pair accuracy) -> `{data}/heldout_pairs.jsonl`."""
    image_size: int = 112
    unanswerable_ratio: float = 0.1
    families: list[str] = field(default_factory=lambda: ["count", "arith", "digit", "bar", "compare"])
    difficulties: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class EvalSettings:
    """The held-out evaluation after every step."""

    data: str | None = "synthetic-heldout:16"
    """Held-out samples with gold answers (a file, `synthetic-heldout:N`, or `{data}/heldout.jsonl`); null: none."""
    limit: int = 64
    max_new_tokens: int = 64
    batch_size: int = 16
    pass_k: int = 4
    """k of pass@k for report rows with `pass_at_k` (the RL step's group size)."""
    pass_k_limit: int = 100
    """pass@k is measured on the first this many held-out items (k sampled answers each cost a greedy pass)."""


@dataclass
class PipelineConfig:
    """`r1v train pipeline`: a generation's stages, its scale, and where it writes."""

    generation: str = "r1v"
    scale: Scale = "full"
    out_dir: Path = Path("runs/pipeline")
    seed: int = 0
    resume: bool = False
    """Reuse steps whose `summary.json` exists in `out_dir/<step>`."""
    prune_checkpoints: bool = False
    """Delete a step's resume checkpoints (weights + optimizer state, ~1.6 GB each for SmolLM2) once the step
    has finished and exported its final model; a killed run still resumes the step it was in. A step whose
    run folder a later step reads (`inputs: {select.checkpoints: grpo.run}`) keeps its checkpoints."""
    prepare: Prepare = field(default_factory=Prepare)
    eval: EvalSettings = field(default_factory=EvalSettings)
    micro: dict[str, Any] = field(default_factory=dict)
    """Top-level overrides (e.g. `eval`, `prepare`) at scale micro (and quick, tiny)."""
    quick: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    notes: str = ""
    """Where the recipe's numbers come from (kept in the report)."""

    def validate(self) -> None:
        names = [s.name for s in self.steps]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"steps: every step needs a unique name, got {names}")
        for i, step in enumerate(self.steps):
            for key, src in step.inputs.items():
                if src.split(".")[0] not in names[:i]:
                    raise ConfigError(f"steps[{i}] ({step.name}).inputs.{key}: {src!r} is not an earlier step")
            bad = sorted(set(step.only) - {"full", *CASCADE})
            if bad:
                raise ConfigError(f"steps[{i}] ({step.name}).only: unknown scale(s) {bad}")
            for scale in ("full", *CASCADE):
                if not step.only or scale in step.only:
                    step_config(self, step, scale)  # every scale's stage config validates now, not mid-run


CONFIG = PipelineConfig


# ---------------------------------------------------------------------------------------------- configs

def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base` (nested mappings merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def scaled(cfg: PipelineConfig) -> PipelineConfig:
    """The config with its top-level `micro`/`tiny` overrides applied for `cfg.scale`."""
    if cfg.scale == "full":
        return cfg
    data = to_dict(cfg)
    for level in CASCADE[:CASCADE.index(cfg.scale) + 1]:
        data = deep_merge(data, getattr(cfg, level))
    data["micro"], data["quick"], data["tiny"] = {}, {}, {}
    return from_dict(PipelineConfig, data, f"pipeline (scale={cfg.scale})")


def _stage_class(stage: str) -> type | None:
    from r1v.recipes import stage_module

    return stage_module(stage).CONFIG


def _fill(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subs.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, subs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    return value


def step_config(cfg: PipelineConfig, step: Step, scale: str | None = None, handed: dict[str, str] | None = None
                ) -> Any:
    """The step's typed stage config at `scale`: config + scale overrides + hand-offs + the pipeline's
    out_dir/seed (`train.out_dir` = `out_dir/<step>`, `train.seed` = `seed`)."""
    scale = scale or cfg.scale
    data = dict(step.config)
    if scale != "full":
        for level in CASCADE[:CASCADE.index(scale) + 1]:
            data = deep_merge(data, getattr(step, level))
    for key, value in (handed or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[last] = [value] if isinstance(node.get(last), list) else value
    data = _fill(data, {"data": str(Path(cfg.out_dir) / "data"), "out": str(cfg.out_dir), "seed": str(cfg.seed)})
    cls = _stage_class(step.stage)
    names = {f.name for f in fields(cls)}
    out_dir = str(Path(cfg.out_dir) / step.name)
    if "train" in names:
        data["train"] = {**data.get("train", {}), "out_dir": out_dir, "seed": cfg.seed}
    elif "out_dir" in names:
        data["out_dir"] = out_dir
    elif "out" in names:
        data["out"] = out_dir
    return from_dict(cls, data, f"steps.{step.name} ({step.stage}, scale={scale})")


def read_step_summary(path: Path) -> dict:
    """A finished step's summary.json (resume reuses it); a damaged one names the file and the way out."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable step summary ({e}); delete it to run the step again") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: expected a JSON object; delete it to run the step again")
    return summary


def _lookup(summary: dict, key: str) -> Any:
    node: Any = summary
    for part in key.split("."):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            node = None
    return node


# ---------------------------------------------------------------------------------------------- run

def run(cfg: PipelineConfig, console: Console | None = None) -> dict:
    """Run every step in order, evaluate, and write the report; returns report.json's content."""
    from r1v.eval.pipeline_report import evaluate_model, held_out, write_report
    from r1v.recipes import stage_module

    console = console or Console()
    cfg = scaled(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if any((cfg.prepare.train, cfg.prepare.heldout, cfg.prepare.text, cfg.prepare.pairs)):
        from r1v.data.demo_tasks import write_prepared

        write_prepared(cfg.prepare, out / "data", seed=cfg.seed)
    eval_samples = held_out(cfg.eval, out / "data")
    summaries: dict[str, dict] = {}
    rows: list[dict] = []
    evaluated: dict[tuple[str, bool], dict] = {}
    steps = [s for s in cfg.steps if not s.only or cfg.scale in s.only]
    for i, step in enumerate(steps, start=1):
        handed = {}
        for key, src in step.inputs.items():
            name, _, sub = src.partition(".")
            if name not in summaries:
                continue
            value = _lookup(summaries[name], sub or "final")
            if value is None:
                raise ConfigError(f"steps.{step.name}.inputs.{key}: step {name!r} has no {sub or 'final'!r}")
            handed[key] = str(value)
        stage_cfg = step_config(cfg, step, handed=handed)
        elapsed = time.perf_counter() - started
        console.rule(f"[bold][{i}/{len(steps)}] {step.name} ({step.stage})[/] - {elapsed / 60:.1f} min so far"
                     + (f", about {elapsed / (i - 1) * (len(steps) - i + 1) / 60:.1f} min to go" if i > 1 else ""))
        summary_path = out / step.name / "summary.json"
        t0 = time.perf_counter()
        if cfg.resume and summary_path.exists():
            summary = read_step_summary(summary_path)
            console.print(f"{step.name}: reusing {summary_path}")
        else:
            summary = stage_module(step.stage).run(stage_cfg, console=console)
        summaries[step.name] = summary
        seconds = time.perf_counter() - t0
        if cfg.prune_checkpoints and not any(src == f"{step.name}.run" for s in steps for src in s.inputs.values()):
            prune_checkpoints(out / step.name)
        for r in step.report:
            folder = _lookup(summary, r.model)
            if folder is None:
                raise ConfigError(f"steps.{step.name}.report: the summary has no {r.model!r}")
            row = {"name": r.label or step.name, "step": step.name, "stage": step.stage, "model": str(folder),
                   "train_seconds": round(seconds, 1), "versus": r.versus}
            if eval_samples:
                key = (str(folder), r.pass_at_k)  # a model listed twice (R1V3's chosen checkpoint) is evaluated once
                if key not in evaluated:
                    evaluated[key] = evaluate_model(str(folder), eval_samples, cfg.eval, console=console,
                                                    pass_k=cfg.eval.pass_k if r.pass_at_k else 0)
                row.update(evaluated[key])
            if step.stage == "grpo":
                row.update(effective_ratio=summary.get("effective_ratio_mean"),
                           effective_ratio_without=summary.get("effective_ratio_without_mean"),
                           reward_first=summary.get("reward_first"), reward_last=summary.get("reward_last"),
                           metrics=str(out / step.name / "metrics.jsonl"))
            rows.append(row)
            seconds = 0.0
        # the table so far, so a long run can be followed (and survives an interruption)
        atomic_write_text(out / "report.json", json.dumps({"partial": True, "stages": rows}, indent=2,
                                                          default=str) + "\n")
    return write_report(cfg, rows, summaries, out, wall_seconds=time.perf_counter() - started, console=console,
                        extra=side_results(cfg, summaries))


def side_results(cfg: PipelineConfig, summaries: dict[str, dict]) -> dict:
    """Findings beside the table: the reward model's held-out pair accuracy, R1V3's checkpoint choice."""
    out: dict[str, Any] = {}
    for step in cfg.steps:
        summary = summaries.get(step.name)
        if not summary:
            continue
        if step.stage == "rm":
            before, after = summary.get("accuracy_before", {}), summary.get("accuracy_after", {})
            lines = [f"{step.name}: {summary['pairs']['used']} training pairs, {summary['steps']} steps; pair accuracy "
                     f"(chosen scored above rejected) train {before.get('train', 0):.3f} -> {after.get('train', 0):.3f}"]
            if after.get("heldout") is not None:
                lines.append(f"held-out pair accuracy {before['heldout']:.3f} -> {after['heldout']:.3f}")
            out["reward_model"] = {"step": step.name, "before": before, "after": after, "lines": lines}
        if step.stage == "connector-tune" and summary.get("selection"):
            sel = summary["selection"]
            lines = [f"candidate {s['path']}: critical-token entropy {s['critical_entropy']:.4f}, validation reward "
                     f"{s['reward']:.3f}" for s in sel["scores"]]
            lines.append(f"chosen by {sel['rule']}: {sel['chosen']}")
            out["selection"] = {**sel, "lines": lines}
    return out


def prune_checkpoints(step_dir: Path) -> int:
    """Remove every `checkpoints/` folder under a finished step's folder; returns how many were removed."""
    import shutil

    found = sorted(p for p in Path(step_dir).rglob("checkpoints") if p.is_dir())
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return len(found)
