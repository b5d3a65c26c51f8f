"""GRPO with hybrid rewards and the Selective Sample Buffer (R1V stage 3, R1V2 6.3-6.4, R1V3 RL), on 1 or N processes.

    r1v train grpo --config configs/grpo.yaml
    torchrun --nproc_per_node 2 $(which r1v) train grpo --config configs/grpo.yaml      # 2 CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m r1v.cli train grpo --config ...   # GPUs

`rollout_batches` yields one batch of `prompts_per_step` prompts (the global batch; a seeded epoch order
whose position survives resume) at a time, the same on every process: each process rolls out and scores its
contiguous share (`r1v.rollout.groups`: G completions per prompt, seeded per completion, so 1 and N processes
sample the same), then all gather the batch and compute the same advantages and buffer fill. `update` trains
each process on its share: reference and (when read) old-policy log-probs in no-gradient passes, then
`num_iterations` steps of the clipped surrogate, the gradient the mean over the global batch's units.
Checkpoints at rollout-batch boundaries keep the trainable weights, the buffer and the data position.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from r1v import distributed as dist
from r1v.algos.advantages import ADVANTAGES, compute_advantages
from r1v.algos.entropy import span_before, top_entropy_per_sequence
from r1v.algos.logprobs import batch_logps, completion_logps
from r1v.algos.losses import LOSS_TYPES, grpo_loss, loss_units
from r1v.algos.ssb import SelectiveSampleBuffer, SSBConfig, fill_batch
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Sample
from r1v.data.stage_data import read_stage_data
from r1v.errors import ConfigError
from r1v.model.trainable import build_trainable, save_vlm
from r1v.rewards.registry import RewardItem, combine_items
from r1v.rewards.reward_model import reward_model_scorer as rm_scorer
from r1v.rewards.rules import RewardFn, Scorer
from r1v.rollout.batch import RolloutItem, micro_batches, set_old_logps
from r1v.rollout.engine import THINK_CLOSE, SamplingParams
from r1v.rollout.groups import GroupSampling, group_metrics, prefilter, rollout, score
from r1v.rollout.policy import VLLMOptions, make_engine, rollout_copy, sync_weights
from r1v.train import TrainConfig, TrainState, save_checkpoint
from r1v.train.loop import LossOutput, Objective, epoch_order, prepare_run, setup_accelerator, train_step
from r1v.train.metrics import plot_metrics, plot_reward_and_ratio, read_metrics
from r1v.train.shard import frozen_reference, place_reference, plain_module


@dataclass
class GRPOConfig:
    """`r1v train grpo`: one typed source of truth (TRL-familiar names), validated on load."""

    model: str = "tiny"
    """A preset name or a model folder (e.g. the output of `r1v train sft`)."""
    data: str = "synthetic:64"
    """Prompts with gold answers: a .jsonl/.json/.parquet file or `synthetic:N` (rendered tasks)."""
    image_root: Path | None = None
    num_generations: int = 4
    """G: completions per prompt (R1V: 8)."""
    prompts_per_step: int = 4
    """Prompts per rollout batch over all processes (a multiple of the process count)."""
    max_completion_length: int = 64
    """Generated tokens per completion, thinking included (R1V: 8K)."""
    max_think_tokens: int | None = None
    """Thinking budget: `</think>` is forced after this many tokens (None: no budget)."""
    think: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    beta: float = 0.0
    """KL coefficient (k3 estimator to a frozen reference copy); 0 loads no reference model."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    """Upper clip (DAPO clip-higher, e.g. 0.28); None = epsilon."""
    loss_type: Literal["token", "sequence", "dr_grpo"] = "token"
    advantage: Literal["grpo", "grpo_no_std", "dr_grpo"] = "grpo"
    num_iterations: int = 1
    """Optimiser steps per rollout batch (mu in GRPO); old-policy log-probs are fixed per batch."""
    mask_truncated_completions: bool = False
    rewards: list[RewardItem] = field(default_factory=lambda: [RewardItem("accuracy"), RewardItem("format")])
    reward_model: str | None = None
    """r_RM: a reward-model folder (`r1v train rm`), scored in batches with the images, or a plug-in
    `path/file.py:function` / `module:function` with `fn(completion, columns) -> float`."""
    reward_model_weight: float = 1.0
    reward_model_batch_size: int = 8
    ssb: SSBConfig | None = None
    """Selective Sample Buffer settings; null disables it."""
    prefilter: bool = False
    """Before training, roll out every prompt once and drop zero-variance ones (offline SSB)."""
    critical_top_fraction: float = 0.2
    engine: Literal["transformers", "vllm"] = "transformers"
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir=Path("runs/grpo"), lr=1e-6, weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
        policy="connector+llm", micro_batch_size=8))

    def validate(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"num_generations: GRPO needs >= 2 completions per prompt, got {self.num_generations}")
        for name in ("prompts_per_step", "max_completion_length", "num_iterations", "reward_model_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ConfigError("beta must be >= 0; epsilon and epsilon_high must be > 0")
        if not 0 < self.critical_top_fraction <= 1:
            raise ConfigError(f"critical_top_fraction: must be in (0, 1], got {self.critical_top_fraction}")
        if not self.rewards and self.reward_model is None:
            raise ConfigError("rewards: give at least one reward (or a reward_model)")
        if self.advantage not in ADVANTAGES or self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"advantage/loss_type: unknown ({self.advantage}, {self.loss_type})")
        self.train.validate()


CONFIG = GRPOConfig


def build_reward(cfg: GRPOConfig) -> RewardFn:
    """The weighted rule/plug-in reward of `cfg.rewards` (one completion at a time)."""
    return combine_items(cfg.rewards)


def reward_model_scorer(cfg: GRPOConfig, device: Any) -> Scorer | None:
    """r_RM of `cfg.reward_model` (a folder run in batches on `device` with the images, or a plug-in)."""
    return rm_scorer(cfg.reward_model, device=device, batch_size=cfg.reward_model_batch_size)


def sampling(cfg: GRPOConfig) -> GroupSampling:
    return GroupSampling(SamplingParams(
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        repetition_penalty=1.0, max_think_tokens=cfg.max_think_tokens, think=cfg.think, n=cfg.num_generations),
        cfg.train.seed)


@dataclass
class Rollouts:
    """One rollout batch, the same on every process: the items to train on (fresh, or drawn from the buffer),
    their advantages, and the batch's metrics."""

    index: int
    items: list[RolloutItem]
    advantages: list[float]
    metrics: dict[str, float]


