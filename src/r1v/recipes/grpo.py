"""GRPO with hybrid rewards and the Selective Sample Buffer (R1V stage 3, R1V2 section 6.3-6.4, R1V3 RL).

    r1v train grpo --config configs/grpo.yaml
    r1v train grpo --config configs/grpo.yaml model=runs/sft/final data=data/rl.jsonl ssb.capacity=512

One rollout batch per loop turn:
1. `prompts_per_step` prompts (seeded epoch order; the position survives resume) -> the rollout engine
   samples `num_generations` (G) completions each (transformers `generate` on CPU, vLLM on GPU, with
   the thinking budget `max_think_tokens`).
2. rewards: the weighted sum of `rewards` (built-in names or `file.py:function` plug-ins), plus
   `reward_model_weight * r_RM` when a reward-model scorer is configured (R1V2's hybrid reward
   `r_rule + r_RM + r_format`).
3. advantages per group: `grpo` `(r - mean) / std`, `grpo_no_std`, or `dr_grpo`.
4. SSB (optional): slots of zero-advantage groups are filled with cached samples drawn with weight
   |A|; each carries the old-policy log-probs it was generated under.
5. `num_iterations` optimiser steps of the clipped surrogate on the whole batch (micro-batches of
   `train.micro_batch_size` rows, gradient = exact mean over the batch's units). Old-policy log-probs
   are computed once per batch (with one iteration they equal the current policy's, so no extra pass);
   KL to a frozen reference copy (k3) only when `beta > 0`.
6. logs: reward mean/std and each part, effective-sample ratio with and without the buffer, kl, clip
   fraction, entropy and critical-token entropy of the thinking span, completion length, truncated
   share; atomic checkpoints with the buffer, RNG and data position in `extra`.

Scale: one training process (any device; bf16 via `train.precision`), rollouts on vLLM with tensor
parallelism for big models. The loop runs under accelerate, but prompts are not yet sharded across
data-parallel processes and only rank 0's buffer is checkpointed, so launch it as a single process.

`train.max_steps` counts optimiser steps (`num_iterations` per rollout batch); checkpoints are written
at rollout-batch boundaries. `train.grad_accum` is derived (the rollout batch split into micro-batches).
Writes `final/`, `checkpoints/`, `metrics.jsonl`, `plots/` (one PNG per metric plus
`grpo_reward_effective_ratio.png`) and `summary.json` into `train.out_dir`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from r1v.algos.advantages import ADVANTAGES, compute_advantages, effective_ratio, zero_variance_groups
from r1v.algos.entropy import span_before, top_entropy_per_sequence
from r1v.algos.losses import LOSS_TYPES, grpo_loss, head_logprobs_and_entropy, logprobs_and_entropy
from r1v.algos.prefix import completion_hidden, completion_logits_shared
from r1v.algos.ssb import SelectiveSampleBuffer, SSBConfig, groups_from_flat
from r1v.config import to_dict
from r1v.data.schema import Sample
from r1v.errors import ConfigError
from r1v.model.tokens import single_token_id
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.recipes.common import build_trainable, load_callable, read_stage_data, save_vlm, write_summary
from r1v.rewards.registry import combine
from r1v.rewards.rules import RewardFn, columns_of
from r1v.rollout.engine import THINK_CLOSE, SamplingParams
from r1v.train import TrainConfig, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from r1v.train.loop import LossOutput, Objective, epoch_order, setup_accelerator, train_step
from r1v.train.metrics import MetricsLogger, Progress, plot_metrics, read_metrics
from r1v.train.optim import build_optimizer, build_scheduler


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
    """Prompts per rollout batch; a batch has prompts_per_step * num_generations rows."""
    max_completion_length: int = 64
    """Generated tokens per completion, thinking included (R1V: 8K)."""
    max_think_tokens: int | None = None
    """Thinking budget: `</think>` is forced after this many tokens (None: no budget)."""
    think: bool = True
    """Use the template's `<think>` prefill."""
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
    """Leave completions that hit max_completion_length out of the loss."""
    rewards: list[RewardItem] = field(default_factory=lambda: [RewardItem("accuracy"), RewardItem("format")])
    reward_model: str | None = None
    """Optional r_RM scorer `path/file.py:function` or `module:function`, `fn(completion, columns) -> float`."""
    reward_model_weight: float = 1.0
    ssb: SSBConfig | None = None
    """Selective Sample Buffer settings; null disables it."""
    critical_top_fraction: float = 0.2
    """Share of highest-entropy thinking tokens per sequence for the critical-token entropy."""
    engine: Literal["transformers", "vllm"] = "transformers"
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir=Path("runs/grpo"), lr=1e-6, weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
        policy="connector+llm", micro_batch_size=8))

    def validate(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"num_generations: GRPO needs >= 2 completions per prompt, got {self.num_generations}")
        for name in ("prompts_per_step", "max_completion_length", "num_iterations"):
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

