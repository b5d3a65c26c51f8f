"""Agent SFT (R1V4-Lite): supervised fine-tuning on filtered tool-use trajectories.

    r1v train agent-sft --config configs/agent_sft.yaml
    r1v train agent-sft --config configs/agent_sft.yaml model=smol tasks=200 train.max_steps=120 eval_tasks=40

1. Trajectories: `rollouts_per_task` scripted-expert episodes per rendered zoom task (`r1v.data.tool_tasks`)
   run through the real agent loop, so every crop is a real sandbox execution; a share `flaw_rate` of the
   rollouts are deliberately flawed experts (wrong cell, code that raises, re-cropping).
2. R1V4 filters (`r1v.agent.episodes.filter_trajectories`): keep an episode only if it ended with an answer, that answer matches
   the gold answer and the last thought states it (final-answer consistency), no tool call failed (no sandbox
   errors) and it cropped once (no repeated crops). Counts by reason go to summary.json.
3. SFT: each kept episode gives one sample per assistant turn (`AgentTrajectory.training_samples`);
   observations are user turns, so their tokens (text and images) have label -100 and only model turns
   are learned. Loss, batching and the loop are those of `r1v train sft`.
   `perception` extra shape-naming samples at zoom scale are mixed in, as R1V4 mixes perception data with
   its trajectories. `perception_form: observation` (default) puts them where the agent perceives: the
   clean expert runs on `look_tasks` and only the answer turn after the crop's `<observation>` is trained
   (`observation_perception_samples`). `plain` uses the single-image questions of `perception_samples`;
   those are "image + question -> answer at once", the agent's FIRST-turn context, where it must call the
   tool instead. `both` mixes the two forms over the same crops. The loss is token-level (as `r1v train
   sft`); `turn_mean_loss` weighs every turn the same. Why these defaults: docs/findings.md.
4. Optional held-out check (`eval_tasks`): agent-loop accuracy with the code tool before and after.

`max_tiles` caps the tiles per image (1: the model sees every image as one tile, 112 px for smol, so the zoom tool is
the only way to see small things, and CPU runs stay cheap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v.agent.episodes import (
    agent_accuracy,
    expert_trajectories,
    filter_trajectories,
    observation_perception_samples,
    with_max_tiles,
)
from r1v.agent.tools import default_registry
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Row
from r1v.data.stage_data import BadSamples, encode_rows
from r1v.data.tool_tasks import generate_zoom_tasks, perception_samples
from r1v.errors import ConfigError
from r1v.model.trainable import build_trainable, export_fn, save_vlm
from r1v.processing.processor import IGNORE_INDEX
from r1v.tables import print_table
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set
from r1v.train.loop import LossOutput, Objective, model_inputs

PERCEPTION_FORMS = ("observation", "plain", "both")


@dataclass
class AgentSFTConfig:
    """`r1v train agent-sft`: one typed source of truth, validated on load."""

    model: str = "tiny"
    """A preset name (tiny, smol) or a model folder."""
    tasks: int = 16
    """Rendered zoom tasks (train split) to make expert trajectories from."""
    rollouts_per_task: int = 2
    flaw_rate: float = 0.25
    """Share of expert rollouts that are deliberately flawed (they exercise the filters)."""
    image_size: int = 896
    max_tiles: int | None = 1
    """Cap on tiles per image (None: the model's own setting)."""
    max_turns: int = 4
    perception: int = 0
    """Shape-naming samples at zoom scale mixed into the SFT data (0: trajectories only)."""
    perception_form: str = "both"
    """observation: answer turns after the expert's crop observation; plain: single-image questions; both:
    `perception` samples of each form (the same crops)."""
    turn_mean_loss: bool = False
    """Weigh every assistant turn the same in the loss (False: token-level mean, as `r1v train sft`)."""
    max_seq_len: int = 4096
    seed: int = 0
    eval_tasks: int = 0
    """Held-out zoom tasks for agent accuracy before/after training (0: no check)."""
    eval_max_new_tokens: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/agent_sft")))

    def validate(self) -> None:
        if self.tasks < 1 or self.rollouts_per_task < 1:
            raise ConfigError("tasks and rollouts_per_task: must be >= 1")
        if not 0.0 <= self.flaw_rate <= 1.0:
            raise ConfigError(f"flaw_rate: must be in [0, 1], got {self.flaw_rate}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError("max_tiles: must be >= 1 or null")
        if self.perception < 0:
            raise ConfigError(f"perception: must be >= 0, got {self.perception}")
        if self.perception_form not in PERCEPTION_FORMS:
            raise ConfigError(f"perception_form: must be one of {PERCEPTION_FORMS}, got {self.perception_form!r}")
        if self.max_turns < 1 or self.max_seq_len < 8 or self.eval_tasks < 0 or self.eval_max_new_tokens < 1:
            raise ConfigError("max_turns, max_seq_len, eval_tasks, eval_max_new_tokens: out of range")
        self.train.validate()


CONFIG = AgentSFTConfig


# ---------------------------------------------------------------------------------------------- loss


def turn_mean_loss(model: Any, batch: dict) -> LossOutput:
    """Sum over rows of each row's MEAN token cross-entropy (a row is one assistant turn).

    Token-level SFT weights a turn by its length: a tool call of ~180 tokens (mostly copied code) outweighs
    the ~20-token answer turn after the observation ~9:1, and the one token that needs the zoomed image
    (the shape word) gets ~1% of the gradient. Averaging per turn gives every turn the same weight.
    """
    import torch
    import torch.nn.functional as F

    target = batch["labels"][:, 1:]  # [B, T-1]: logits at t predict labels at t+1
    keep = (target != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)  # [K]
    picked = target[:, keep]  # [B, K]
    inputs = {**model_inputs(batch), "use_cache": False}
    logits = model(**inputs, logits_to_keep=keep).logits  # [B, K, V]
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), picked.reshape(-1).to(logits.device),
                         ignore_index=IGNORE_INDEX, reduction="none").reshape(picked.shape)
    mask = (picked != IGNORE_INDEX).to(ce.device)
    per_turn = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
    return LossOutput(total=torch.where(mask.any(1), per_turn, torch.zeros_like(per_turn)).sum())


