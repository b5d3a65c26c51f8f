"""Memory per GPU for training a preset under a trainable-part policy and a parallel layout, before it starts.

    r1v plan --preset r1v-38b --gpus 8 --policy connector --strategy fsdp --seq-len 16384

Parameter counts per part come from the preset built on the `meta` device (no memory used). Everything
is an estimate in bytes per GPU (reported in GiB); it errs on the generous side.

Model state (P = all parameters, T = trainable parameters, n = GPUs):
- weights: 2 bytes x P (bf16; 4 with `precision=fp32`).
- gradients: 2 bytes x T (bf16; 4 with fp32). Frozen parts have none.
- optimiser: AdamW m and v in fp32 = 8 bytes x T, plus a 4-byte fp32 master copy of T under bf16
  mixed precision (the usual 2 + 2 + 12 = 16 bytes per trainable parameter).
- `fsdp` and `zero3` shard all three over the n GPUs (/ n); `ddp` keeps a full copy on each GPU.
  `offload_optimizer` moves optimiser state and master weights to CPU RAM (reported separately).
- gather buffers: with fsdp a GPU holds the gathered bf16 weights of the root unit (embeddings, LM head,
  connector and the whole vision tower: the ViT layers are not units of their own, see
  configs/accelerate/README.md) plus two LLM decoder layers (one computing, one prefetched); with zero3
  the root without the ViT layers plus two layers.

Activations per micro-batch of b samples (bf16, 2 bytes per element, not sharded: data parallel):
- LLM, per layer and token, without activation checkpointing k_llm = 6h + 2h_kv + 4i elements (norm
  inputs and outputs, q/k/v, attention output, the residual, gate/up outputs, act(gate), act*up), with h the
  hidden size, h_kv the key/value width, i the MLP width: L x s x b x k_llm x 2 bytes.
  With activation checkpointing only each layer's input is kept: L x s x b x h x 2, plus one layer's full
  activations while it is recomputed: s x b x k_llm x 2. Attention is assumed flash/SDPA (no s^2 term).
  The LLM's activations are needed whenever anything before or inside it trains (every policy here),
  frozen layers included: the gradient has to flow back through them to the connector.
- vision tower, per layer and ViT token, k_vit = 11h_v + 2i_v (two norms, q/k/v and their qk-norms,
  attention output, layer-scale output, fc1 and GELU outputs); ViT tokens = tiles x (patches + 1 CLS).
  Stored only when the tower trains; a frozen tower sits before every trainable part, so its forward
  runs without keeping anything but one layer at a time.
- connector: image tokens x (4h_v LayerNorm in + out, 2h Linear/GELU outputs, h output) elements.
- logits: loss tokens x V x 10 bytes (bf16 logits, fp32 copy for the loss, fp32 gradient). The loss
  tokens default to the whole sequence (an upper bound: r1v's SFT loss computes logits on label
  positions only).
- reserve: 2 GiB for the CUDA context, communication buffers and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from r1v.errors import ConfigError

GIB = 1024**3
RESERVE_BYTES = 2 * GIB
STRATEGIES = ("fsdp", "zero3", "ddp")


@dataclass(frozen=True)
class Shapes:
    """What the estimate needs from a model: parameter counts per part and layer shapes."""

    params: dict[str, int]  # vision, connector, llm, total
    llm_layers: int
    llm_hidden: int
    llm_kv: int
    llm_intermediate: int
    vocab: int
    vit_layers: int
    vit_hidden: int
    vit_intermediate: int
    vit_tokens_per_tile: int  # patches + CLS
    image_tokens_per_tile: int  # after pixel shuffle, what the LLM sees
    llm_layer_params: int
    vit_layer_params: int
    lora_params: int = 0


@dataclass(frozen=True)
class Cluster:
    """The model and the machines a plan is for: preset, GPUs, trainable-part policy, sharding strategy."""

    preset: str = "r1v-38b"
    gpus: int = 8
    policy: str = "connector"
    strategy: Literal["fsdp", "zero3", "ddp"] = "fsdp"
    gpu_mem_gb: float = 80.0
    """GPU memory in GiB."""


@dataclass(frozen=True)
class PlanRequest(Cluster):
    seq_len: int = 16384
    micro_batch: int = 1
    tiles_per_sample: int = 13
    """Image tiles per sample (12 + thumbnail is the R1V maximum for one image)."""
    loss_tokens: int | None = None
    """Tokens that get logits and a loss per sample; default: the whole sequence."""
    activation_checkpointing: bool = True
    precision: Literal["bf16", "fp32"] = "bf16"
    offload_optimizer: bool = False

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        for name in ("gpus", "seq_len", "micro_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.gpu_mem_gb <= 0 or self.tiles_per_sample < 0:
            raise ConfigError("gpu_mem_gb must be > 0 and tiles_per_sample >= 0")
        if self.offload_optimizer and self.strategy == "ddp":
            raise ConfigError("offload_optimizer needs a sharded strategy (fsdp or zero3)")


@dataclass
class Plan:
    request: PlanRequest
    params: dict[str, int]
    trainable: int
    per_gpu: dict[str, int]  # bytes by item, and "total"
    fits: bool
    min_gpus: int | None  # fewest GPUs that fit with this strategy (None: none up to 4096)
    cpu_bytes_per_gpu: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_gpu_gib"] = {k: round(v / GIB, 2) for k, v in self.per_gpu.items()}
        out["gpu_mem_gib"] = self.request.gpu_mem_gb
        return out


def shapes_of(preset: str) -> Shapes:
    """Shapes and per-part parameter counts of a preset, from the model built on the meta device."""
    from r1v.model.build import build_preset
    from r1v.model.parts import count_params, lora_param_estimate

    vlm = build_preset(preset, device="meta")
    model = vlm.model
    text, vision = model.config.text_config, model.config.vision_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    patch = _first(vision.patch_size)
    patches = (_first(vision.image_size) // patch) ** 2
    ratio = float(model.config.downsample_ratio)
    inner = model.model
    return Shapes(
        params=count_params(model), llm_layers=text.num_hidden_layers, llm_hidden=text.hidden_size,
        llm_kv=text.num_key_value_heads * head_dim, llm_intermediate=text.intermediate_size,
        vocab=text.vocab_size, vit_layers=vision.num_hidden_layers, vit_hidden=vision.hidden_size,
        vit_intermediate=vision.intermediate_size, vit_tokens_per_tile=patches + 1,
        image_tokens_per_tile=int(patches * ratio * ratio),
        llm_layer_params=sum(p.numel() for p in inner.language_model.layers[0].parameters()),
        vit_layer_params=sum(p.numel() for p in inner.vision_tower.encoder.layer[0].parameters()),
        lora_params=lora_param_estimate(model),
    )


def _first(v: Any) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def trainable_parts(policy: str) -> set[str]:
    """Parts trained by `policy` (the model policies, plus `lora`: connector + LoRA adapters on the LLM)."""
    if policy == "lora":
        return {"connector"}
    from r1v.model.parts import trains

    return trains(policy)


def per_gpu_bytes(shapes: Shapes, req: PlanRequest) -> tuple[dict[str, int], int, int]:
    """(bytes per GPU by item with "total", CPU bytes per GPU for offloaded state, trainable parameters)."""
    parts = trainable_parts(req.policy)
    lora = shapes.lora_params if req.policy == "lora" else 0
    trainable = sum(shapes.params[p] for p in parts) + lora
    wbytes = 2 if req.precision == "bf16" else 4
    opt_per_param = 8 + (4 if req.precision == "bf16" else 0)
    shard = req.gpus if req.strategy in ("fsdp", "zero3") else 1
    per: dict[str, int] = {
        "weights": wbytes * (shapes.params["total"] + lora) // shard,
        "gradients": wbytes * trainable // shard,
        "optimizer": 0 if req.offload_optimizer else opt_per_param * trainable // shard,
    }
    cpu = opt_per_param * trainable // shard if req.offload_optimizer else 0
    per["gather_buffers"] = 0
    if shard > 1 and req.strategy == "fsdp":  # units: the LLM layers; the root holds the ViT too
        root = shapes.params["total"] - shapes.llm_layers * shapes.llm_layer_params
        per["gather_buffers"] = wbytes * (root + 2 * shapes.llm_layer_params)
    elif shard > 1:  # ZeRO-3 fetches each module's parameters as it runs
        layers = shapes.llm_layers * shapes.llm_layer_params + shapes.vit_layers * shapes.vit_layer_params
        root = shapes.params["total"] - layers
        per["gather_buffers"] = wbytes * (root + 2 * max(shapes.llm_layer_params, shapes.vit_layer_params))

    s, b = req.seq_len, req.micro_batch
    h, i = shapes.llm_hidden, shapes.llm_intermediate
    k_llm = 6 * h + 2 * shapes.llm_kv + 4 * i
    if req.activation_checkpointing:
        per["activations_llm"] = 2 * b * s * (shapes.llm_layers * h + k_llm)
    else:
        per["activations_llm"] = 2 * b * s * shapes.llm_layers * k_llm
    vit_tokens = req.tiles_per_sample * shapes.vit_tokens_per_tile
    k_vit = 11 * shapes.vit_hidden + 2 * shapes.vit_intermediate
    if "vision" in parts:
        kept = shapes.vit_layers * (shapes.vit_hidden if req.activation_checkpointing else k_vit)
        recomputed = k_vit if req.activation_checkpointing else 0
        per["activations_vision"] = 2 * b * vit_tokens * (kept + recomputed)
    else:
        per["activations_vision"] = 2 * b * vit_tokens * k_vit  # frozen tower: one layer at a time, forward only
    image_tokens = req.tiles_per_sample * shapes.image_tokens_per_tile
    per["activations_connector"] = 2 * b * image_tokens * (4 * 4 * shapes.vit_hidden + 3 * h)
    loss_tokens = req.loss_tokens if req.loss_tokens is not None else s
    per["logits"] = 10 * b * loss_tokens * shapes.vocab
    per["reserve"] = RESERVE_BYTES
    per["total"] = sum(per.values())
    return per, cpu, trainable


def _fits(per: dict[str, int], req: PlanRequest) -> bool:
    return per["total"] <= req.gpu_mem_gb * GIB


def estimate(shapes: Shapes, req: PlanRequest) -> Plan:
    """The per-GPU estimate for `req` on a model of `shapes` (see the module docstring for every formula)."""
    req.validate()
    per, cpu, trainable = per_gpu_bytes(shapes, req)
    fits = _fits(per, req)
    notes = []
    image_tokens = req.tiles_per_sample * shapes.image_tokens_per_tile
    if image_tokens > req.seq_len:
        notes.append(f"{req.tiles_per_sample} tiles give {image_tokens} image tokens, more than seq_len {req.seq_len}")
    if req.strategy == "ddp" and not fits:
        notes.append("ddp keeps full weights, gradients and optimiser state on every GPU; try fsdp or zero3")
    if not fits and not req.activation_checkpointing:
        notes.append("activation checkpointing would cut activations to about one layer input per layer")
    if not fits and req.strategy != "ddp" and not req.offload_optimizer:
        notes.append("optimiser offload (offload_optimizer) moves 12 bytes per trainable parameter to CPU RAM")
    return Plan(request=req, params=dict(shapes.params), trainable=trainable, per_gpu=per, fits=fits,
                min_gpus=req.gpus if fits else _min_gpus(shapes, req), cpu_bytes_per_gpu=cpu, notes=notes)


def _min_gpus(shapes: Shapes, req: PlanRequest) -> int | None:
    """The fewest GPUs that fit (None with ddp, whose per-GPU memory does not fall with more GPUs)."""
    if req.strategy == "ddp":
        return None
    from dataclasses import replace

    def fits(n: int) -> bool:
        return _fits(per_gpu_bytes(shapes, replace(req, gpus=n))[0], req)

    lo, hi = 1, 4096
    if not fits(hi):
        return None
    while lo < hi:  # per-GPU bytes never grow with more GPUs
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def print_gib_table(title: str, caption: str, label: str, values: dict[str, int]) -> Any:
    """A table of byte counts in GiB (the `total` row bold) on a new console; returns the console."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column(label)
    table.add_column("GiB", justify="right")
    for key, value in values.items():
        table.add_row(key, f"{value / GIB:,.2f}", style="bold" if key == "total" else None)
    console = Console()
    console.print(table)
    return console


