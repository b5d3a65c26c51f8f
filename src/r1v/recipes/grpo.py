"""GRPO with hybrid rewards and the Selective Sample Buffer (R1V stage 3, R1V2 6.3-6.4, R1V3 RL), on 1 or N processes.

    r1v train grpo --config configs/grpo.yaml
    torchrun --nproc_per_node 2 $(which r1v) train grpo --config configs/grpo.yaml      # 2 CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m r1v.cli train grpo --config ...   # GPUs

Each turn of the loop is one rollout batch of `prompts_per_step` prompts (the global batch, a seeded epoch
order whose position survives resume):
1. `rollout`: each process samples `num_generations` (G) completions for its contiguous share of the prompts
   (a group stays on one process). Completion j of prompt i in batch r draws from the random stream
   (seed, r, i, j), so 1 and N processes sample the same completions.
2. `score`: each process scores its own completions: the weighted `rewards` (built-in names or plug-ins)
   plus `reward_model_weight * r_RM` (R1V2's hybrid r_rule + r_RM + r_format) from a reward-model folder run
   in batches on the process's device, images and system prompt included.
3. Every process gathers every completion's ids and reward (a few bytes a token) and computes the same
   advantages and, with the buffer, the same fill (same inputs, same seeded generator): what is buffered and
   drawn is identical everywhere, and the effective-sample ratio is the whole batch's.
4. `update`: each process trains on its contiguous share of the (filled) batch, `num_iterations` optimiser
   steps of the clipped surrogate with the gradient the mean over the global batch's units. Iteration 0's
   forwards all run before its optimiser step, so the log-probs they return are the old policy's: they fill
   `old_logp` for later iterations and for the buffer. KL (k3) to a frozen reference when `beta > 0`.
5. Metrics of the whole batch; checkpoints at rollout-batch boundaries keep the trainable weights, the buffer
   and the data position, and each is a candidate for R1V3's checkpoint choice (`r1v train connector-tune
   select.checkpoints=[OUT]`; `train.keep_last` says how many stay).
Under FSDP2 (`train.fsdp: true` with torchrun, or accelerate's FSDP config) the rollouts run on an unsharded
copy of the model that receives the trained weights after every update. `prefilter: true` first rolls out
every prompt once and drops those whose group has zero reward variance (R1V2's offline buffer).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from r1v import distributed as dist
from r1v.algos.advantages import ADVANTAGES, compute_advantages, effective_ratio, zero_variance_groups
from r1v.algos.entropy import span_before, top_entropy_per_sequence
from r1v.algos.logprobs import completion_logps
from r1v.algos.losses import LOSS_TYPES, grpo_loss
from r1v.algos.ssb import SelectiveSampleBuffer, SSBConfig, groups_from_flat, split_by_variance
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Sample
from r1v.data.sources import atomic_write_text
from r1v.data.stage_data import read_stage_data
from r1v.errors import ConfigError
from r1v.model.tokens import single_token_id
from r1v.model.trainable import build_trainable, save_vlm
from r1v.plugins import load_callable
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.rewards.registry import combine
from r1v.rewards.rules import RewardFn, columns_of
from r1v.rollout.batch import RolloutItem, training_batch
from r1v.rollout.engine import THINK_CLOSE, SamplingParams
from r1v.rollout.streams import stream_key
from r1v.train import TrainConfig, TrainState, save_checkpoint
from r1v.train.loop import LossOutput, Objective, epoch_order, setup_accelerator, train_step
from r1v.train.metrics import MetricsLogger, Progress, plot_metrics, plot_reward_and_ratio, read_metrics
from r1v.train.shard import copy_trainable, shard_model
from r1v.train.state import full_state_dict, is_sharded, unsharded_copy

Scorer = Callable[[Sequence[Sample], Sequence[str]], list[float]]


@dataclass
class RewardItem:
    """One reward term: a built-in name (accuracy, format, length, repetition, hybrid, r1v) or a
    `path/file.py:function` plug-in, its weight and keyword parameters."""

    name: str = "accuracy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class VLLMOptions:
    """Settings of the vLLM rollout engine (`engine: vllm`)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    dtype: str = "bfloat16"


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


# ---------------------------------------------------------------------------------------------- rollouts

def build_reward(cfg: GRPOConfig) -> RewardFn:
    """The weighted rule/plug-in reward of `cfg.rewards` (one completion at a time)."""
    return combine([(r.name, r.weight, dict(r.params)) for r in cfg.rewards])


