"""The training loop every stage reuses: accelerate set-up, exact loss normalisation, clipping, schedule.

A stage supplies an `Objective`: `loss(model, batch)` returns the SUM of its per-unit losses (units are
label tokens for SFT, pairs for DPO, ...) and `units(batch)` counts those units before the forward.
One optimiser step covers `grad_accum` micro-batches on each of the `world` processes; every
micro-batch's sum is divided by the unit count of the WHOLE global batch, so the gradient is the mean
over all units of the step whatever the split into micro-batches and processes (1 process x batch 8 ==
2 processes x batch 4 == 1 process x batch 2 x accum 4, up to float rounding).

    from r1v.train import TrainConfig, sft_objective, train
    result = train(model, dataset, sft_objective(), cfg, collate_fn=processor.collate_training)

Pieces for loops that make their own batches (GRPO): `setup_accelerator`, `train_step`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r1v.config import to_dict
from r1v.errors import ConfigError
from r1v.processing.processor import IGNORE_INDEX
from r1v.train.config import TrainConfig
from r1v.train.metrics import MetricsLogger, Progress, plot_metrics
from r1v.train.optim import build_optimizer, build_scheduler
from r1v.train.shard import keep_every_gradient, shard_model
from r1v.train.state import TrainState, is_sharded, latest_checkpoint, load_checkpoint, save_checkpoint

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "position_ids", "image_flags")


@dataclass
class LossOutput:
    """A micro-batch's loss as a sum over its units, plus named metric sums (divided by units when logged)."""

    total: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    """What a stage optimises: `loss(model, batch) -> LossOutput` and `units(batch) -> int`."""

    loss: Callable[[nn.Module, dict], LossOutput]
    units: Callable[[dict], int]
    name: str = "loss"


def model_inputs(batch: dict) -> dict:
    """The forward arguments of a collated batch (labels and bookkeeping fields left out)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS and v is not None}


def count_label_tokens(batch: dict) -> int:
    """Predicted tokens in a batch: positions t >= 1 whose label is not -100 (labels align with input_ids)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _accepts(model: nn.Module, name: str, or_kwargs: bool = False) -> bool:
    """Whether `model.forward` takes `name` (or, with `or_kwargs`, any keyword through **kwargs); a DDP/FSDP
    wrapper (`.module`) is looked through, since it forwards every keyword to the wrapped model."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return True
    return or_kwargs and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _output_head(model: nn.Module) -> nn.Module | None:
    """The LM head (`get_output_embeddings()`) of `model`, looking through DDP/FSDP wrappers; None when absent."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else None


def sft_loss(model: nn.Module, batch: dict) -> LossOutput:
    """Summed token cross-entropy over labels != -100 (next-token: logits at t predict labels at t+1).

    The LM head runs only at label positions: `logits_to_keep` narrows the sequence to the positions
    some row needs, and a pre-forward hook on the head (`get_output_embeddings()`) keeps, of those, only
    each row's own label positions ([B, K, D] -> [1, N, D]), so prompt and padding tokens cost no logits
    and no softmax. The hook runs inside the model's own forward, so DDP/FSDP wrappers see a normal call.
    The CE runs in fp32. No KV cache is built (`use_cache=False`): a cache filled during the forward would
    be appended to again when activation checkpointing (FSDP's wrapper) recomputes a layer in the backward.
    """
    labels = batch["labels"]  # [B, T]
    target = labels[:, 1:]  # [B, T-1]
    keep = (target != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)  # [K] positions t predicting t+1
    picked = target[:, keep]  # [B, K]
    inputs = model_inputs(batch)
    if _accepts(model, "use_cache", or_kwargs=True):
        inputs["use_cache"] = False
    if not _accepts(model, "logits_to_keep"):
        logits = model(**inputs).logits[:, :-1][:, keep]  # [B, K, V]
        return LossOutput(total=F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), picked.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="sum"))
    head = _output_head(model)
    rows = picked != IGNORE_INDEX  # [B, K] the exact label positions
    narrowed: list[bool] = []

    def only_labels(_module: nn.Module, args: tuple) -> tuple | None:
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != rows.shape:
            return None  # not the call this loss made (e.g. a head shared with another use): leave it alone
        narrowed.append(True)
        return (hidden[rows.to(hidden.device)].unsqueeze(0), *args[1:])  # [1, N, D]

    handle = head.register_forward_pre_hook(only_labels) if head is not None else None
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    finally:
        if handle is not None:
            handle.remove()
    if narrowed:  # [1, N, V]: every position is a label
        flat, gold = logits.reshape(-1, logits.shape[-1]), picked[rows].to(logits.device)
    else:  # [B, K, V]
        flat, gold = logits.reshape(-1, logits.shape[-1]), picked.reshape(-1)
    total = F.cross_entropy(flat.float(), gold, ignore_index=IGNORE_INDEX, reduction="sum")
    return LossOutput(total=total)


