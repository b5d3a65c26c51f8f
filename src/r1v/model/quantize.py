"""Weight quantisation of a loaded model's LLM for low-memory inference (`--quantize int8|int4`).

    vlm = load_vlm("ckpt/", quantize="int4")          # or quantize_vlm(load_vlm("ckpt/"), "int4")

Built on bitsandbytes (CPU kernels since 0.46, CUDA as ever): every `nn.Linear` of the language model and the
LM head is swapped for a bitsandbytes layer whose weights are quantised when the layer is moved to its device;
the token embedding follows. What is quantised, per mode:

- `int8`: the LLM's linears, the LM head and the token embedding in bitsandbytes' 8-bit format (LLM.int8():
  int8 weights with one absmax scale per output row). At run time the inputs are quantised per row too and
  the int8 product runs (`torch._int_mm` on CPUs with AVX-512, cuBLASLt on GPUs); `INT8_THRESHOLD` 0 keeps
  every input column in int8 (bitsandbytes' own default 6.0 routes outlier columns through a 16-bit product,
  which on a CPU made SmolLM2's decode 1.5x slower than float32).
- `int4`: the LLM's linears in 4-bit NF4 (one absmax per 64 weights; bitsandbytes' fused AVX-512-BF16 kernel
  on CPU). The LM head and the token embedding stay in the int8 format: the CPU 4-bit layout needs output
  sizes divisible by 32 (SmolLM2 with the image tokens has 49155 rows) and the head decides every token.
- never: the vision tower, the connector and the norms (a few percent of the weights; the tower sees every
  pixel once per image), kept in the dtype they were loaded in.

A tied embedding (SmolLM2) stays tied: the head and the embedding read one int8 copy of the matrix.
Quantised models are for inference (chat, eval, serve); they cannot be trained or saved with `save_model`
(export a full-precision folder with `r1v convert --to gguf|compressed-tensors` instead).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator

import torch

from r1v.errors import ModelError

MODES = ("int8", "int4")
#: LLM.int8()'s outlier threshold; 0 = every input column in int8 (see the module docstring)
INT8_THRESHOLD = 0.0
#: NF4 block size (bitsandbytes' default)
INT4_BLOCKSIZE = 64
INSTALL_HINT = "pip install 'r1v[quant]' (bitsandbytes)"


def check_mode(mode: str | None) -> str | None:
    """`mode` if it is None or one of MODES, else a ModelError naming them."""
    if mode is not None and mode not in MODES:
        raise ModelError(f"--quantize must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class _DropNotice(logging.Filter):
    """Drops bitsandbytes' notices that say nothing to act on: the float16 cast of every int8 call's inputs
    (logged on each call) and the optional `kernels` hub package (never downloadable here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("MatMul8bitLt: inputs will be cast") or "kernels-community" in msg)


def _bnb():
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"--quantize needs bitsandbytes: {INSTALL_HINT}")
    for name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice())
    import bitsandbytes

    return bitsandbytes


def _int8_linear(bnb, lin: torch.nn.Linear, device: torch.device):
    new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              has_fp16_weights=False, threshold=INT8_THRESHOLD, device="meta")
    new.weight = bnb.nn.Int8Params(lin.weight.data, requires_grad=False, has_fp16_weights=False)
    if lin.bias is not None:
        new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
    return new.to(device)  # quantised here


def _int4_linear(bnb, lin: torch.nn.Linear, device: torch.device):
    dtype = lin.weight.dtype
    new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=dtype,
                            quant_type="nf4", device="meta")
    new.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4",
                                   blocksize=INT4_BLOCKSIZE, module=new)
    if lin.bias is not None:
        new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
    return new.to(device)


def _linears(module: torch.nn.Module, prefix: str = "") -> Iterator[tuple[torch.nn.Module, str, str]]:
    """(parent, child name, qualified name) of every plain `nn.Linear` under `module`."""
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if type(child) is torch.nn.Linear:
            yield module, name, qualified
        else:
            yield from _linears(child, qualified + ".")