def reward_model_scorer(cfg: GRPOConfig, device: Any) -> Scorer | None:
    """r_RM as `(prompt samples, completion texts) -> scores`: a reward-model folder loaded on `device` and
    run in batches of `reward_model_batch_size`, or a per-completion plug-in; None without a reward model."""
    if cfg.reward_model is None:
        return None
    if Path(cfg.reward_model).is_dir():
        from r1v.rewards.reward_model import RewardModel

        return RewardModel.load(cfg.reward_model, device=str(device), batch_size=cfg.reward_model_batch_size).score
    fn = load_callable(cfg.reward_model)
    return lambda samples, texts: [float(fn(t, columns_of(s))) for s, t in zip(samples, texts, strict=True)]


def rollout(engine: Any, prompts: Sequence[Sample], indices: Sequence[int], cfg: GRPOConfig, tokenizer: Any,
            batch: int) -> tuple[list[RolloutItem], list[str]]:
    """G completions of each prompt `prompts[i]`, i in `indices` -> flat items (group by group) and texts.
    A completion that stopped on its own gets the eos token appended, so the policy also learns when to
    stop; one that wrote an image token is cut before it and counts as truncated (a training forward would
    take it for an image slot)."""
    eos_id = tokenizer.eos_token_id
    banned = {i for i in (single_token_id(tokenizer, t) for t in (IMG_START, IMG_END, IMG_CONTEXT)) if i is not None}
    params = SamplingParams(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                            top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=1.0,
                            max_think_tokens=cfg.max_think_tokens, think=cfg.think, n=cfg.num_generations)
    seeds = [stream_key(cfg.train.seed, batch, i) for i in indices]
    groups = engine.generate([prompts[i] for i in indices], params, seeds=seeds)
    items, texts = [], []
    for index, group in zip(indices, groups, strict=True):
        for c in group:
            ids, text, truncated = list(c.token_ids), c.text, c.finish_reason == "length"
            cut = next((j for j, t in enumerate(ids) if t in banned), None)
            if cut is not None:
                ids, truncated = ids[:cut], True
                text = tokenizer.decode(ids, skip_special_tokens=False)
            elif c.finish_reason == "stop" and eos_id is not None:
                ids.append(eos_id)
            items.append(RolloutItem(index, ids or [eos_id or 0], truncated))
            texts.append(text)
    return items, texts


def score(items: Sequence[RolloutItem], texts: Sequence[str], prompts: Sequence[Sample], reward_fn: RewardFn,
          rm: Scorer | None, rm_weight: float) -> None:
    """Set each item's reward and named parts (`rm` scores all completions in one batched call)."""
    samples = [prompts[it.prompt] for it in items]
    rm_scores = rm(samples, texts) if rm is not None and items else [0.0] * len(items)
    for it, sample, text, r_rm in zip(items, samples, texts, rm_scores, strict=True):
        parts = reward_fn(text, columns_of(sample))
        if rm is not None:
            parts = {**parts, "rm": float(r_rm), "overall": parts["overall"] + rm_weight * float(r_rm)}
        it.reward, it.parts = float(parts["overall"]), {k: float(v) for k, v in parts.items() if k != "overall"}


# ---------------------------------------------------------------------------------------------- update

def units(loss_type: str) -> Callable[[dict], int]:
    """What the loss is a mean over: masked tokens (token), sequences with tokens (sequence), rows (dr_grpo)."""
    def count(batch: dict) -> int:
        mask = batch["completion_mask"].bool() & batch["sequence_mask"].unsqueeze(1)
        if loss_type == "token":
            return int(mask.sum())
        if loss_type == "sequence":
            return int((mask.sum(1) > 0).sum())
        return int(mask.shape[0])
    return count


def grpo_objective(cfg: GRPOConfig, close_ids: Sequence[int]) -> Objective:
    """The clipped surrogate as an `Objective`; each micro-batch also returns (in `LossOutput.outputs`) its
    rows' log-probs and the entropy statistics of the thinking span."""
    count = units(cfg.loss_type)

    def loss(model: Any, batch: dict) -> LossOutput:
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        logp, ent = completion_logps(model, batch)  # [N, C] x2
        old = torch.where(batch["has_old"].unsqueeze(1), batch["old_logp"], logp.detach())
        value, m = grpo_loss(logp, batch["advantages"], mask, old_logp=old, ref_logp=batch.get("ref_logp"),
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                             sequence_mask=batch["sequence_mask"], entropy=ent)
        span = span_before(ids, close_ids, mask) if close_ids else mask.bool()
        critical = top_entropy_per_sequence(ent, span, cfg.critical_top_fraction).tolist()
        lengths = mask.sum(1).long().tolist()
        outputs = {"logp": [logp[r, :k].detach().float().cpu() for r, k in enumerate(lengths)],
                   "entropy_sum": float((ent * mask).sum()), "tokens": float(mask.sum()),
                   "critical": [v for v in critical if not math.isnan(v)]}
        n = float(count(batch))
        keep = ("clip_frac", "clip_frac_low", "clip_frac_high", "kl_mean", "ratio_mean")
        return LossOutput(value * n, {k: m[k] * n for k in keep if not math.isnan(m[k])}, outputs)

    return Objective(loss=loss, units=count, name="loss")


