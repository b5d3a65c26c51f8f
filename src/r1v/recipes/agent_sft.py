"""Agent SFT (R1V4-Lite): supervised fine-tuning on filtered tool-use trajectories.

    r1v train agent-sft --config configs/agent_sft.yaml
    r1v train agent-sft --config configs/agent_sft.yaml model=smol tasks=200 train.max_steps=120 eval_tasks=40

1. Trajectories: `rollouts_per_task` scripted-expert episodes per rendered zoom task (`r1v.data.tool_tasks`)
   run through the real agent loop, so every crop is a real sandbox execution; a share `flaw_rate` of the
   rollouts are deliberately flawed experts (wrong cell, code that raises, re-cropping).
2. R1V4 filters (`filter_trajectories`): keep an episode only if it ended with an answer, that answer matches
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

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v.agent.loop import AgentTrajectory, ScriptedPolicy, default_params, run_episodes
from r1v.agent.tools import ToolRegistry, default_registry
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Row, Sample
from r1v.data.stage_data import BadSamples, encode_rows
from r1v.data.tool_tasks import FLAWS, expert_script, generate_zoom_tasks, look_tasks, perception_samples
from r1v.errors import ConfigError
from r1v.model.trainable import build_trainable, export_fn, save_vlm
from r1v.processing.processor import IGNORE_INDEX
from r1v.tables import print_table
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set
from r1v.train.loop import LossOutput, Objective, model_inputs

_CROP = re.compile(r"\.crop\s*\(")
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


# ------------------------------------------------------------------------------------------ filters


def normalise_answer(text: str | None) -> str:
    return re.sub(r"[^a-z0-9 ]", "", (text or "").lower()).strip()


def answer_matches(pred: str | None, gold: str | None) -> bool:
    """Normalised equality (case, punctuation), or the gold word as the prediction's first word."""
    p, g = normalise_answer(pred), normalise_answer(gold)
    return bool(g) and (p == g or p.split()[:1] == [g])


def rejection_reason(traj: AgentTrajectory) -> str | None:
    """Why an episode fails the R1V4 filters (None: keep it)."""
    if any(not s.ok for s in traj.steps):
        return "tool_error"
    if traj.finish != "answer":
        return "no_answer"
    crops = [s for s in traj.steps if s.name == "code" and _CROP.search(str((s.arguments or {}).get("code", "")))]
    calls = [repr(sorted((s.arguments or {}).items())) for s in traj.steps if s.name]
    if len(crops) > 1 or len(calls) != len(set(calls)):
        return "repeated_crop"
    last = traj.turns[-1].content
    last_think = last.split("</think>")[0] if "</think>" in last else ""
    if not answer_matches(traj.final_answer, traj.sample.answer) or \
            normalise_answer(traj.final_answer) not in normalise_answer(last_think):
        return "inconsistent_answer"
    return None


def filter_trajectories(trajs: Sequence[AgentTrajectory]) -> tuple[list[AgentTrajectory], Counter[str]]:
    """(kept episodes, rejected counts by reason)."""
    kept, rejected = [], Counter()
    for t in trajs:
        reason = rejection_reason(t)
        if reason is None:
            kept.append(t)
        else:
            rejected[reason] += 1
    return kept, rejected


def expert_trajectories(tasks: Sequence[Sample], registry: ToolRegistry, *, rollouts: int, flaw_rate: float,
                        seed: int, work_dir: Path, max_turns: int = 4) -> list[AgentTrajectory]:
    """`rollouts` scripted-expert episodes per task through the real loop (real sandbox runs)."""
    rng = random.Random(seed)
    samples, flaws = [], {}
    for task in tasks:
        for k in range(rollouts):
            s = replace(task, id=f"{task.id}~r{k}")
            flaws[s.id] = rng.choice(FLAWS[1:]) if rng.random() < flaw_rate else None
            samples.append(s)
    return run_episodes(ScriptedPolicy(expert_script(flaws)), samples, registry, max_turns=max_turns,
                        work_dir=work_dir)


def observation_perception_samples(n: int, registry: ToolRegistry, *, seed: int = 0, size: int = 896,
                                   work_dir: Path, max_turns: int = 4) -> list[Sample]:
    """Perception data in the agent's protocol: the clean expert on `look_tasks(n)` (real sandbox crops),
    one training sample per episode whose target is the answer turn after the zoomed crop's observation
    (the tool-call turn is context only: `render_training` labels the last assistant turn alone)."""
    tasks = look_tasks(n, seed=seed, size=size)
    trajs = expert_trajectories(tasks, registry, rollouts=1, flaw_rate=0.0, seed=seed, work_dir=work_dir,
                                max_turns=max_turns)
    kept, _ = filter_trajectories(trajs)
    out = []
    for t in kept:
        last = t.training_samples()[-1]
        out.append(replace(last, id=f"{t.sample.id}#answer", meta={**last.meta, "task": "tool_look"}))
    return out


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


# --------------------------------------------------------------------------------------------- eval