def sft_objective() -> Objective:
    """Token-level SFT: mean cross-entropy over every label token of the global batch."""
    return Objective(loss=sft_loss, units=count_label_tokens, name="sft")


def setup_accelerator(cfg: TrainConfig) -> Any:
    """An accelerate `Accelerator` for `cfg`: cpu/gpu, bf16 autocast or fp32, `grad_accum` micro-batches."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    if PartialState._shared_state and PartialState().num_processes == 1:
        # one process may run several stages with different precision / accumulation: start afresh
        AcceleratorState._reset_state()
        GradientState._reset_state()
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for but no CUDA device is available")
    # a micro-batch without images leaves the vision tower unused on its process: DDP must not wait for it
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                       gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False,
                       kwargs_handlers=[ddp])


def _check_launch(accelerator: Any, cfg: TrainConfig) -> None:
    """The launcher config must agree with `cfg` on accumulation; DeepSpeed gets the micro-batch and clipping."""
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ConfigError(f"grad_accum is {cfg.grad_accum} but the accelerate launch config sets gradient "
                          f"accumulation to {accelerator.gradient_accumulation_steps}; remove it from the launch config")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:  # DeepSpeed cannot read these from a dataloader here: the loop makes its own batches
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum
        ds.pop("train_batch_size", None)
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = cfg.max_grad_norm


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _reduce_sum(accelerator: Any, value: float | torch.Tensor) -> float:
    t = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device).detach().clone()
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return float(t)


def train_step(accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any, micro_batches: Sequence[dict],
               objective: Objective, cfg: TrainConfig) -> dict[str, float]:
    """One optimiser step over this process's `grad_accum` micro-batches; returns step metrics.

    Gradient = sum of unit losses over the global batch / global unit count. accelerate divides each
    backward by `grad_accum` and DDP/FSDP average over processes, so each micro-batch sum is scaled by
    world * grad_accum / units_global to undo both.
    """
    if len(micro_batches) != cfg.grad_accum:
        raise ConfigError(f"train_step got {len(micro_batches)} micro-batches; grad_accum is {cfg.grad_accum}")
    units_global = _reduce_sum(accelerator, sum(objective.units(b) for b in micro_batches))
    scale = accelerator.num_processes * cfg.grad_accum / max(units_global, 1.0)
    lr = scheduler.get_last_lr()[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    metric_sums: dict[str, float] = {}
    for batch in micro_batches:
        with accelerator.accumulate(model), accelerator.autocast():
            out = objective.loss(model, _to_device(batch, accelerator.device))
            accelerator.backward(out.total * scale)
        loss_sum += out.total.detach().double()
        for key, value in out.metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation out of step: the last micro-batch did not sync gradients")
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor norm (FSDP2 parameters)
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    denom = max(units_global, 1.0)
    metrics = {objective.name: _reduce_sum(accelerator, loss_sum) / denom, "lr": lr,
               "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "units": units_global}
    for key, value in metric_sums.items():
        metrics[key] = _reduce_sum(accelerator, value) / denom
    return metrics


def epoch_order(num_samples: int, data_seed: int, epoch: int) -> list[int]:
    """The sample order of `epoch`: a permutation fixed by (data_seed, epoch), so resume needs only the position."""
    gen = torch.Generator().manual_seed(data_seed * 100_003 + epoch)
    return torch.randperm(num_samples, generator=gen).tolist()


def step_indices(order: Sequence[int], step_in_epoch: int, cfg: TrainConfig, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches (dataset indices) for one step: the global batch split by process, then by micro-batch."""
    per_process = cfg.micro_batch_size * cfg.grad_accum
    start = step_in_epoch * per_process * world + rank * per_process
    mine = list(order[start:start + per_process])
    return [mine[i:i + cfg.micro_batch_size] for i in range(0, per_process, cfg.micro_batch_size)]


@dataclass
class PreparedRun:
    """A run ready to step: the accelerator, the (wrapped or sharded) model, optimiser, scheduler, the
    state it starts from (resumed from `resumed` when that is not None), its metrics logger and progress bar
    (both live on the main process only)."""

    accelerator: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    state: TrainState
    resumed: Path | None
    logger: MetricsLogger
    progress: Progress