@torch.no_grad()
def fill_ref_logps(ref: Any, batches: Sequence[dict], accelerator: Any) -> None:
    """The frozen reference's log-probs of each batch's completions into `batch["ref_logp"]`."""
    for batch in batches:
        on = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.autocast():
            batch["ref_logp"] = completion_logps(ref, on, with_entropy=False)[0].cpu()


def update(run: Any, micro: list[dict], cfg: GRPOConfig, objective: Objective, loop_cfg: TrainConfig, total: int
           ) -> tuple[dict[str, float], list[dict]]:
    """`num_iterations` optimiser steps on this process's micro-batches; returns the last step's metrics and
    iteration 0's outputs (the old policy's log-probs of each micro-batch row, entropy statistics)."""
    first: list[dict] = []
    metrics: dict[str, float] = {}
    for k in range(cfg.num_iterations):
        if run.state.step >= total:
            break
        metrics = train_step(run.accelerator, run.model, run.optimizer, run.scheduler, micro, objective, loop_cfg,
                             outputs=first if k == 0 else None)
        run.state.step += 1
        if k == 0:
            for b, out in zip(micro, first, strict=True):  # later iterations keep iteration 0's policy
                for r, lp in enumerate(out["logp"]):
                    if not b["has_old"][r]:
                        b["old_logp"][r, :len(lp)] = lp
                b["has_old"] = torch.ones_like(b["has_old"])
    return metrics, first


def keep_old_logps(items: Sequence[RolloutItem], share: Sequence[int], first: Sequence[dict], world: int) -> None:
    """Give every fresh item of the batch (on every process) the old-policy log-probs its process computed."""
    rows = [r for out in first for r in range(len(out["logp"]))]
    logps = [lp for out in first for lp in out["logp"]]
    for row, lp in dist.gather([(share[i], lp) for i, lp in zip(range(len(rows)), logps, strict=True)], world):
        if items[row].old_logp is None:
            items[row].old_logp = lp


# ---------------------------------------------------------------------------------------------- the run

def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the starting policy for the KL term (its own tensors, no gradients, eval mode)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def make_engine(cfg: GRPOConfig, vlm: Any, processor: Any) -> Any:
    """The rollout engine named by `cfg.engine`."""
    if cfg.engine == "vllm":
        from r1v.rollout.vllm import VLLMEngine

        folder = save_vlm(vlm, cfg.train.out_dir / "rollout_model")
        return VLLMEngine(folder, processor=processor, tensor_parallel_size=cfg.vllm.tensor_parallel_size,
                          gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
                          max_model_len=cfg.vllm.max_model_len, dtype=cfg.vllm.dtype, seed=cfg.train.seed)
    from r1v.rollout.engine import TransformersEngine

    return TransformersEngine(vlm, processor=processor)


