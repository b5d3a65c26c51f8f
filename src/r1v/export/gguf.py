"""GGUF export: the LLM as one GGUF file, the vision tower + connector as llama.cpp's InternVL projector file.

    r1v convert ckpt/ out/ --to gguf --type q8_0
    # out/<name>-q8_0.gguf          the Qwen2 LLM: tokenizer, chat template, weights
    # out/mmproj-<name>-f16.gguf    the InternViT tower + mlp1 connector (projector type "internvl")
    # llama-mtmd-cli -m out/<name>-q8_0.gguf --mmproj out/mmproj-<name>-f16.gguf --image fig.png -p "..."

Written with the `gguf` package (llama.cpp's own gguf-py), whose name tables are the ones llama.cpp's
converter uses: tensor names come from `gguf.get_tensor_name_map` (architecture `qwen2` for the LLM, the
`clip` projector table for the tower), metadata through `GGUFWriter`'s named setters.

The LLM file (architecture `qwen2`; r1v's LLMs are Qwen2-family, SmolLM2 converted to Qwen2 with zero biases):
- hyper-parameters under `qwen2.*`; the tokenizer as `gpt2` BPE (every id up to the embedding's row count,
  ids without a token written as `[PADn]` of type UNUSED, added special tokens CONTROL, other added tokens
  USER_DEFINED), the merges, bos/eos/pad and the end-of-turn id, and the model's chat template as Jinja;
- tensor types by `--type`: `f16` (2-D weights in float16), `q8_0` (2-D weights in Q8_0), `q4_0` (the layers'
  linears in Q4_0, the token embedding and the output head in Q8_0, as the head decides every token). Norms
  and biases stay float32; a row length not divisible by the 32-weight block falls back to float16. The gguf
  package quantises Q4_0/Q4_1/Q5_x/Q8_0 but not the K-quants (`Q4_K` has no quantiser there): for
  `q4_k_m`, run llama.cpp's `llama-quantize` on the f16 file.
- a tied embedding is written once (`token_embd`, no `output`), as llama.cpp and transformers' reader expect.

The projector file (architecture `clip`, `general.type` mmproj), keys and tensors as llama.cpp's
`InternVisionModel` converter writes them and `tools/mtmd/clip.cpp` reads them: `clip.projector_type`
"internvl", `clip.has_vision_encoder`, `clip.vision.{image_size, patch_size, embedding_length,
feed_forward_length, block_count, attention.head_count, attention.layer_norm_epsilon, projection_dim,
image_mean, image_std, projector.scale_factor, preproc_min_tiles, preproc_max_tiles}`, `clip.use_gelu`;
tensors `v.class_embd`, `v.patch_embd.{weight,bias}`, `v.position_embd.weight`, per layer
`v.blk.N.{attn_q, attn_k, attn_v, attn_out, attn_q_norm, attn_k_norm, ln1, ln2, ls1, ls2, ffn_up, ffn_down}`,
and the connector `mm.model.mlp.{0,1,3}.{weight,bias}` (LayerNorm, Linear, Linear). Matrices in float16,
everything 1-D, the class and position embeddings in float32.

What llama.cpp assumes that the file cannot say (reported in `notes`): its InternVL graph uses RMSNorm only
for InternViT-6B's shape (hidden 3200, 45 layers) and LayerNorm for any other tower, and it implements the
v2 pixel shuffle (ps_version v1 is refused here, as in `convert --to hf`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from r1v.errors import ModelError

TYPES = ("f16", "q8_0", "q4_0")
VISION_NORM_RMS_SHAPE = (3200, 45)  # llama.cpp: RMSNorm only for InternViT-6B (hidden, layers)


def _gguf():
    import gguf

    return gguf


def _qtypes(gguf, kind: str):
    q = gguf.GGMLQuantizationType
    return {"f16": (q.F16, q.F16, gguf.LlamaFileType.MOSTLY_F16),
            "q8_0": (q.Q8_0, q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
            "q4_0": (q.Q4_0, q.Q8_0, gguf.LlamaFileType.MOSTLY_Q4_0)}[kind]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().contiguous().numpy()


def _add(gguf, writer, name: str, t: torch.Tensor, qtype) -> str:
    """Write one tensor as `qtype` (F32 for 1-D tensors); returns the type written."""
    data = _array(t)
    q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or qtype == q.F32:
        writer.add_tensor(name, data)
        return "F32"
    if qtype == q.F16:
        writer.add_tensor(name, data.astype(np.float16))
        return "F16"
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float16))
        return "F16"
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    return qtype.name


# ---------------------------------------------------------------------------------------------- the LLM

def _vocab(gguf, tokenizer, n_vocab: int) -> tuple[list[str], list[int], list[str], str]:
    """(tokens, token types, merges, pre-tokenizer name) of a byte-level BPE tokenizer, padded to `n_vocab`."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelError("GGUF export supports byte-level BPE tokenizers (GPT-2 style, as Qwen2 and SmolLM2 use); "
                         f"this one is {model.get('type')!r} with decoder {(spec.get('decoder') or {}).get('type')!r}")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ModelError(f"tokenizer has ids up to {max(vocab.values())} but the embedding has {n_vocab} rows")
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    by_id = {i: t for t, i in vocab.items()}
    T = gguf.TokenType
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(text)
            types.append(T.NORMAL if text not in added else T.CONTROL if added[text] else T.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, _pre_tokenizer(spec.get("pre_tokenizer") or {})


def _pre_tokenizer(pre: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (it picks the split rule by this name)."""
    parts = pre.get("pretokenizers", [pre])
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"  # SmolLM2: single digits, then byte-level
    if kinds and kinds[0] == "Split" and "\\p{N}" in json.dumps(parts[0].get("pattern", {})):
        return "qwen2"  # Qwen2 / QwQ / R1-distill-Qwen split rule
    return "default"


def _rope_theta(text) -> float:
    params = getattr(text, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ModelError(f"GGUF export: rope scaling {kind!r} is not written (only the plain rotary embedding)")
    return float(params.get("rope_theta", getattr(text, "rope_theta", 10000.0)))


def write_llm(vlm, path: str | Path, kind: str = "f16") -> dict:
    """The LLM of `vlm` as a `qwen2` GGUF file at `path`. Returns {tensor name: type written}."""
    gguf = _gguf()
    model, tok = vlm.model, vlm.tokenizer
    text = model.config.text_config
    if text.model_type != "qwen2":
        raise ModelError(f"GGUF export writes Qwen2-family LLMs (R1V's); this LLM is {text.model_type!r}")
    if tok is None:
        raise ModelError(f"{vlm.name} has no tokenizer; a GGUF file needs one")
    linear_q, head_q, ftype = _qtypes(gguf, kind)
    lm = model.model.language_model
    n_vocab = lm.embed_tokens.weight.shape[0]
    tied = model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr()
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name(vlm.name)
    writer.add_file_type(ftype)
    if kind != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(text.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(text))
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    tokens, types, merges, pre = _vocab(gguf, tok, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    else:  # a byte-level vocabulary without merges (`tiny`): readers derive merges from scores, so give them
        writer.add_token_scores([0.0] * n_vocab)
    for setter, value in ((writer.add_bos_token_id, tok.bos_token_id), (writer.add_eos_token_id, tok.eos_token_id),
                          (writer.add_pad_token_id, tok.pad_token_id)):
        if value is not None:
            setter(int(value))
    end_of_turn = "<|im_end|>" if vlm.spec.template != "r1v" else "<｜end▁of▁sentence｜>"
    if end_of_turn in tok.get_vocab():
        writer.add_eot_token_id(tok.get_vocab()[end_of_turn])
    writer.add_add_bos_token(False)
    from r1v.serve.vllm_serve import chat_template_jinja

    writer.add_chat_template(chat_template_jinja(vlm.spec.template))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, text.num_hidden_layers)
    written: dict[str, str] = {}
    state = {"model." + k: v for k, v in lm.state_dict().items()}
    if not tied:
        state["lm_head.weight"] = model.lm_head.weight
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"GGUF export: no GGUF name for LLM tensor {key!r}")
        q = head_q if name in ("token_embd.weight", "output.weight") else linear_q
        written[name] = _add(gguf, writer, name, t, q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


# ---------------------------------------------------------------------------------------------- projector

def _vision_name(names, key: str) -> str:
    """The projector-file name of a transformers InternVL tensor (`model.vision_tower.*`,
    `model.multi_modal_projector.*`), through llama.cpp's table as its converter does."""
    proj = {"layer_norm": "0", "linear_1": "1", "linear_2": "3"}
    if key.startswith("model.multi_modal_projector."):
        part, rest = key[len("model.multi_modal_projector."):].split(".", 1)
        key = f"mlp1.{proj[part]}.{rest}"
    elif ".lambda_" in key or key.endswith("position_embeddings"):
        key += ".weight"  # layer scales and the position table carry no suffix in transformers
    if key.endswith("embeddings.cls_token"):
        return "v.class_embd"
    name = names.get_name(key, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ModelError(f"GGUF export: no projector-file name for vision tensor {key!r}")
    return name


def write_mmproj(vlm, path: str | Path) -> tuple[dict[str, str], list[str]]:
    """The vision tower + connector of `vlm` as llama.cpp's InternVL projector file. Returns
    ({tensor name: type}, notes on what llama.cpp will compute differently)."""
    from r1v.processing.tiling import IMAGENET_MEAN, IMAGENET_STD

    gguf = _gguf()
    model, spec = vlm.model, vlm.spec
    if spec.ps_version != "v2":
        raise ModelError(f"{vlm.name}: ps_version {spec.ps_version!r}: llama.cpp's InternVL graph implements the "
                         "v2 pixel shuffle only, so its image tokens would come out in another order")
    v, text = model.config.vision_config, model.config.text_config
    if v.hidden_act not in ("gelu", "silu"):
        raise ModelError(f"GGUF projector: vision hidden_act {v.hidden_act!r} (llama.cpp reads gelu or silu)")
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"{vlm.name} vision tower + connector")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.INTERNVL)
    writer.add_vision_projection_dim(text.hidden_size)
    writer.add_vision_image_size(spec.tile_size)
    writer.add_vision_patch_size(spec.patch_size)
    writer.add_vision_embedding_length(v.hidden_size)
    writer.add_vision_feed_forward_length(v.intermediate_size)
    writer.add_vision_block_count(v.num_hidden_layers)
    writer.add_vision_head_count(v.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(float(v.layer_norm_eps))
    writer.add_vision_image_mean(list(IMAGENET_MEAN))
    writer.add_vision_image_std(list(IMAGENET_STD))
    (writer.add_vision_use_gelu if v.hidden_act == "gelu" else writer.add_vision_use_silu)(True)
    writer.add_vision_projector_scale_factor(round(1.0 / model.config.downsample_ratio))
    writer.add_vision_preproc_min_tiles(spec.min_tiles)
    writer.add_vision_preproc_max_tiles(spec.max_tiles)

    # llama.cpp's table maps mlp1.{bid} for bid < block count; the connector needs index 3
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(v.num_hidden_layers, 4))
    q = gguf.GGMLQuantizationType
    written: dict[str, str] = {}
    parts = {"model.vision_tower.": model.model.vision_tower, "model.multi_modal_projector.":
             model.model.multi_modal_projector}
    for prefix, module in parts.items():
        for key, t in module.state_dict().items():
            name = _vision_name(names, prefix + key)
            small = name in ("v.class_embd", "v.position_embd.weight")
            written[name] = _add(gguf, writer, name, t, q.F32 if small else q.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    notes = []
    rms = v.norm_type == "rms_norm"
    if rms != ((v.hidden_size, v.num_hidden_layers) == VISION_NORM_RMS_SHAPE):
        notes.append(f"llama.cpp picks the tower's norm by shape (RMSNorm only for hidden 3200 x 45 layers): this "
                     f"tower ({v.hidden_size} x {v.num_hidden_layers}, {v.norm_type}) will run there with "
                     f"{'LayerNorm' if rms else 'RMSNorm'}, so its image features will differ from r1v's")
    return written, notes


def export_gguf(src, out_dir: str | Path, kind: str = "f16") -> dict:
    """`r1v convert SRC OUT --to gguf --type KIND`: both files into `out_dir`. Returns their paths, the tensor
    types written and the notes."""
    from r1v.model.build import load_vlm

    if kind not in TYPES:
        raise ModelError(f"--type for gguf must be one of {', '.join(TYPES)}, got {kind!r} (q4_k_m: quantise the f16 "
                         "file with llama.cpp's llama-quantize; the gguf package has no K-quant quantiser)")
    vlm = load_vlm(src) if not hasattr(src, "model") else src
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(str(vlm.name)).name.replace(" ", "-")
    llm_path, mmproj_path = out / f"{stem}-{kind}.gguf", out / f"mmproj-{stem}-f16.gguf"
    llm_types = write_llm(vlm, llm_path, kind)
    mm_types, notes = write_mmproj(vlm, mmproj_path)
    return {"llm": llm_path, "mmproj": mmproj_path, "type": kind, "llm_tensor_types": llm_types,
            "mmproj_tensor_types": mm_types, "notes": notes}