def prepare_run(model: nn.Module, cfg: TrainConfig, total: int, *, accelerator: Any = None,
                extra: dict | None = None, run_config: dict | None = None, description: str = "train") -> PreparedRun:
    """The set-up every training loop shares (`train`, GRPO): seed, accelerator, gradient checkpointing,
    FSDP2 sharding (`cfg.fsdp`), optimiser and schedule for `total` steps, `accelerator.prepare`, the
    latest checkpoint's state when `cfg.resume`, and the metrics logger (`run_config`: the stage's config,
    default `cfg`) and progress bar."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    accelerator = accelerator or setup_accelerator(cfg)
    _check_launch(accelerator, cfg)
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.fsdp and not is_sharded(model):
        shard_model(model, accelerator)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    if is_sharded(model):  # sharded with FSDP2's fully_shard (train.fsdp, or by the caller): used as it is
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        if str(accelerator.distributed_type).endswith("FSDP"):  # accelerate's FSDP config sharded it
            keep_every_gradient(accelerator.unwrap_model(model))
    state = TrainState(data_seed=cfg.seed, extra=dict(extra or {}))
    resumed = latest_checkpoint(cfg.out_dir) if cfg.resume else None
    if resumed is not None:
        state = load_checkpoint(resumed, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
    main = accelerator.is_main_process
    logger = MetricsLogger(cfg.out_dir, cfg.report_to, enabled=main, resume_step=state.step if resumed else None,
                           run_config=run_config if run_config is not None else to_dict(cfg))
    progress = Progress(total, start=state.step, enabled=main and cfg.progress, description=description)
    return PreparedRun(accelerator, model, optimizer, scheduler, state, resumed, logger, progress)


@dataclass
class TrainResult:
    state: TrainState
    out_dir: Path
    checkpoint: Path | None
    last_metrics: dict[str, float]
    resumed_from: Path | None = None


def train(model: nn.Module, dataset: Sequence[Any], objective: Objective, cfg: TrainConfig, *,
          collate_fn: Callable[[list[Any]], dict], export_fn: Callable[[nn.Module, Path], None] | None = None,
          extra: dict | None = None, on_step: Callable[[TrainState, dict], None] | None = None,
          accelerator: Any = None) -> TrainResult:
    """Train the trainable parameters of `model` on `dataset` for `cfg` (resuming when asked).

    `dataset` is any sized, indexable collection; `collate_fn` turns a list of its items into a batch
    dict with at least what `objective` reads. `export_fn(model, folder)` writes a full model folder
    into each checkpoint. `extra` seeds `state.extra`, which `on_step(state, metrics)` may update and
    which is saved and restored with every checkpoint. The trailing samples that do not fill a whole
    global batch are left out of each epoch (a different subset each epoch).
    """
    cfg.validate()
    accelerator = accelerator or setup_accelerator(cfg)
    world = accelerator.num_processes
    per_step = cfg.samples_per_step(world)
    steps_per_epoch = len(dataset) // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"the dataset has {len(dataset)} samples, fewer than one global batch of {per_step} "
                          f"(micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} x {world} processes)")
    total = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
    run = prepare_run(model, cfg, total, accelerator=accelerator, extra=extra)
    accelerator, model, optimizer, scheduler = run.accelerator, run.model, run.optimizer, run.scheduler
    state, resumed, rank = run.state, run.resumed, accelerator.process_index
    main, logger, progress = accelerator.is_main_process, run.logger, run.progress
    checkpoint = resumed
    metrics: dict[str, float] = {}
    model.train()
    try:
        while state.step < total:
            if state.step_in_epoch >= steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
            order = epoch_order(len(dataset), state.data_seed, state.epoch)
            started = time.perf_counter()
            micro = [collate_fn([dataset[i] for i in idx])
                     for idx in step_indices(order, state.step_in_epoch, cfg, rank, world)]
            metrics = train_step(accelerator, model, optimizer, scheduler, micro, objective, cfg)
            state.step += 1
            state.step_in_epoch += 1
            state.samples_seen += per_step
            metrics["epoch"] = state.epoch + state.step_in_epoch / steps_per_epoch
            metrics["step_time_s"] = time.perf_counter() - started
            if on_step is not None:
                on_step(state, metrics)
            if state.step % cfg.log_every == 0 or state.step == total:
                logger.log(state.step, metrics)
            progress.update(state.step, f"{objective.name} {metrics[objective.name]:.4f}")
            if (cfg.save_every and state.step % cfg.save_every == 0) or state.step == total:
                checkpoint = save_checkpoint(cfg.out_dir, state, model=model, optimizer=optimizer,
                                             scheduler=scheduler, accelerator=accelerator, export_fn=export_fn,
                                             keep_last=cfg.keep_last, config=to_dict(cfg))
    finally:
        progress.close()
        logger.close()
    if main and cfg.plots and logger.path.exists():
        try:
            plot_metrics(logger.path, cfg.out_dir / "plots")
        except Exception as e:  # noqa: BLE001 - plots are a convenience; a finished run stays finished
            warnings.warn(f"could not write plots to {cfg.out_dir / 'plots'}: {e}", stacklevel=2)
    return TrainResult(state=state, out_dir=cfg.out_dir, checkpoint=checkpoint, last_metrics=metrics,
                       resumed_from=resumed)