@dataclass
class RolloutItem:
    """One completion as the update (and the buffer) needs it; `old_logp` `[C]` is set at its first update."""

    sample: Sample
    completion_ids: list[int]
    truncated: bool
    old_logp: torch.Tensor | None = None


def build_reward(cfg: GRPOConfig, reward_model: Callable[..., float] | None = None) -> RewardFn:
    """The weighted reward of `cfg.rewards`, plus `reward_model_weight * r_RM` when a scorer is given
    (as a callable here or as `cfg.reward_model`): R1V2's hybrid `r_rule + r_RM + r_format`."""
    items: list[tuple[Any, float, dict[str, Any]]] = [(r.name, r.weight, dict(r.params)) for r in cfg.rewards]
    scorer = reward_model or (load_callable(cfg.reward_model) if cfg.reward_model else None)
    if scorer is not None:
        def rm(completion: str, columns: dict[str, Any]) -> float:
            return float(scorer(completion, columns))
        items.append((rm, cfg.reward_model_weight, {}))
    return combine(items)


def rollout(engine: Any, samples: Sequence[Sample], cfg: GRPOConfig, tokenizer: Any
            ) -> tuple[list[RolloutItem], list[str]]:
    """G completions per prompt -> flat items (group by group) and their texts. A completion that
    stopped on its own gets the eos token appended, so the policy also learns when to stop. One that
    wrote an image token (`<img>`, `</img>`, `<IMG_CONTEXT>`: a barely trained policy can) is cut
    before it and counts as truncated, because a training forward would take it for an image slot."""
    eos_id = tokenizer.eos_token_id
    banned = {i for i in (single_token_id(tokenizer, t) for t in (IMG_START, IMG_END, IMG_CONTEXT)) if i is not None}
    params = SamplingParams(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                            top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=1.0,
                            max_think_tokens=cfg.max_think_tokens, think=cfg.think, n=cfg.num_generations)
    items, texts = [], []
    for sample, group in zip(samples, engine.generate(list(samples), params), strict=True):
        for c in group:
            ids, text, truncated = list(c.token_ids), c.text, c.finish_reason == "length"
            cut = next((j for j, t in enumerate(ids) if t in banned), None)
            if cut is not None:
                ids, truncated = ids[:cut], True
                text = tokenizer.decode(ids, skip_special_tokens=False)
            elif c.finish_reason == "stop" and eos_id is not None:
                ids.append(eos_id)
            items.append(RolloutItem(sample, ids or [eos_id or 0], truncated))
            texts.append(text)
    return items, texts


def score(reward_fn: RewardFn, items: Sequence[RolloutItem], texts: Sequence[str]) -> tuple[torch.Tensor, dict]:
    """Rewards `[N]` and the mean of each named part."""
    parts = [reward_fn(text, columns_of(it.sample)) for it, text in zip(items, texts, strict=True)]
    rewards = torch.tensor([p["overall"] for p in parts], dtype=torch.float32)
    names = sorted({k for p in parts for k in p if k != "overall"})
    means = {f"reward/{k}": sum(p.get(k, 0.0) for p in parts) / len(parts) for k in names}
    return rewards, means


# ---------------------------------------------------------------------------------------------- update