def count_turns(batch: dict) -> int:
    """Rows with at least one label token (the units of `turn_mean_loss`)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=1).sum())


def turn_mean_objective() -> Objective:
    """SFT with every assistant turn weighted equally (`turn_mean_loss`), logged as `sft`."""
    return Objective(loss=turn_mean_loss, units=count_turns, name="sft")


# ---------------------------------------------------------------------------------------------- run


def run(cfg: AgentSFTConfig, console: Console | None = None) -> dict:
    """Run the stage; returns the summary written to `train.out_dir/summary.json`."""
    from r1v.processing.processor import Processor

    console = console or Console()
    out = cfg.train.out_dir
    registry = default_registry()
    tasks = generate_zoom_tasks(cfg.tasks, seed=cfg.seed, split="train", size=cfg.image_size)
    trajs = expert_trajectories(tasks, registry, rollouts=cfg.rollouts_per_task, flaw_rate=cfg.flaw_rate,
                                seed=cfg.seed, work_dir=out / "trajectories", max_turns=cfg.max_turns)
    kept, rejected = filter_trajectories(trajs)
    rows = [Row(s, "agent-trajectories", t.sample.id) for t in kept for s in t.training_samples()]
    looks = []
    if cfg.perception_form in ("observation", "both"):
        looks += observation_perception_samples(cfg.perception, registry, seed=cfg.seed, size=cfg.image_size,
                                                work_dir=out / "perception", max_turns=cfg.max_turns)
    if cfg.perception_form in ("plain", "both"):
        looks += perception_samples(cfg.perception, seed=cfg.seed, size=cfg.image_size)
    rows += [Row(s, "perception", s.id) for s in looks]
    console.print(f"agent-sft: {len(trajs)} expert episodes, kept {len(kept)}, rejected {dict(rejected)}; "
                  f"{len(rows) - len(looks)} training turns + {len(looks)} perception samples ({cfg.perception_form})")

    vlm, params = build_trainable(cfg.model, cfg.train.policy)
    vlm = with_max_tiles(vlm, cfg.max_tiles)
    processor = Processor(vlm.tokenizer, vlm.spec)
    bad = BadSamples("skip")
    encoded = encode_rows(processor, rows, max_seq_len=cfg.max_seq_len, bad=bad)
    dataset, loop_cfg, batch_stats = grouped_training_set(encoded, cfg.train)

    held = generate_zoom_tasks(cfg.eval_tasks, seed=cfg.seed, split="heldout", size=cfg.image_size)
    before = agent_accuracy(vlm, held, registry, max_turns=cfg.max_turns,
                            max_new_tokens=cfg.eval_max_new_tokens)[0] if held else None
    objective = turn_mean_objective() if cfg.turn_mean_loss else sft_objective()
    result = train(vlm.model, dataset, objective, loop_cfg, collate_fn=collate_groups(processor),
                   export_fn=export_fn(vlm))
    final = save_vlm(vlm, out / "final")
    after = agent_accuracy(vlm, held, registry, max_turns=cfg.max_turns,
                           max_new_tokens=cfg.eval_max_new_tokens)[0] if held else None

    summary = {
        "stage": "agent-sft", "model": cfg.model, "final": str(final),
        "trajectories": {"episodes": len(trajs), "kept": len(kept), "rejected": dict(rejected),
                         "tool_calls": sum(len(t.steps) for t in trajs)},
        "samples": {"turns": len(rows) - len(looks), "perception": len(looks), "used": len(encoded), **batch_stats}, "bad_samples": bad.summary(),
        "params": params, "steps": result.state.step, "last_metrics": result.last_metrics,
        "eval": {"tasks": len(held), "agent_accuracy_before": before, "agent_accuracy_after": after},
        "config": to_dict(cfg),
    }
    write_summary(out, summary)
    table = [("episodes kept / rejected", f"{len(kept)} / {sum(rejected.values())}"),
             ("training turns", len(encoded)), ("steps", result.state.step),
             ("last loss", result.last_metrics.get("sft", float("nan")))]
    if held:
        table += [("held-out agent accuracy before", before), ("held-out agent accuracy after", after)]
    print_table(console, f"agent-sft -> {final}", ["", "value"], table)
    return summary