def rollout_batches(engine: Any, prompts: Sequence[Sample], pool: Sequence[int], cfg: GRPOConfig, tok: Any,
                    reward: Callable, buffer: SelectiveSampleBuffer | None, start: int, data_seed: int,
                    sync: Callable[[], None], synced: bool) -> Iterator[Rollouts]:
    """Rollout batches `start, start + 1, ...` of the prompts `pool` (indices into `prompts`); `sync()` hands
    the engine the latest weights before each batch but the first when `synced`."""
    rank, world = dist.world_info()
    n, g = cfg.prompts_per_step, cfg.num_generations
    per_epoch, group_sampling = len(pool) // n, sampling(cfg)
    for r in itertools.count(start):
        if r > start or not synced:
            sync()
        started = time.perf_counter()
        epoch, step = divmod(r, per_epoch)
        order = epoch_order(len(pool), data_seed, epoch)
        batch = [pool[i] for i in order[step * n:(step + 1) * n]]
        mine, texts = rollout(engine, prompts, dist.shard(batch, rank, world), group_sampling, tok, r)
        metrics = {"generation_s": time.perf_counter() - started}
        reward(mine, texts)
        items = dist.gather(mine, world)  # the whole batch, identical on every process
        adv = compute_advantages(cfg.advantage, torch.tensor([it.reward for it in items]), g)  # [N]
        metrics.update(group_metrics(items, g))
        rows, advantages, stats = fill_batch(buffer, items, adv, g, step=r)
        yield Rollouts(r, rows, advantages, {**metrics, **stats})


def grpo_objective(cfg: GRPOConfig, close_ids: Sequence[int]) -> Objective:
    """The clipped surrogate; its metrics also carry the sums behind the entropy of the completions and of
    their critical (top-entropy) thinking tokens."""
    count = partial(loss_units, loss_type=cfg.loss_type)

    def loss(model: Any, batch: dict) -> LossOutput:
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        logp, ent = completion_logps(model, batch)  # [N, C] x2
        old = torch.where(batch["has_old"].unsqueeze(1), batch["old_logp"], logp.detach())  # fresh: ratio 1
        value, m = grpo_loss(logp, batch["advantages"], mask, old_logp=old, ref_logp=batch.get("ref_logp"),
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                             sequence_mask=batch["sequence_mask"], entropy=ent)
        span = span_before(ids, close_ids, mask) if close_ids else mask.bool()
        critical = top_entropy_per_sequence(ent, span, cfg.critical_top_fraction)  # [N], NaN without a span
        n = float(count(batch))
        sums = {k: m[k] * n for k in ("clip_frac", "clip_frac_low", "clip_frac_high", "kl_mean", "ratio_mean")
                if not math.isnan(m[k])}
        sums.update({"entropy:sum": float((ent * mask).sum()), "entropy:n": float(mask.sum()),
                     "entropy_critical:sum": float(critical.nansum()),
                     "entropy_critical:n": float((~critical.isnan()).sum())})
        return LossOutput(value * n, sums)

    return Objective(loss=loss, units=count, name="loss")