def prefilter(engine: Any, prompts: Sequence[Sample], cfg: GRPOConfig, tok: Any, reward: Callable, world: int,
              rank: int) -> tuple[list[int], dict]:
    """Offline SSB: every prompt rolled out once (sharded, batch key -1), zero-variance prompts dropped."""
    mine = dist.shard(range(len(prompts)), rank, world)
    step = max(1, cfg.prompts_per_step // world)
    items: list[RolloutItem] = []
    for start in range(0, len(mine), step):
        part, texts = rollout(engine, prompts, mine[start:start + step], cfg, tok, -1)
        reward(part, texts)
        items += part
    everything = dist.gather(items, world)
    groups = [[it.reward for it in everything[i:i + cfg.num_generations]]
              for i in range(0, len(everything), cfg.num_generations)]
    res = split_by_variance([everything[i].prompt for i in range(0, len(everything), cfg.num_generations)], groups)
    return res.kept, res.stats


def train_grpo(vlm: Any, prompts: Sequence[Sample], cfg: GRPOConfig, *, processor: Any = None, engine: Any = None,
               console: Console | None = None) -> dict:
    """Run GRPO on `vlm` (trainable parts already chosen) over `prompts`; returns the summary."""
    from r1v.processing.processor import Processor
    from r1v.train.loop import prepare_run

    cfg.validate()
    tc, g = cfg.train, cfg.num_generations
    rank, world = dist.ensure_process_group()
    rows_local = dist.even_shard(cfg.prompts_per_step, world, "prompts_per_step") * g
    processor = processor or Processor(vlm.tokenizer, vlm.spec)
    tok = vlm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    loop_cfg = replace(tc, grad_accum=math.ceil(rows_local / tc.micro_batch_size))
    accelerator = setup_accelerator(loop_cfg)
    launch_shards = str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED"))
    sharded = (tc.fsdp and world > 1) or launch_shards
    rollout_vlm = copy.deepcopy(vlm) if sharded and engine is None and cfg.engine == "transformers" else None
    ref = frozen_reference(vlm.model) if cfg.beta > 0 else None
    if ref is not None and str(accelerator.distributed_type).endswith("DEEPSPEED"):
        raise ConfigError("beta > 0 under DeepSpeed: the frozen reference needs a ZeRO-3 engine of its own, which "
                          "r1v does not build; launch with configs/accelerate/fsdp2.yaml or set beta: 0")
    engine = engine or make_engine(cfg, rollout_vlm or vlm, processor)
    rm = reward_model_scorer(cfg, accelerator.device)
    reward_fn = build_reward(cfg)

    def reward(items: Sequence[RolloutItem], texts: Sequence[str]) -> None:
        score(items, texts, prompts, reward_fn, rm, cfg.reward_model_weight)

    pool, kept_file = list(range(len(prompts))), tc.out_dir / "prefilter.json"
    if cfg.prefilter:
        if tc.resume and kept_file.exists():
            pool = json.loads(kept_file.read_text())["kept"]
        else:
            pool, stats = prefilter(engine, prompts, cfg, tok, reward, world, rank)
            if rank == 0:
                atomic_write_text(kept_file, json.dumps({"kept": pool, **stats}, indent=2, default=str) + "\n")
    per_epoch = len(pool) // cfg.prompts_per_step
    if per_epoch == 0:
        raise ConfigError(f"data: {len(pool)} prompts, fewer than prompts_per_step={cfg.prompts_per_step}")
    total = tc.max_steps if tc.max_steps is not None else per_epoch * tc.epochs * cfg.num_iterations
    run = prepare_run(vlm.model, loop_cfg, total, accelerator=accelerator, extra={"rollouts": 0})
    state = run.state
    if ref is not None and tc.fsdp and world > 1:
        shard_model(ref, accelerator)
    elif ref is not None:
        ref = accelerator.prepare_model(ref, evaluation_mode=True) if launch_shards else ref.to(accelerator.device)
    buffer = SelectiveSampleBuffer(cfg.ssb) if cfg.ssb is not None else None
    if buffer is not None and state.extra.get("ssb") is not None:
        buffer.load_state_dict(state.extra["ssb"])
    objective = grpo_objective(cfg, tok.encode(THINK_CLOSE, add_special_tokens=False))
    main = accelerator.is_main_process
    logger = MetricsLogger(tc.out_dir, tc.report_to, enabled=main, resume_step=state.step if run.resumed else None,
                           run_config=to_dict(cfg))
    progress = Progress(total, start=state.step, enabled=main and tc.progress, description="grpo")
    metrics: dict[str, float] = {}
    synced = -1 if run.resumed else state.step
    try:
        while state.step < total:
            started, r = time.perf_counter(), int(state.extra["rollouts"])
            state.epoch, state.step_in_epoch = divmod(r, per_epoch)
            order = epoch_order(len(pool), state.data_seed, state.epoch)
            start = state.step_in_epoch * cfg.prompts_per_step
            batch_prompts = [pool[i] for i in order[start:start + cfg.prompts_per_step]]
            if state.step != synced:
                sync_rollout_weights(run, engine, rollout_vlm)
                synced = state.step
            run.model.eval()
            mine, texts = rollout(engine, prompts, dist.shard(batch_prompts, rank, world), cfg, tok, r)
            gen_s = time.perf_counter() - started
            run.model.train()
            reward(mine, texts)
            items = dist.gather(mine, world)  # the whole batch, identical on every process
            rewards = torch.tensor([it.reward for it in items], dtype=torch.float32)
            adv = compute_advantages(cfg.advantage, rewards, g)  # [N]
            metrics = batch_metrics(items, rewards, g)
            if buffer is not None:
                filled = buffer.fill(groups_from_flat(items, adv, g), step=r)
                batch_items, batch_adv = [it.payload for it in filled.items], [it.advantage for it in filled.items]
                metrics.update({"effective_ratio": filled.stats["effective_ratio_with"],
                                "effective_ratio_without": filled.stats["effective_ratio_without"],
                                "ssb/from_buffer": filled.stats["from_buffer"],
                                "ssb/buffer_size": filled.stats["buffer_size"]})
            else:
                batch_items, batch_adv = items, adv.tolist()
                metrics["effective_ratio"] = metrics["effective_ratio_without"] = effective_ratio(adv)
            share = dist.shard(range(len(batch_items)), rank, world)
            micro = [training_batch(processor, [prompts[batch_items[i].prompt] for i in rows],
                                    [batch_items[i] for i in rows], [batch_adv[i] for i in rows], think=cfg.think,
                                    pad_id=pad_id, mask_truncated=cfg.mask_truncated_completions)
                     for rows in (share[s:s + tc.micro_batch_size] for s in range(0, len(share), tc.micro_batch_size))]
            if ref is not None:
                fill_ref_logps(ref, micro, accelerator)
            step_metrics, first = update(run, micro, cfg, objective, loop_cfg, total)
            keep_old_logps(batch_items, share, first, world)
            ent_sum, tokens = dist.all_sum([sum(o["entropy_sum"] for o in first), sum(o["tokens"] for o in first)])
            critical = dist.gather([v for o in first for v in o["critical"]], world)
            metrics.update(step_metrics, entropy=ent_sum / tokens if tokens else math.nan,
                           entropy_critical=sum(critical) / len(critical) if critical else math.nan,
                           generation_s=gen_s, step_time_s=time.perf_counter() - started)
            state.extra["rollouts"] = r + 1
            state.samples_seen += len(items)
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
    sync_rollout_weights(run, engine, rollout_vlm)
    return finish(cfg, final_vlm(run, vlm, rollout_vlm), logger.path, state, run.resumed, metrics, main)


def batch_metrics(items: Sequence[RolloutItem], rewards: torch.Tensor, g: int) -> dict[str, float]:
    """Reward mean/std and each part's mean, zero-variance groups, completion length and truncation."""
    names = sorted({k for it in items for k in it.parts})
    return {"reward": rewards.mean().item(), "reward_std": rewards.std().item(),
            **{f"reward/{k}": sum(it.parts.get(k, 0.0) for it in items) / len(items) for k in names},
            "frac_reward_zero_std": zero_variance_groups(rewards, g).float().mean().item(),
            "completion_length": sum(len(it.completion_ids) for it in items) / len(items),
            "truncated_share": sum(it.truncated for it in items) / len(items)}


def sync_rollout_weights(run: Any, engine: Any, rollout_vlm: Any) -> None:
    """Hand the trained weights to whatever generates: the unsharded copy, or the engine's own sync."""
    if rollout_vlm is not None:
        copy_trainable(run.accelerator.unwrap_model(run.model), rollout_vlm.model)
    elif hasattr(engine, "sync_weights"):
        engine.sync_weights(run.accelerator.unwrap_model(run.model))


def final_vlm(run: Any, vlm: Any, rollout_vlm: Any) -> Any:
    """The trained model as a plain module: the synced rollout copy, the gathered shards, or `vlm` itself."""
    if rollout_vlm is not None:
        return rollout_vlm
    bare = run.accelerator.unwrap_model(run.model)
    if is_sharded(bare):
        full = full_state_dict(run.model, run.accelerator)  # every process takes part; rank 0 holds it
        return replace(vlm, model=unsharded_copy(bare, full)) if run.accelerator.is_main_process else vlm
    return vlm


def finish(cfg: GRPOConfig, vlm: Any, metrics_path: Path, state: TrainState, resumed: Path | None,
           last: dict[str, float], main: bool) -> dict:
    out = cfg.train.out_dir
    rows = [r for r in read_metrics(metrics_path) if "reward" in r] if main and metrics_path.exists() else []

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else float("nan")

    summary = {
        "stage": "grpo", "model": cfg.model, "data": cfg.data, "steps": state.step,
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
