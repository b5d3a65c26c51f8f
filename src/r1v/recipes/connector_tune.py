"""R1V3's last stages (spec 7): choose an RL checkpoint, then fine-tune only the connector on it.

    r1v train connector-tune --config configs/connector_tune.yaml
    r1v train connector-tune --config configs/connector_tune.yaml select.checkpoints=[runs/grpo] data=mix.jsonl

1. Checkpoint selection (`select.checkpoints` non-empty): every candidate (a model folder, a checkpoint
   `step-N/`, or a whole run folder, meaning all its `checkpoints/step-*`) answers the validation prompts
   greedily. A checkpoint with an exported `model/` loads that; a GRPO checkpoint holds the trainable parts
   only (`trainable.safetensors`) and its run's `config.json`, so it loads as the run's base `model` with
   the run's `train.policy` applied, the trainable parts laid over it and LoRA adapters merged (GRPO's
   `train.keep_last` says how many candidates a run keeps). Each candidate gets
   - `critical_entropy`: R1V3's indicator as `r1v.algos.entropy` defines it: teacher-forced token entropy
     of the thinking span, mean over each completion's top `select.top_fraction` highest-entropy tokens,
     averaged over completions;
   - `reward`: validation accuracy (the answer verifiers of the rewards).
   `select.by`: `entropy` (highest critical entropy), `reward` (highest accuracy), or `both` (highest
   entropy among the checkpoints within `select.accuracy_tolerance` of the best accuracy:
   `r1v.algos.entropy.select_checkpoint`). The choice and all scores go to `selection.json`.
2. Connector-only fine-tune: SFT on `data` (multi-domain in R1V3, ~10K samples per third-party notes) with
   the trainable-part policy forced to `connector`, starting from the chosen checkpoint (or `model`).
Outputs are those of `r1v train sft` plus `selection.json`; `summary.json` says `stage: connector-tune`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from r1v.algos.entropy import critical_token_entropy, select_checkpoint, token_entropy
from r1v.atomic import write_summary
from r1v.data.schema import Sample
from r1v.data.sources import atomic_write_text
from r1v.errors import ConfigError, ModelError
from r1v.model.trainable import save_vlm
from r1v.recipes import sft
from r1v.recipes.sft import SFTConfig
from r1v.tables import print_table
from r1v.train import TrainConfig

STEP_RE = re.compile(r"step-(\d+)")


@dataclass
class SelectConfig:
    """How to choose the RL checkpoint to tune (empty `checkpoints`: use `model` as it is)."""

    checkpoints: list[str] = field(default_factory=list)
    by: Literal["entropy", "reward", "both"] = "both"
    val_data: str = "synthetic-heldout:8"
    val_limit: int = 16
    max_new_tokens: int = 128
    top_fraction: float = 0.2
    accuracy_tolerance: float = 0.01

    def validate(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"select.top_fraction: must be in (0, 1], got {self.top_fraction}")
        if self.val_limit < 1 or self.max_new_tokens < 1:
            raise ConfigError("select.val_limit and select.max_new_tokens: must be >= 1")


@dataclass
class ConnectorTuneConfig(SFTConfig):
    """`r1v train connector-tune`: the SFT settings (policy fixed to `connector`) plus checkpoint selection."""

    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/connector_tune"), lr=1e-5,
                                                                   policy="connector"))

    def validate(self) -> None:
        if self.train.policy != "connector":
            raise ConfigError(f"train.policy: connector-tune trains only the connector, got {self.train.policy!r}")
        self.select.validate()
        super().validate()


CONFIG = ConnectorTuneConfig


def _is_checkpoint(path: Path) -> bool:
    return (path / "model" / "config.json").is_file() or (path / "trainable.safetensors").is_file()


def candidate_folders(entries: Sequence[str | Path]) -> list[Path]:
    """The candidates behind each entry: a model folder, a checkpoint `step-N/` (with an exported `model/`,
    or a GRPO checkpoint's trainable parts), or a run folder (each of its `checkpoints/step-*`)."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if (path / "checkpoints").is_dir():
            steps = sorted((p for p in (path / "checkpoints").glob("step-*") if _is_checkpoint(p)),
                           key=lambda p: int(STEP_RE.search(p.name).group(1)))  # type: ignore[union-attr]
            if not steps:
                raise ModelError(f"{path}: no checkpoints/step-* with a model/ or trainable.safetensors to choose from")
            out.extend(p / "model" if (p / "model" / "config.json").is_file() else p for p in steps)
        elif (path / "model" / "config.json").is_file():
            out.append(path / "model")
        elif (path / "trainable.safetensors").is_file() or (path / "config.json").is_file():
            out.append(path)
        else:
            raise ModelError(f"{path}: not a model folder, a checkpoint or a run folder with checkpoints/")
    return out


def load_candidate(folder: Path) -> Any:
    """A candidate as a plain VLM: a model folder as it is; a checkpoint of trainable parts as its run's base
    model (`config.json`: `model`, `train.policy`) with those parts laid over it, LoRA merged."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from r1v.model.build import load_vlm
    from r1v.model.trainable import build_trainable

    weights = folder / "trainable.safetensors"
    if not weights.is_file():
        return load_vlm(folder)
    try:
        run = json.loads((folder / "config.json").read_text())
        base, policy = run["model"], run["train"]["policy"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder}/config.json: cannot tell the run's base model and train.policy ({e})") from None
    vlm, _ = build_trainable(base, policy)
    missing = set(load_file(str(weights))) - set(dict(vlm.model.named_parameters()))
    if missing:
        raise ModelError(f"{weights}: {len(missing)} tensors do not fit {base} with policy {policy} "
                         f"(e.g. {sorted(missing)[0]})")
    vlm.model.load_state_dict(load_file(str(weights)), strict=False)
    if hasattr(vlm.model, "merge_and_unload"):
        vlm = replace(vlm, model=vlm.model.merge_and_unload())
    return vlm


def step_of(path: Path, index: int) -> int:
    """The RL step in a checkpoint path (`.../step-00000012/model` -> 12), else `index`."""
    for part in reversed(path.parts):
        m = STEP_RE.fullmatch(part) or STEP_RE.match(part)
        if m:
            return int(m.group(1))
    return index


@torch.no_grad()
def score_model(vlm: Any, samples: Sequence[Sample], *, max_new_tokens: int = 128,
                top_fraction: float = 0.2) -> dict[str, float]:
    """Greedy answers on `samples` -> {"critical_entropy", "reward", "think_tokens"} (see module docstring)."""
    from r1v.rewards.rules import accuracy_many, columns_of
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    engine = TransformersEngine(vlm)
    model = vlm.model.eval()
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
    completions = [g[0] for g in engine.generate(list(samples), params)]
    batch = engine.processor.encode_batch_prompts(list(samples))
    width = max(1, max(len(c.token_ids) for c in completions))
    ids = torch.full((len(samples), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    span = torch.zeros((len(samples), width), dtype=torch.bool)
    for r, c in enumerate(completions):
        ids[r, :len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
        mask[r, :len(c.token_ids)] = 1
        span[r, :min(c.num_think_tokens, len(c.token_ids))] = True
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"input_ids": torch.cat([batch["input_ids"], ids], 1).to(device),
                              "attention_mask": torch.cat([batch["attention_mask"], mask], 1).to(device),
                              "logits_to_keep": width + 1}
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"].to(device, model.dtype)
    logits = model(**kwargs).logits[:, :-1]  # [B, width, V] predicting the completion tokens
    entropy = token_entropy(logits).cpu()  # [B, width]
    crit = critical_token_entropy(entropy, span & mask.bool(), top_fraction)
    gold = [i for i, x in enumerate(samples) if x.answer not in (None, "")]
    acc = accuracy_many([completions[i].answer for i in gold], [columns_of(samples[i]) for i in gold])
    reward = sum(a["accuracy"] >= 1.0 for a in acc) / len(acc) if acc else math.nan
    return {"critical_entropy": crit, "reward": reward,
            "think_tokens": sum(c.num_think_tokens for c in completions) / len(completions)}


def choose_checkpoint(entries: Sequence[str | Path], samples: Sequence[Sample], cfg: SelectConfig,
                      log: Any = print) -> dict[str, Any]:
    """Score every candidate and choose one by `cfg.by`; returns {"chosen", "step", "rule", "scores"}."""
    folders = candidate_folders(entries)
    scores = []
    for i, folder in enumerate(folders):
        s = score_model(load_candidate(folder), samples, max_new_tokens=cfg.max_new_tokens, top_fraction=cfg.top_fraction)
        scores.append({"path": str(folder), "step": step_of(folder, i), **s})
        log(f"connector-tune: {folder}: critical entropy {s['critical_entropy']:.4f}, reward {s['reward']:.3f}")
    if len({s["step"] for s in scores}) != len(scores):  # duplicate step numbers: fall back to list order
        for i, s in enumerate(scores):
            s["step"] = i
    by_step = {s["step"]: s for s in scores}
    entropy = {k: v["critical_entropy"] for k, v in by_step.items()}
    reward = {k: (-math.inf if math.isnan(v["reward"]) else v["reward"]) for k, v in by_step.items()}
    if cfg.by == "entropy":
        pick = select_checkpoint(entropy)
    elif cfg.by == "reward":
        pick = select_checkpoint(reward)
    else:
        pick = select_checkpoint(entropy, reward, accuracy_tolerance=cfg.accuracy_tolerance)
    rule = {"entropy": "highest critical-token entropy", "reward": "highest validation reward"}.get(cfg.by, pick.rule)
    return {"chosen": by_step[pick.step]["path"], "step": pick.step, "by": cfg.by, "rule": rule, "scores": scores}


def run(cfg: ConnectorTuneConfig, console: Console | None = None) -> dict:
    """Select a checkpoint (optional), then SFT the connector only; returns the summary."""
    from r1v.data.stage_data import read_stage_data

    console = console or Console()
    out = cfg.train.out_dir
    selection = None
    model = cfg.model
    if cfg.select.checkpoints:
        val = [r.sample for r in read_stage_data(cfg.select.val_data, image_root=cfg.image_root,
                                                 limit=cfg.select.val_limit, with_target=False)]
        selection = choose_checkpoint(cfg.select.checkpoints, val, cfg.select, log=console.print)
        model = selection["chosen"]
        if (Path(model) / "trainable.safetensors").is_file():  # trainable parts only: tune a full model folder
            model = str(save_vlm(load_candidate(Path(model)), out / "chosen"))
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "selection.json", json.dumps(selection, indent=2) + "\n")
        print_table(console, f"checkpoint selection ({selection['rule']})", ["step", "critical entropy", "reward",
                                                                              "path"],
                    [(s["step"], s["critical_entropy"], s["reward"], s["path"]) for s in selection["scores"]])
    base = SFTConfig(**{f.name: getattr(cfg, f.name) for f in fields(SFTConfig)})
    base.model = model
    summary = sft.run(base, console=console)
    summary.update(stage="connector-tune", model=model, selection=selection)
    write_summary(out, summary)
    return summary