def plan_memory(req: PlanRequest) -> Plan:
    """Build the preset's shapes on the meta device and estimate memory per GPU for `req`."""
    req.validate()
    return estimate(shapes_of(req.preset), req)


def render_plan(plan: Plan) -> None:
    """A rich table of the per-GPU estimate."""
    r = plan.request
    console = print_gib_table(f"{r.preset} | {r.policy} | {r.strategy} x {r.gpus}",
                              f"seq {r.seq_len} x micro-batch {r.micro_batch}, {r.tiles_per_sample} tiles, "
                              f"checkpointing {'on' if r.activation_checkpointing else 'off'}, {r.precision}",
                              "per GPU", plan.per_gpu)
    p = plan.params
    console.print(f"parameters: vision {p['vision'] / 1e9:.2f}B, connector {p['connector'] / 1e6:.1f}M, "
                  f"llm {p['llm'] / 1e9:.2f}B, total {p['total'] / 1e9:.2f}B; trainable {plan.trainable / 1e9:.3f}B")
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    more = "" if plan.fits or plan.min_gpus is None else f" (needs at least {plan.min_gpus} GPUs with {r.strategy})"
    console.print(f"{verdict} in {r.gpu_mem_gb:g} GiB per GPU{more}")
    if plan.cpu_bytes_per_gpu:
        console.print(f"CPU RAM for offloaded optimiser state: {plan.cpu_bytes_per_gpu / GIB:,.1f} GiB per GPU")
    for note in plan.notes:
        console.print(f"note: {note}")