def collate(processor: Any, items: Sequence[RolloutItem], advantages: Sequence[float], think: bool,
            pad_id: int, mask_truncated: bool) -> dict:
    """Rows -> one batch: left-padded prompts + right-padded completions, and what the loss needs."""
    enc = processor.encode_batch_prompts([it.sample for it in items], think=think)
    n = len(items)
    width = max(len(it.completion_ids) for it in items)
    comp = torch.full((n, width), pad_id, dtype=torch.long)  # [N, C]
    mask = torch.zeros((n, width), dtype=torch.float32)  # [N, C]
    old = torch.zeros((n, width), dtype=torch.float32)  # [N, C]
    has_old = torch.zeros(n, dtype=torch.bool)
    for r, it in enumerate(items):
        k = len(it.completion_ids)
        comp[r, :k] = torch.tensor(it.completion_ids)
        mask[r, :k] = 1.0
        if it.old_logp is not None:
            old[r, :k], has_old[r] = it.old_logp, True
    attn = torch.cat([enc["attention_mask"].long(), mask.long()], dim=1)  # [N, P+C]
    return {
        "input_ids": torch.cat([enc["input_ids"], comp], dim=1), "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "pixel_values": enc.get("pixel_values"), "completion_ids": comp, "completion_mask": mask,
        "advantages": torch.tensor(list(advantages), dtype=torch.float32), "old_logp": old, "has_old": has_old,
        "sequence_mask": torch.tensor([not (mask_truncated and it.truncated) for it in items]),
        "ref_logp": None, "prompt_len": int(enc["input_ids"].shape[1]),
    }


def completion_logits(model: Any, batch: dict) -> torch.Tensor:
    """Logits predicting each completion token, `[N, C, V]`; the LM head runs on completion positions only.
    Text-only batches run each distinct prompt once (`r1v.algos.prefix`: a group's G rows share it)."""
    width = batch["completion_ids"].shape[1]
    if batch.get("pixel_values") is None and batch.get("prompt_len") is not None:
        shared = completion_logits_shared(model, batch["input_ids"], batch["attention_mask"],
                                          batch["position_ids"], int(batch["prompt_len"]))
        if shared is not None:
            return shared
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
    return model(**kwargs, use_cache=False, logits_to_keep=width + 1).logits[:, :-1]


def completion_logps(model: Any, batch: dict, with_entropy: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and, without gradient, entropy) of each completion token `[N, C]`, 0 on padding.

    The LM head runs only on real completion tokens (`r1v.algos.prefix.completion_hidden`, each distinct
    prompt once when it can); a model that cannot be split into backbone and head goes through
    `completion_logits`. Both give the same values and gradients.
    """
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    pixels = batch.get("pixel_values")
    if pixels is not None:
        pixels = pixels.to(next(model.parameters()).dtype)
    split = completion_hidden(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                              int(batch["prompt_len"]), pixels) if batch.get("prompt_len") is not None else None
    if split is None:
        return logprobs_and_entropy(completion_logits(model, batch), ids, mask, with_entropy=with_entropy)
    hidden, head = split
    return head_logprobs_and_entropy(hidden, head, ids, mask, with_entropy=with_entropy)


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


@dataclass
class Captured:
    """What the first forward of a batch leaves behind: per-row log-probs and entropy statistics."""

    logp: dict[int, torch.Tensor] = field(default_factory=dict)
    entropy_sum: float = 0.0
    tokens: float = 0.0
    critical: list[float] = field(default_factory=list)


def grpo_objective(cfg: GRPOConfig, close_ids: Sequence[int], sink: list[Captured | None]) -> Objective:
    """The clipped surrogate as an `Objective` for `r1v.train.train_step` (sum over units + metric sums)."""
    count = units(cfg.loss_type)

    def loss(model: Any, batch: dict) -> LossOutput:
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        logp, ent = completion_logps(model, batch)  # [N, C] x2
        old = torch.where(batch["has_old"].unsqueeze(1), batch["old_logp"], logp.detach())
        value, m = grpo_loss(logp, batch["advantages"], mask, old_logp=old, ref_logp=batch.get("ref_logp"),
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                             sequence_mask=batch["sequence_mask"], entropy=ent)
        cap = sink[0]
        if cap is not None:  # first iteration on this batch: keep old log-probs and entropy stats
            lengths = mask.sum(1).long().tolist()
            for r, row in enumerate(batch["rows"].tolist()):
                cap.logp[row] = logp[r, :lengths[r]].detach().float().cpu()
            cap.entropy_sum += float((ent * mask).sum())
            cap.tokens += float(mask.sum())
            span = span_before(ids, close_ids, mask) if close_ids else mask.bool()
            per_seq = top_entropy_per_sequence(ent, span, cfg.critical_top_fraction)
            cap.critical.extend(v for v in per_seq.tolist() if not math.isnan(v))
        n = float(count(batch))
        keep = ("clip_frac", "clip_frac_low", "clip_frac_high", "kl_mean", "ratio_mean")
        return LossOutput(value * n, {k: m[k] * n for k in keep if not math.isnan(m[k])})

    return Objective(loss=loss, units=count, name="loss")


@torch.no_grad()
def fill_logps(model: Any, batches: Sequence[dict], accelerator: Any, key: str) -> None:
    """Compute log-probs of each batch's completions with `model` into `batch[key]` (no gradient)."""
    for batch in batches:
        on = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.autocast():
            logp, _ = completion_logps(model, on, with_entropy=False)
        if key == "old_logp":
            batch["old_logp"] = torch.where(batch["has_old"].unsqueeze(1), batch["old_logp"], logp.cpu())
            batch["has_old"] = torch.ones_like(batch["has_old"])
        else:
            batch[key] = logp.cpu()