def _quantize_embedding_and_head(bnb, model, device: torch.device) -> list[str]:
    """The token embedding and the LM head in int8; one shared int8 matrix when they are tied."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if type(emb) is not torch.nn.Embedding or type(head) is not torch.nn.Linear:
        raise ModelError(f"quantize: expected an nn.Embedding and an nn.Linear head, got {type(emb).__name__} "
                         f"and {type(head).__name__}")
    tied = head.weight.data_ptr() == emb.weight.data_ptr()
    new_emb = bnb.nn.Embedding8bit(emb.num_embeddings, emb.embedding_dim, device="meta", dtype=emb.weight.dtype)
    new_emb.weight = bnb.nn.Int8Params(emb.weight.data, requires_grad=False, has_fp16_weights=False)
    new_emb = new_emb.to(device)
    if tied:
        # a second Int8Params over the same int8 rows and scales: Linear8bitLt moves the statistics of its own
        # parameter into its state on the first call, which must not take them from the embedding
        qweight = new_emb.weight
        new_head = bnb.nn.Linear8bitLt(head.in_features, head.out_features, bias=head.bias is not None,
                                       has_fp16_weights=False, threshold=INT8_THRESHOLD, device="meta")
        new_head.weight = bnb.nn.Int8Params(qweight.data, requires_grad=False, has_fp16_weights=False,
                                            CB=qweight.data, SCB=qweight.SCB)
        if head.bias is not None:
            new_head.bias = torch.nn.Parameter(head.bias.data.to(device), requires_grad=False)
    else:
        new_head = _int8_linear(bnb, head, device)
    model.set_input_embeddings(new_emb)
    model.set_output_embeddings(new_head)
    return ["embed_tokens (int8" + (", tied to lm_head)" if tied else ")"), "lm_head (int8)"]


def quantize_model(model: torch.nn.Module, mode: str, device: str | torch.device = "cpu") -> dict:
    """Quantise the LLM of an InternVL model (or a plain *ForCausalLM) in place, layer by layer onto `device`.

    Returns a summary: mode, library, the quantised and the kept parts, and the weight bytes after.
    """
    check_mode(mode)
    bnb = _bnb()
    device = torch.device(device)
    if any(p.is_meta for p in model.parameters()):
        raise ModelError("quantize: the model is on the meta device (shapes only); build it on cpu")
    inner = getattr(model, "model", None)
    lm = inner.language_model if hasattr(inner, "language_model") else inner
    if lm is None or not hasattr(model, "get_output_embeddings"):
        raise ModelError(f"quantize: {type(model).__name__} has no language model body")
    make = _int8_linear if mode == "int8" else _int4_linear
    count = 0
    with torch.no_grad():
        for parent, name, _ in list(_linears(lm)):
            setattr(parent, name, make(bnb, getattr(parent, name), device))
            count += 1
        parts = _quantize_embedding_and_head(bnb, model, device)
        model.to(device)  # the parts kept in full precision (vision tower, connector, norms)
    model.eval()
    kept = [n for n in ("vision_tower", "multi_modal_projector") if hasattr(inner, n)]
    return {"mode": mode, "library": f"bitsandbytes {bnb.__version__}",
            "quantized": [f"{count} LLM linears ({'int8' if mode == 'int8' else 'nf4, 4-bit'})", *parts],
            "full_precision": [*kept, "norms"], "weight_bytes": weight_bytes(model)}


def quantize_vlm(vlm, mode: str, device: str | torch.device = "cpu"):
    """`quantize_model` on `vlm.model`; records the summary in `vlm.provenance["quantize"]`. Returns `vlm`."""
    summary = quantize_model(vlm.model, mode, device)
    vlm.provenance = {**vlm.provenance, "quantize": summary}
    return vlm


def is_quantized(model: torch.nn.Module) -> bool:
    """True when any layer of `model` is a bitsandbytes layer."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def _storage_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights occupy: parameters and buffers, a storage shared by several counted once, plus the
    scales bitsandbytes keeps beside its quantised weights (absmax per block or row)."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None or t.is_meta:
            return
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return
        seen.add(key)
        total += t.untyped_storage().nbytes()

    for mod in model.modules():
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            add(t)
            state = getattr(t, "quant_state", None)
            if state is not None:  # 4-bit: absmax (and nested statistics when double-quantised)
                add(state.absmax)
                nested = getattr(state, "state2", None)
                if nested is not None:
                    add(nested.absmax)
            add(getattr(t, "SCB", None))
        lt_state = getattr(mod, "state", None)
        if lt_state is not None and hasattr(lt_state, "SCB"):  # Linear8bitLt after its first call
            add(lt_state.SCB)
    return total