def update(run: Any, batch: Rollouts, prompts: Sequence[Sample], processor: Any, cfg: GRPOConfig,
           objective: Objective, loop_cfg: TrainConfig, total: int, ref: Any, needs_old: bool) -> dict[str, float]:
    """`num_iterations` optimiser steps on this process's contiguous share of the batch; returns the last
    step's metrics with the first step's entropy."""
    rank, world = dist.world_info()
    share, tok = dist.shard(range(len(batch.items)), rank, world), processor.tokenizer
    micro = micro_batches(processor, prompts, batch.items, batch.advantages, share, loop_cfg.micro_batch_size,
                          think=cfg.think, mask_truncated=cfg.mask_truncated_completions,
                          pad_id=tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
    if ref is not None:
        for b, lp in zip(micro, batch_logps(ref, micro, run.accelerator.device, run.accelerator.autocast), strict=True):
            b["ref_logp"] = lp
    if needs_old:  # the old policy: the weights before this batch's first update
        set_old_logps(micro, batch_logps(run.model, micro, run.accelerator.device, run.accelerator.autocast),
                      batch.items, share)
    metrics: dict[str, float] = {}
    for k in range(cfg.num_iterations):
        if run.state.step >= total:
            break
        step = train_step(run.accelerator, run.model, run.optimizer, run.scheduler, micro, objective, loop_cfg)
        run.state.step += 1
        for name in ("entropy", "entropy_critical"):
            total_, n = step.pop(f"{name}:sum"), step.pop(f"{name}:n")
            if k == 0:
                metrics[name] = total_ / n if n else math.nan
        metrics.update(step)
    return metrics


def train_grpo(vlm: Any, prompts: Sequence[Sample], cfg: GRPOConfig, *, processor: Any = None, engine: Any = None,
               console: Console | None = None) -> dict:
    """Run GRPO on `vlm` (trainable parts already chosen) over `prompts`; returns the summary."""
    from r1v.processing.processor import Processor

    cfg.validate()
    tc, tok = cfg.train, vlm.tokenizer
    rank, world = dist.ensure_process_group()
    rows_local = dist.even_shard(cfg.prompts_per_step, world, "prompts_per_step") * cfg.num_generations
    processor = processor or Processor(tok, vlm.spec)
    loop_cfg = replace(tc, grad_accum=math.ceil(rows_local / tc.micro_batch_size))
    accelerator = setup_accelerator(loop_cfg)
    rollout_vlm = rollout_copy(vlm, accelerator, tc.fsdp) if engine is None and cfg.engine == "transformers" else None
    ref = frozen_reference(vlm.model, accelerator) if cfg.beta > 0 else None  # the starting weights
    engine = engine or make_engine(cfg.engine, rollout_vlm or vlm, processor, folder=tc.out_dir / "rollout_model",
                                   seed=tc.seed, vllm=cfg.vllm)
    reward = partial(score, prompts=prompts, reward_fn=build_reward(cfg),
                     rm=reward_model_scorer(cfg, accelerator.device), rm_weight=cfg.reward_model_weight)
    pool = prefilter(engine, prompts, sampling(cfg), tok, reward, cfg.prompts_per_step // world,
                     tc.out_dir / "prefilter.json", tc.resume) if cfg.prefilter else list(range(len(prompts)))
    per_epoch = len(pool) // cfg.prompts_per_step
    if per_epoch == 0:
        raise ConfigError(f"data: {len(pool)} prompts, fewer than prompts_per_step={cfg.prompts_per_step}")
    total = tc.max_steps if tc.max_steps is not None else per_epoch * tc.epochs * cfg.num_iterations
    run = prepare_run(vlm.model, loop_cfg, total, accelerator=accelerator, extra={"rollouts": 0},
                      run_config=to_dict(cfg), description="grpo")
    state, main, logger, progress = run.state, accelerator.is_main_process, run.logger, run.progress
    ref = place_reference(ref, accelerator, tc.fsdp) if ref is not None else None
    buffer = SelectiveSampleBuffer(cfg.ssb) if cfg.ssb is not None else None
    if buffer is not None and state.extra.get("ssb") is not None:
        buffer.load_state_dict(state.extra["ssb"])
    objective = grpo_objective(cfg, tok.encode(THINK_CLOSE, add_special_tokens=False))
    sync = partial(sync_weights, run.model, accelerator, engine, rollout_vlm)
    batches = rollout_batches(engine, prompts, pool, cfg, tok, reward, buffer, int(state.extra["rollouts"]),
                              state.data_seed, sync, synced=run.resumed is None)
    metrics: dict[str, float] = {}
    try:
        while state.step < total:
            started = time.perf_counter()
            batch = next(batches)
            state.epoch, state.step_in_epoch = divmod(batch.index, per_epoch)
            metrics = {**batch.metrics, **update(run, batch, prompts, processor, cfg, objective, loop_cfg, total, ref,
                                                 needs_old=cfg.num_iterations > 1 or buffer is not None)}
            metrics["step_time_s"] = time.perf_counter() - started
            state.extra["rollouts"] = batch.index + 1
            state.samples_seen += cfg.prompts_per_step * cfg.num_generations
            logger.log(state.step, metrics)
            progress.update(state.step, f"reward {metrics['reward']:.3f}")
            if state.step >= total or (tc.save_every and state.step // tc.save_every
                                       > (state.step - cfg.num_iterations) // tc.save_every):
                state.extra["ssb"] = buffer.state_dict() if buffer is not None else None
                save_checkpoint(tc.out_dir, state, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                                accelerator=accelerator, keep_last=tc.keep_last, config=to_dict(cfg))
    finally:
        progress.close()
        logger.close()
    sync()
    final = rollout_vlm or replace(vlm, model=plain_module(run.model, accelerator))
    return finish(cfg, final, logger.path, state, run.resumed, metrics, main)


def finish(cfg: GRPOConfig, vlm: Any, metrics_path: Path, state: TrainState, resumed: Path | None,
           last: dict[str, float], main: bool) -> dict:
    """The run's summary (and, on the main process, the final model folder, plots and summary.json)."""
    out = cfg.train.out_dir
    rows = [r for r in read_metrics(metrics_path) if "reward" in r] if main and metrics_path.exists() else []

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return statistics.fmean(vals) if vals else math.nan

    summary = {
        "stage": "grpo", "model": cfg.model, "data": cfg.data, "steps": state.step, "run": str(out),
        "rollout_batches": state.extra.get("rollouts", 0), "resumed_from": str(resumed) if resumed else None,
        "reward_first": rows[0]["reward"] if rows else None, "reward_last": rows[-1]["reward"] if rows else None,
        "effective_ratio_mean": mean("effective_ratio"), "effective_ratio_without_mean": mean("effective_ratio_without"),
        "last_metrics": last, "config": to_dict(cfg),
    }
    if main:
        summary["final"] = str(save_vlm(vlm, out / "final"))
        if cfg.train.plots and rows:
            plot_metrics(metrics_path, out / "plots")
            plot_reward_and_ratio(metrics_path, out / "plots" / "grpo_reward_effective_ratio.png")
        write_summary(out, summary)
    return summary


def run(cfg: GRPOConfig, console: Console | None = None) -> dict:
    """Run the stage from its config; returns the summary written to `train.out_dir/summary.json`."""
    console = console or Console(quiet=dist.world_info()[0] != 0)
    cfg.validate()
    prompts = [r.sample for r in read_stage_data(cfg.data, image_root=cfg.image_root, with_target=False)]
    vlm, params = build_trainable(cfg.model, cfg.train.policy)
    console.print(f"grpo: {len(prompts)} prompts, {cfg.prompts_per_step} x {cfg.num_generations} rollouts per "
                  f"batch, trainable {params['trainable']:,} of {params['total']:,} parameters ({cfg.train.policy})")
    summary = train_grpo(vlm, prompts, cfg, console=console)
    console.print(f"grpo: {summary['steps']} steps, reward {summary['reward_first']} -> {summary['reward_last']}, "
                  f"effective-sample ratio {summary['effective_ratio_mean']:.3f} "
                  f"(without buffer {summary['effective_ratio_without_mean']:.3f})")
    return summary