# ---------------------------------------------------------------------------------------------- inference

#: common GPU memory sizes: a "24 GB" RTX 4090 has 24 GiB, "48 GB" L40S/A6000 48 GiB, "80 GB" A100/H100 80 GiB
COMMON_GPUS_GB = (24, 48, 80)
WEIGHT_MODES = ("bf16", "int8", "int4")
INT4_BLOCK = 64  # NF4 block (r1v.model.quantize.INT4_BLOCKSIZE), one float32 absmax each


@dataclass(frozen=True)
class InferenceRequest:
    """Memory to serve a preset with `r1v chat/eval/serve --quantize MODE` (bf16 = unquantised)."""

    preset: str = "r1v-38b"
    quantize: Literal["bf16", "int8", "int4"] = "bf16"
    context: int = 16384
    """Tokens per sequence held in the KV cache (prompt, image tokens and generated tokens)."""
    batch: int = 1
    """Sequences decoded together (each with its own KV cache)."""
    tiles_per_sample: int = 13
    prefill_chunk: int = 2048
    """Prompt tokens run through the LLM at once (vLLM's chunked prefill; transformers runs the whole prompt)."""

    def validate(self) -> None:
        if self.quantize not in WEIGHT_MODES:
            raise ConfigError(f"quantize: {self.quantize!r} is not one of {', '.join(WEIGHT_MODES)}")
        for name in ("context", "batch", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.tiles_per_sample < 0:
            raise ConfigError("tiles_per_sample must be >= 0")


@dataclass
class InferencePlan:
    request: InferenceRequest
    params: dict[str, int]
    bytes: dict[str, int]  # by item, and "total" (one GPU holding everything)
    bf16_weights: int
    gpus_needed: dict[int, int | None]  # GPU size in GB -> fewest GPUs (tensor parallel), None above 8

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gib"] = {k: round(v / GIB, 2) for k, v in self.bytes.items()}
        out["bf16_weights_gib"] = round(self.bf16_weights / GIB, 2)
        return out


def inference_weight_bytes(shapes: Shapes, mode: str) -> dict[str, int]:
    """Weight bytes by part under r1v's quantised loading (`r1v.model.quantize`, bitsandbytes):

    - bf16: 2 bytes per parameter.
    - int8: the LLM layers' linears 1 byte per weight + a float32 scale per output row; the embedding and LM
      head the same (1 byte + a scale per vocabulary row).
    - int4: the layers' linears 0.5 byte per weight + a float32 absmax per 64 weights; embedding and head int8.
    - the vision tower and the connector stay bf16 in every mode; norms and biases stay bf16 (counted with
      their layer's weights at the layer's rate, a rounding error of < 0.01%).
    """
    h, kv, i = shapes.llm_hidden, shapes.llm_kv, shapes.llm_intermediate
    layer_linears = shapes.llm_layers * shapes.llm_layer_params
    layer_rows = shapes.llm_layers * (3 * h + 2 * kv + 2 * i)  # q, o, down: h rows; k, v: kv; gate, up: i
    embed_head = shapes.params["llm"] - layer_linears - h  # the final norm aside; tied = one matrix
    vocab_rows = embed_head // h
    vision = 2 * (shapes.params["vision"] + shapes.params["connector"])
    if mode == "bf16":
        llm = 2 * shapes.params["llm"]
    elif mode == "int8":
        llm = layer_linears + 4 * layer_rows + embed_head + 4 * vocab_rows + 2 * h
    elif mode == "int4":
        llm = layer_linears // 2 + 4 * (layer_linears // INT4_BLOCK) + embed_head + 4 * vocab_rows + 2 * h
    else:
        raise ConfigError(f"quantize: {mode!r} is not one of {', '.join(WEIGHT_MODES)}")
    return {"weights_llm": llm, "weights_vision": vision}


def estimate_inference(shapes: Shapes, req: InferenceRequest) -> InferencePlan:
    """Inference memory of `req` (see `inference_weight_bytes`), plus:

    - KV cache: 2 (keys, values) x layers x kv width x context x batch x 2 bytes (bf16).
    - vision activations: the tower runs one layer at a time, forward only: tiles x (patches + 1) x
      (11 h_v + 2 i_v) x 2 bytes per sample in the batch (the training plan's frozen-tower term).
    - LLM activations: one layer's activations for a prefill chunk, prefill_chunk x (6h + 2h_kv + 4i) x 2
      bytes, plus float32 logits of the last position, batch x vocab x 4.
    - the 2 GiB reserve (CUDA context, allocator).
    GPUs needed: with tensor parallelism over n GPUs the weights and the KV cache are split n ways, the
    activations and the reserve are not; the fewest n in 1, 2, 4, 8 whose per-GPU total fits.
    """
    req.validate()
    per = inference_weight_bytes(shapes, req.quantize)
    per["kv_cache"] = 2 * shapes.llm_layers * shapes.llm_kv * req.context * req.batch * 2
    k_vit = 11 * shapes.vit_hidden + 2 * shapes.vit_intermediate
    per["activations_vision"] = 2 * req.batch * req.tiles_per_sample * shapes.vit_tokens_per_tile * k_vit
    k_llm = 6 * shapes.llm_hidden + 2 * shapes.llm_kv + 4 * shapes.llm_intermediate
    chunk = min(req.prefill_chunk, req.context)
    per["activations_llm"] = 2 * chunk * k_llm + 4 * req.batch * shapes.vocab
    per["reserve"] = RESERVE_BYTES
    per["total"] = sum(per.values())
    split = per["weights_llm"] + per["weights_vision"] + per["kv_cache"]
    fixed = per["total"] - split
    needed: dict[int, int | None] = {}
    for size in COMMON_GPUS_GB:
        needed[size] = next((n for n in (1, 2, 4, 8) if split / n + fixed <= size * GIB), None)
    bf16 = sum(inference_weight_bytes(shapes, "bf16").values())
    return InferencePlan(request=req, params=dict(shapes.params), bytes=per, bf16_weights=bf16,
                         gpus_needed=needed)


def plan_inference(req: InferenceRequest) -> InferencePlan:
    """Build the preset's shapes on the meta device and estimate its inference memory."""
    req.validate()
    return estimate_inference(shapes_of(req.preset), req)


def render_inference(plan: InferencePlan) -> None:
    """A rich table of the inference estimate and the GPUs that hold it."""
    r = plan.request
    console = print_gib_table(f"{r.preset} | inference, weights {r.quantize}",
                              f"context {r.context} x batch {r.batch}, {r.tiles_per_sample} tiles, "
                              f"prefill chunk {r.prefill_chunk}", "one GPU", plan.bytes)
    weights = plan.bytes["weights_llm"] + plan.bytes["weights_vision"]
    console.print(f"weights {weights / GIB:,.1f} GiB ({weights / plan.bf16_weights:.2f}x bf16's "
                  f"{plan.bf16_weights / GIB:,.1f} GiB); the vision tower and connector stay bf16")
    for size, n in plan.gpus_needed.items():
        verdict = ("[red]not with 8 or fewer[/red]" if n is None else
                   "[green]fits one[/green]" if n == 1 else f"[yellow]{n} GPUs (tensor parallel)[/yellow]")
        console.print(f"{size} GB GPUs: {verdict}")
