"""Memory per GPU for GRPO: the trainer's state, the frozen reference, and the rollout engine's weights and KV cache.

    r1v plan --stage grpo --preset r1v-38b --gpus 8 --placement colocated --rollout-tp 4
    r1v plan --stage grpo --preset r1v-38b --gpus 16 --recommend

Training side (every training GPU): `r1v.model.plan.per_gpu_bytes` for one micro-batch of sequences of
`prompt_tokens + max_completion_length` tokens with a loss on the completion only, plus, when `beta > 0`, the
frozen reference model's bf16 weights, sharded like the policy's (FSDP2 / ZeRO-3) or whole (ddp).

Rollout side (a vLLM engine of tensor-parallel size `tp`; each GPU holds 1/tp of it):
- weights: 2 bytes x all parameters / tp;
- KV cache of one sequence at the full length: `2 (k, v) x layers x kv width x 2 bytes x tokens / tp`;
  the engine runs as many sequences at once as its KV budget holds (vLLM's `gpu_memory_utilization` of the
  GPU, minus its weights and a 1 GiB activation/graph allowance) and queues the rest in waves; the plan
  reports the sequences that fit at once and the waves one rollout batch needs.

Placements:
- `colocated`: the engine shares the training GPUs. The trainer's persistent state (weight and optimiser
  shards, the reference) stays on the GPU while it rolls out. With `sleep` (vLLM's sleep mode, level 1:
  weights moved to CPU RAM and the KV cache freed while the trainer updates) the peak is the larger of the
  update (the trainer's whole footprint) and the rollout (persistent state + the engine); without it the
  engine's memory is held during the update and adds to the trainer's whole footprint.
- `separate`: `rollout_gpus` GPUs serve rollouts (a server the trainer pushes weights to, TRL's vllm-serve
  placement); the other GPUs train. The training side then shards over fewer GPUs.

`recommend` tries every placement and tensor-parallel size for a GPU count and picks, among the layouts
that fit, the one that rolls out a batch in the fewest waves with the most training GPUs (ties: colocated
before separate, smaller tp first).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from r1v.errors import ConfigError
from r1v.model.plan import GIB, RESERVE_BYTES, Cluster, PlanRequest, Shapes, per_gpu_bytes, shapes_of

ENGINE_ALLOWANCE_BYTES = 1 * GIB
PLACEMENTS = ("colocated", "separate")


@dataclass(frozen=True)
class RLPlanRequest(Cluster):
    """A GRPO run to size. Training fields follow `PlanRequest`; rollout fields name vLLM's settings."""

    prompt_tokens: int = 4096
    """Prompt tokens per sequence, image tokens included (13 tiles x 256 = 3328 of them at R1V's maximum)."""
    max_completion_length: int = 8192
    """R1V: 8K."""
    prompts_per_step: int = 64
    num_generations: int = 8
    micro_batch: int = 1
    tiles_per_sample: int = 13
    beta: float = 0.0
    """> 0 loads the frozen reference model."""
    placement: Literal["colocated", "separate"] = "colocated"
    sleep: bool = True
    """Colocated only: free the engine's memory while the trainer updates (vLLM sleep mode)."""
    rollout_tp: int = 1
    rollout_gpus: int = 0
    """Separate placement: GPUs given to rollouts (a multiple of rollout_tp); the rest train."""
    gpu_memory_utilization: float = 0.9
    """The share of a GPU vLLM may use when it has the GPU (separate, or colocated with sleep); colocated
    without sleep gets what the trainer leaves."""

    def validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement: {self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        for name in ("gpus", "prompt_tokens", "max_completion_length", "prompts_per_step", "num_generations",
                     "micro_batch", "rollout_tp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.placement == "colocated":
            if self.gpus % self.rollout_tp:
                raise ConfigError(f"rollout_tp {self.rollout_tp} does not divide the {self.gpus} GPUs")
        else:
            if self.rollout_gpus < self.rollout_tp or self.rollout_gpus % self.rollout_tp:
                raise ConfigError(f"rollout_gpus must be a positive multiple of rollout_tp ({self.rollout_tp}), "
                                  f"got {self.rollout_gpus}")
            if self.rollout_gpus >= self.gpus:
                raise ConfigError(f"rollout_gpus {self.rollout_gpus} leaves no GPU of {self.gpus} to train on")

    @property
    def train_gpus(self) -> int:
        return self.gpus if self.placement == "colocated" else self.gpus - self.rollout_gpus

    @property
    def engines(self) -> int:
        return (self.gpus if self.placement == "colocated" else self.rollout_gpus) // self.rollout_tp


@dataclass
class RLPlan:
    request: RLPlanRequest
    train_per_gpu: dict[str, int]
    rollout_per_gpu: dict[str, int]
    peak_per_gpu: dict[str, int]
    """The training GPUs' peak (colocated: with the engine's share) and, when separate, the rollout GPUs'."""
    concurrent_sequences: int
    """Sequences at the full length one engine holds in its KV cache at once."""
    waves: int
    """Rounds one engine needs for its share of a rollout batch (prompts_per_step x num_generations)."""
    fits: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("train_per_gpu", "rollout_per_gpu", "peak_per_gpu"):
            out[key + "_gib"] = {k: round(v / GIB, 2) for k, v in getattr(self, key).items()}
        return out


def kv_bytes_per_token(shapes: Shapes) -> int:
    """Keys and values of one token over every LLM layer, bf16."""
    return 2 * shapes.llm_layers * shapes.llm_kv * 2


def _training(shapes: Shapes, req: RLPlanRequest) -> dict[str, int]:
    base = PlanRequest(preset=req.preset, gpus=req.train_gpus, policy=req.policy, strategy=req.strategy,
                       seq_len=req.prompt_tokens + req.max_completion_length, micro_batch=req.micro_batch,
                       gpu_mem_gb=req.gpu_mem_gb, tiles_per_sample=req.tiles_per_sample,
                       loss_tokens=req.max_completion_length)
    per, _, _ = per_gpu_bytes(shapes, base)
    per = {k: v for k, v in per.items() if k != "total"}
    shard = req.train_gpus if req.strategy in ("fsdp", "zero3") else 1
    per["reference"] = 2 * shapes.params["total"] // shard if req.beta > 0 else 0
    per["total"] = sum(per.values())
    return per


def _rollout(shapes: Shapes, req: RLPlanRequest, budget: int) -> tuple[dict[str, int], int]:
    """(bytes per GPU of one engine's share, sequences that fit at once) with `budget` bytes per GPU for it."""
    tp = req.rollout_tp
    weights = 2 * shapes.params["total"] // tp
    seq_kv = kv_bytes_per_token(shapes) * (req.prompt_tokens + req.max_completion_length) // tp
    free = budget - weights - ENGINE_ALLOWANCE_BYTES
    concurrent = max(0, free // seq_kv) if seq_kv else 0
    rows = math.ceil(req.prompts_per_step * req.num_generations / req.engines)
    held = min(concurrent, rows)
    per = {"weights": weights, "kv_cache": held * seq_kv, "allowance": ENGINE_ALLOWANCE_BYTES}
    per["total"] = sum(per.values())
    return per, int(concurrent)


def estimate_rl(shapes: Shapes, req: RLPlanRequest) -> RLPlan:
    """The GRPO memory plan for `req` on a model of `shapes` (see the module docstring)."""
    req.validate()
    gpu = int(req.gpu_mem_gb * GIB)
    train = _training(shapes, req)
    notes: list[str] = []
    persistent = train["weights"] + train["optimizer"] + train["reference"] + RESERVE_BYTES
    if req.placement == "separate":
        budget = int(req.gpu_memory_utilization * gpu) - RESERVE_BYTES
    elif req.sleep:  # the engine wakes up beside the trainer's persistent state
        budget = int(req.gpu_memory_utilization * gpu) - persistent
    else:  # the engine lives beside the trainer's whole footprint
        budget = gpu - train["total"]
    rollout, concurrent = _rollout(shapes, req, budget)
    rows = math.ceil(req.prompts_per_step * req.num_generations / req.engines)
    waves = math.ceil(rows / concurrent) if concurrent else 0
    if req.placement == "colocated":
        peak = max(train["total"], persistent + rollout["total"]) if req.sleep else \
            train["total"] + rollout["total"]
        peaks = {"train_gpu": peak}
    else:
        peaks = {"train_gpu": train["total"], "rollout_gpu": rollout["total"] + RESERVE_BYTES}
    fits = concurrent >= 1 and all(v <= gpu for v in peaks.values())
    if concurrent == 0:
        notes.append(f"one sequence of {req.prompt_tokens + req.max_completion_length} tokens does not fit the "
                     f"engine's KV budget at tp {req.rollout_tp}: raise rollout_tp or shorten the completions")
    if req.placement == "colocated" and not req.sleep and fits:
        notes.append("without sleep mode the engine keeps its weights and KV cache through every update")
    if req.beta > 0:
        notes.append("beta > 0: the frozen reference is sharded like the policy")
    return RLPlan(request=req, train_per_gpu=train, rollout_per_gpu=rollout, peak_per_gpu=peaks,
                  concurrent_sequences=concurrent, waves=waves, fits=fits, notes=notes)


def candidate_layouts(req: RLPlanRequest) -> list[RLPlanRequest]:
    """Every placement / tp / rollout-GPU split worth trying for `req.gpus` GPUs."""
    tps = [t for t in (1, 2, 4, 8) if t <= req.gpus]
    out = [replace(req, placement="colocated", sleep=True, rollout_tp=t, rollout_gpus=0)
           for t in tps if req.gpus % t == 0]
    for share in (4, 2):  # a quarter or half of the GPUs roll out
        n = req.gpus // share
        out += [replace(req, placement="separate", rollout_tp=t, rollout_gpus=n) for t in tps
                if n >= t and n % t == 0 and n < req.gpus]
    return out


def recommend(shapes: Shapes, req: RLPlanRequest) -> tuple[RLPlan | None, list[RLPlan]]:
    """(the recommended layout or None when nothing fits, every candidate's plan)."""
    plans = [estimate_rl(shapes, c) for c in candidate_layouts(req)]
    fitting = [p for p in plans if p.fits]
    if not fitting:
        return None, plans
    best = min(fitting, key=lambda p: (p.waves, -p.request.train_gpus, p.request.placement != "colocated",
                                       p.request.rollout_tp))
    return best, plans


def plan_rl(req: RLPlanRequest) -> RLPlan:
    req.validate()
    return estimate_rl(shapes_of(req.preset), req)


def layout_label(req: RLPlanRequest) -> str:
    if req.placement == "colocated":
        return f"colocated{'+sleep' if req.sleep else ''}, vLLM tp {req.rollout_tp} x {req.engines}"
    return (f"separate: {req.train_gpus} train + {req.rollout_gpus} rollout "
            f"(vLLM tp {req.rollout_tp} x {req.engines})")


def render_rl_plan(plan: RLPlan, candidates: list[RLPlan] | None = None) -> None:
    """Rich tables: the plan's items per GPU, and (with `candidates`) every layout tried."""
    from rich.console import Console
    from rich.table import Table

    r = plan.request
    console = Console()
    table = Table(title=f"GRPO {r.preset} | {r.policy} | {r.strategy} | {layout_label(r)}",
                  caption=f"{r.prompts_per_step} prompts x {r.num_generations} completions, prompt {r.prompt_tokens} + "
                          f"completion {r.max_completion_length} tokens, beta {r.beta:g}")
    table.add_column("per GPU")
    table.add_column("GiB", justify="right")
    for key, value in plan.train_per_gpu.items():
        table.add_row(f"train: {key}", f"{value / GIB:,.2f}", style="bold" if key == "total" else None)
    for key, value in plan.rollout_per_gpu.items():
        table.add_row(f"rollout: {key}", f"{value / GIB:,.2f}", style="bold" if key == "total" else None)
    for key, value in plan.peak_per_gpu.items():
        table.add_row(f"peak: {key}", f"{value / GIB:,.2f}", style="bold")
    console.print(table)
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    console.print(f"{verdict} in {r.gpu_mem_gb:g} GiB per GPU; one engine holds {plan.concurrent_sequences} full-length "
                  f"sequences at once ({plan.waves} waves per rollout batch)")
    for note in plan.notes:
        console.print(f"note: {note}")
    if candidates:
        t = Table(title=f"layouts tried on {r.gpus} GPUs of {r.gpu_mem_gb:g} GiB")
        for col in ("layout", "train peak GiB", "rollout peak GiB", "sequences at once", "waves", "fits"):
            t.add_column(col)
        for p in candidates:
            t.add_row(layout_label(p.request), f"{p.peak_per_gpu['train_gpu'] / GIB:.1f}",
                      f"{p.peak_per_gpu.get('rollout_gpu', 0) / GIB:.1f}", str(p.concurrent_sequences),
                      str(p.waves), "yes" if p.fits else "no",
                      style="bold green" if p is plan else None)
        console.print(t)