def agent_accuracy(vlm: Any, samples: Sequence[Sample], registry: ToolRegistry, *, max_turns: int = 4,
                   max_new_tokens: int = 96, batch_size: int = 8, work_dir: Path | None = None
                   ) -> tuple[float, list[AgentTrajectory]]:
    """Greedy agent-loop accuracy (normalised answer match) and the episodes."""
    from r1v.rollout.engine import TransformersEngine

    engine = TransformersEngine(vlm)
    was_training = vlm.model.training
    vlm.model.eval()
    trajs: list[AgentTrajectory] = []
    try:
        for start in range(0, len(samples), batch_size):
            trajs += run_episodes(engine, list(samples[start:start + batch_size]), registry, max_turns=max_turns,
                                  params=default_params(max_new_tokens), work_dir=work_dir and work_dir / str(start))
    finally:
        vlm.model.train(was_training)
    correct = [answer_matches(t.final_answer, t.sample.answer) for t in trajs]
    return (sum(correct) / len(correct) if correct else float("nan")), trajs


def with_max_tiles(vlm: Any, max_tiles: int | None) -> Any:
    """`vlm` with its processing spec's tiles per image capped."""
    if max_tiles is None:
        return vlm
    return replace(vlm, spec=replace(vlm.spec, max_tiles=max_tiles, min_tiles=min(vlm.spec.min_tiles, max_tiles)))


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


# ------------------------------------------------------------------------------ chat / eval entry points


def episode_record(traj: AgentTrajectory, correct: bool | None = None) -> dict[str, Any]:
    """A JSON-able summary of one episode (turn texts, tool steps, answer, finish)."""
    return {"id": traj.sample.id, "answer": traj.sample.answer, "final_answer": traj.final_answer,
            "correct": correct, "finish": traj.finish, "turns": [{"role": m.role, "content": m.content}
                                                                 for m in traj.turns],
            "steps": [{"turn": s.turn, "name": s.name, "ok": s.ok, "error": s.error, "images": s.num_images}
                      for s in traj.steps]}


def agent_chat(*, model: str, question: str, images: Sequence[Path], max_turns: int = 4, max_new_tokens: int = 256,
               max_tiles: int | None = None, work_dir: Path | None = None, console: Console | None = None
               ) -> AgentTrajectory:
    """`r1v chat --agent`: one greedy agent episode with the code tool, printed turn by turn."""
    from r1v.model.build import load_vlm
    from r1v.processing.images import load_image
    from r1v.rollout.engine import TransformersEngine

    console = console or Console()
    loaded = [load_image(p) for p in images]
    vlm = with_max_tiles(load_vlm(model), max_tiles)
    sample = Sample.from_question("chat", question, images=loaded)
    traj = run_episodes(TransformersEngine(vlm), [sample], default_registry(), max_turns=max_turns,
                        params=default_params(max_new_tokens), work_dir=work_dir)[0]
    for m in traj.turns:
        console.print("[bold cyan]model[/]" if m.role == "assistant" else "[bold yellow]tool[/]")
        console.print(m.content, markup=False, highlight=False)
    console.print(f"[bold green]answer:[/] {traj.final_answer}  [dim](finish: {traj.finish}, "
                  f"{len(traj.steps)} tool steps)[/]")
    return traj


def agent_eval(*, model: str, benchmark: str, data: Path, out: Path, limit: int | None = None, max_turns: int = 4,
               max_new_tokens: int = 256, max_tiles: int | None = None, batch_size: int = 8,
               console: Console | None = None) -> dict[str, Any]:
    """`r1v eval --agent`: agent-loop accuracy on a benchmark's local files, or on the held-out zoom task
    (`--benchmark zoom --data N`: the first N held-out zoom tasks). Writes episodes.jsonl and report.json."""
    import json

    from r1v.data.sources import atomic_write_text
    from r1v.model.build import load_vlm

    console = console or Console()
    if benchmark == "zoom":
        n = int(str(data)) if str(data).isdigit() else 40
        samples = generate_zoom_tasks(min(n, limit or n), split="heldout")
    else:
        from r1v.data.benchmarks import load_benchmark

        samples = load_benchmark(benchmark, data, limit=limit)
    vlm = with_max_tiles(load_vlm(model), max_tiles)
    out.mkdir(parents=True, exist_ok=True)
    _, trajs = agent_accuracy(vlm, samples, default_registry(), max_turns=max_turns, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, work_dir=out / "tool_outputs")
    if benchmark == "zoom":
        correct = [answer_matches(t.final_answer, t.sample.answer) for t in trajs]
    else:
        from r1v.rewards.rules import accuracy_many, columns_of

        scores = accuracy_many([f"\\boxed{{{t.final_answer or ''}}}" for t in trajs],
                               [columns_of(t.sample) for t in trajs])
        correct = [p["accuracy"] >= 1.0 for p in scores]
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(episode_record(t, c), default=str) + "\n"
                                                      for t, c in zip(trajs, correct, strict=True)))
    report = {"benchmark": benchmark, "model": model, "n": len(trajs),
              "accuracy": sum(correct) / len(correct) if correct else float("nan"),
              "finish": dict(Counter(t.finish for t in trajs)),
              "tool_calls": sum(len(t.steps) for t in trajs),
              "tool_errors": sum(not s.ok for t in trajs for s in t.steps)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print_table(console, f"agent eval: {benchmark}", ["", "value"], list(report.items()))
    return report