# ---------------------------------------------------------------------------------------------- loop

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


def train_grpo(vlm: Any, prompts: Sequence[Sample], cfg: GRPOConfig, *, processor: Any = None, engine: Any = None,
               reward_model: Callable[..., float] | None = None, console: Console | None = None) -> dict:
    """Run GRPO on `vlm` (trainable parts already chosen) over `prompts`; returns the summary."""
    from accelerate.utils import set_seed

    cfg.validate()
    console = console or Console()
    tc = cfg.train
    set_seed(tc.seed)
    if processor is None:
        from r1v.processing.processor import Processor

        processor = Processor(vlm.tokenizer, vlm.spec)
    tok = vlm.tokenizer
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos_id or 0)
    close_ids = tok.encode(THINK_CLOSE, add_special_tokens=False)  # several tokens where it is plain text
    reward_fn = build_reward(cfg, reward_model)
    per_epoch = len(prompts) // cfg.prompts_per_step
    if per_epoch == 0:
        raise ConfigError(f"data: {len(prompts)} prompts, fewer than prompts_per_step={cfg.prompts_per_step}")
    rows = cfg.prompts_per_step * cfg.num_generations
    n_micro = math.ceil(rows / tc.micro_batch_size)
    loop_cfg = replace(tc, grad_accum=n_micro)
    total = tc.max_steps if tc.max_steps is not None else per_epoch * tc.epochs * cfg.num_iterations

    accelerator = setup_accelerator(loop_cfg)
    model = vlm.model
    if tc.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = frozen_reference(model).to(accelerator.device) if cfg.beta > 0 else None
    optimizer = build_optimizer(model, loop_cfg)
    scheduler = build_scheduler(optimizer, loop_cfg, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    engine = engine or make_engine(cfg, vlm, processor)
    buffer = SelectiveSampleBuffer(cfg.ssb) if cfg.ssb is not None else None

    state = TrainState(data_seed=tc.seed, extra={"rollouts": 0})
    resumed = latest_checkpoint(tc.out_dir) if tc.resume else None
    if resumed is not None:
        state = load_checkpoint(resumed, model=model, optimizer=optimizer, scheduler=scheduler,
                                accelerator=accelerator)
        if buffer is not None and state.extra.get("ssb") is not None:
            buffer.load_state_dict(state.extra["ssb"])
    logger = MetricsLogger(tc.out_dir, tc.report_to, enabled=accelerator.is_main_process,
                           resume_step=state.step if resumed else None, run_config=to_dict(cfg))
    progress = Progress(total, start=state.step, enabled=accelerator.is_main_process and tc.progress,
                        description="grpo")
    objective_sink: list[Captured | None] = [None]
    objective = grpo_objective(cfg, close_ids, objective_sink)
    metrics: dict[str, float] = {}
    synced_at = state.step
    try:
        while state.step < total:
            started = time.perf_counter()
            r = int(state.extra["rollouts"])
            state.epoch, state.step_in_epoch = divmod(r, per_epoch)
            order = epoch_order(len(prompts), state.data_seed, state.epoch)
            start = state.step_in_epoch * cfg.prompts_per_step
            batch_prompts = [prompts[i] for i in order[start:start + cfg.prompts_per_step]]

            if hasattr(engine, "sync_weights") and state.step != synced_at:
                engine.sync_weights(accelerator.unwrap_model(model))
            synced_at = state.step
            model.eval()
            gen_started = time.perf_counter()
            items, texts = rollout(engine, batch_prompts, cfg, tok)
            gen_s = time.perf_counter() - gen_started
            model.train()
            rewards, parts = score(reward_fn, items, texts)
            adv = compute_advantages(cfg.advantage, rewards, cfg.num_generations)  # [N]
            metrics = {"reward": rewards.mean().item(), "reward_std": rewards.std().item(), **parts,
                       "frac_reward_zero_std": zero_variance_groups(rewards, cfg.num_generations).float().mean().item(),
                       "completion_length": sum(len(it.completion_ids) for it in items) / len(items),
                       "truncated_share": sum(it.truncated for it in items) / len(items)}
            if buffer is not None:
                filled = buffer.fill(groups_from_flat(items, adv, cfg.num_generations), step=r)
                batch_items = [it.payload for it in filled.items]
                batch_adv = [it.advantage for it in filled.items]
                metrics.update({"effective_ratio": filled.stats["effective_ratio_with"],
                                "effective_ratio_without": filled.stats["effective_ratio_without"],
                                "ssb/from_buffer": filled.stats["from_buffer"],
                                "ssb/buffer_size": filled.stats["buffer_size"]})
            else:
                batch_items, batch_adv = items, adv.tolist()
                metrics["effective_ratio"] = metrics["effective_ratio_without"] = effective_ratio(adv)

            micro = []
            for s in range(0, rows, tc.micro_batch_size):
                b = collate(processor, batch_items[s:s + tc.micro_batch_size], batch_adv[s:s + tc.micro_batch_size],
                            cfg.think, pad_id, cfg.mask_truncated_completions)
                b["rows"] = torch.arange(s, s + len(b["advantages"]))
                micro.append(b)
            if ref is not None:
                fill_logps(ref, micro, accelerator, "ref_logp")
            if cfg.num_iterations > 1:
                fill_logps(model, micro, accelerator, "old_logp")

            cap = Captured()
            step_metrics: dict[str, float] = {}
            for k in range(cfg.num_iterations):
                if state.step >= total:
                    break
                objective_sink[0] = cap if k == 0 else None
                step_metrics = train_step(accelerator, model, optimizer, scheduler, micro, objective, loop_cfg)
                state.step += 1
                progress.update(state.step, f"reward {metrics['reward']:.3f}")
            objective_sink[0] = None
            for row, it in enumerate(batch_items):  # old-policy log-probs for the buffer
                if it.old_logp is None and row in cap.logp:
                    it.old_logp = cap.logp[row] if cfg.num_iterations == 1 else None
            if cfg.num_iterations > 1:
                for b in micro:
                    for r_i, row in enumerate(b["rows"].tolist()):
                        if batch_items[row].old_logp is None:
                            n_tok = len(batch_items[row].completion_ids)
                            batch_items[row].old_logp = b["old_logp"][r_i, :n_tok].clone()
            metrics.update(step_metrics)
            metrics["entropy"] = cap.entropy_sum / cap.tokens if cap.tokens else float("nan")
            metrics["entropy_critical"] = sum(cap.critical) / len(cap.critical) if cap.critical else float("nan")
            metrics.update({"generation_s": gen_s, "step_time_s": time.perf_counter() - started})
            state.extra["rollouts"] = r + 1
            state.samples_seen += rows
            logger.log(state.step, metrics)
            save_now = state.step >= total or (tc.save_every and state.step // tc.save_every
                                               > (state.step - cfg.num_iterations) // tc.save_every)
            if save_now:
                state.extra["ssb"] = buffer.state_dict() if buffer is not None else None
                save_checkpoint(tc.out_dir, state, model=model, optimizer=optimizer, scheduler=scheduler,
                                accelerator=accelerator, keep_last=tc.keep_last, config=to_dict(cfg))
    finally:
        progress.close()
        logger.close()
    return _finish(cfg, vlm, logger.path, state, resumed, metrics, accelerator.is_main_process)


def plot_reward_and_ratio(metrics_path: Path, target: Path) -> Path:
    """One PNG: mean reward, and the effective-sample ratio with vs without the buffer, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "reward" in r]
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [r["reward"] for r in rows], marker=".")
    ax1.set(title="mean reward", xlabel="step")
    ax2.plot(steps, [r["effective_ratio"] for r in rows], marker=".", label="with buffer (trained on)")
    ax2.plot(steps, [r["effective_ratio_without"] for r in rows], marker=".", label="without buffer")
    ax2.set(title="effective-sample ratio", xlabel="step", ylim=(0, 1.05))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def _finish(cfg: GRPOConfig, vlm: Any, metrics_path: Path, state: TrainState, resumed: Path | None,
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
    console = console or Console()
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
