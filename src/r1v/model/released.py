"""Import and export of the released remote-code layout (Skywork-R1V/R1V2/R1V3, InternVL-chat).

Released folders hold `config.json` with `vision_config` (InternViT), `llm_config` (Qwen2/Llama),
`downsample_ratio`, `force_image_size`, `dynamic_image_size`, `min/max_dynamic_patch`, `use_thumbnail`,
`template`, `ps_version`, `select_layer`, and safetensors weights (sharded with
`model.safetensors.index.json`) under these names, mapped here to transformers' InternVL names:

    vision_model.embeddings.class_embedding            model.vision_tower.embeddings.cls_token
    vision_model.embeddings.patch_embedding.*          ...embeddings.patch_embeddings.projection.*
    vision_model.embeddings.position_embedding         ...embeddings.position_embeddings
    vision_model.encoder.layers.N.attn.qkv.*           ...encoder.layer.N.attention.{q,k,v}_proj.* (rows split in 3)
    ....attn.{q_norm,k_norm}.weight / attn.proj.*      ...attention.{q_norm,k_norm}.weight / projection_layer.*
    ....ls1 / ls2 / norm1 / norm2 / mlp.fc1 / mlp.fc2  ...lambda_1 / lambda_2 / layernorm_before / layernorm_after / mlp.*
    mlp1.0 / mlp1.1 / mlp1.3                           model.multi_modal_projector.layer_norm / linear_1 / linear_2
    language_model.model.* / language_model.lm_head.*  model.language_model.* / lm_head.*

Tensors are renamed or split/concatenated only, never changed, so released -> hf -> released is
bit-exact. ps_version 'v1' is imported (r1v patches the pixel shuffle) but `convert --to hf` refuses it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig
from transformers import InternVLVisionModel as _VisionModel
from transformers.utils import logging as hf_logging

from r1v.errors import ModelError
from r1v.model.tokens import add_image_tokens
from r1v.model.vlm import (
    VLM,
    check_weights,
    first_int,
    guess_template,
    load_tokenizer,
    model_folder,
    read_folder_json,
    set_ps_version,
)
from r1v.processing.spec import IMG_CONTEXT, ProcessingSpec

INDEX = "model.safetensors.index.json"
SUPPORTED_LLMS = ("qwen2", "llama", "qwen3", "mistral")
_LAYER_RENAMES = [  # (released suffix, transformers suffix) inside encoder layer N
    ("attn.q_norm.weight", "attention.q_norm.weight"), ("attn.k_norm.weight", "attention.k_norm.weight"),
    ("attn.proj.weight", "attention.projection_layer.weight"), ("attn.proj.bias", "attention.projection_layer.bias"),
    ("ls1", "lambda_1"), ("ls2", "lambda_2"),
    ("norm1.weight", "layernorm_before.weight"), ("norm1.bias", "layernorm_before.bias"),
    ("norm2.weight", "layernorm_after.weight"), ("norm2.bias", "layernorm_after.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
]
_EMB_RENAMES = [
    ("embeddings.class_embedding", "embeddings.cls_token"),
    ("embeddings.patch_embedding.weight", "embeddings.patch_embeddings.projection.weight"),
    ("embeddings.patch_embedding.bias", "embeddings.patch_embeddings.projection.bias"),
    ("embeddings.position_embedding", "embeddings.position_embeddings"),
]
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_MLP1_BACK = {v: k for k, v in _MLP1.items()}
_QKV = ("q_proj", "k_proj", "v_proj")


def is_released_config(cfg: dict) -> bool:
    return cfg.get("model_type") in ("skywork_chat", "internvl_chat") or ("llm_config" in cfg and "vision_config" in cfg)


def is_released_vision_config(cfg: dict) -> bool:
    return cfg.get("model_type") == "intern_vit_6b" or "InternVisionModel" in (cfg.get("architectures") or [])


# ---------------------------------------------------------------------------------------------- tensors

def vision_to_hf(sd: dict[str, torch.Tensor], src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Released InternViT keys (no `vision_model.` prefix) -> InternVLVisionModel keys."""
    out: dict[str, torch.Tensor] = {}
    emb = dict(_EMB_RENAMES)
    layer = dict(_LAYER_RENAMES)
    for key, t in sd.items():
        if key in emb:
            out[emb[key]] = t
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
        if m is None:
            raise ModelError(f"{src}: unexpected vision key {key!r}")
        n, rest = m.groups()
        pre = f"encoder.layer.{n}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(_QKV, t.chunk(3, dim=0), strict=True):
                out[f"{pre}attention.{name}.{kind}"] = part
        elif rest in layer:
            out[pre + layer[rest]] = t
        else:
            raise ModelError(f"{src}: unexpected vision key {key!r} (e.g. LayerNorm qk-norm is not supported)")
    return out


def vision_to_released(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """InternVLVisionModel keys -> released InternViT keys (q/k/v concatenated into qkv)."""
    emb = {h: r for r, h in _EMB_RENAMES}
    layer = {h: r for r, h in _LAYER_RENAMES}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key in emb:
            out[emb[key]] = t
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
        if m is None:
            raise ModelError(f"unexpected vision tower key {key!r}")
        n, rest = m.groups()
        pre = f"encoder.layers.{n}."
        qkv = re.fullmatch(r"attention\.(q_proj|k_proj|v_proj)\.(weight|bias)", rest)
        if qkv:
            if qkv.group(1) == "q_proj":
                kind = qkv.group(2)
                parts = [sd[f"encoder.layer.{n}.attention.{p}.{kind}"] for p in _QKV]
                out[f"{pre}attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        elif rest in layer:
            out[pre + layer[rest]] = t
        else:
            raise ModelError(f"unexpected vision tower key {key!r}")
    return out


def state_to_hf(sd: dict[str, torch.Tensor], src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Whole released state dict -> InternVLForConditionalGeneration state dict."""
    vision = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    out = {f"model.vision_tower.{k}": v for k, v in vision_to_hf(vision, src).items()}
    for key, t in sd.items():
        if key.startswith("vision_model."):
            continue
        if key.startswith("mlp1."):
            idx, rest = key[len("mlp1."):].split(".", 1)
            if idx not in _MLP1:
                raise ModelError(f"{src}: unexpected connector key {key!r} (expected mlp1.0/1/3)")
            out[f"model.multi_modal_projector.{_MLP1[idx]}.{rest}"] = t
        elif key.startswith("language_model.model."):
            out["model.language_model." + key[len("language_model.model."):]] = t
        elif key.startswith("language_model.lm_head."):
            out["lm_head." + key[len("language_model.lm_head."):]] = t
        else:
            raise ModelError(f"{src}: unexpected key {key!r} (not vision_model.*, mlp1.*, language_model.*)")
    return out


def state_to_released(sd: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """InternVLForConditionalGeneration state dict -> released names (lm_head dropped when tied)."""
    vt = "model.vision_tower."
    vision = {k[len(vt):]: v for k, v in sd.items() if k.startswith(vt)}
    out = {f"vision_model.{k}": v for k, v in vision_to_released(vision).items()}
    for key, t in sd.items():
        if key.startswith(vt):
            continue
        if key.startswith("model.multi_modal_projector."):
            name, rest = key[len("model.multi_modal_projector."):].split(".", 1)
            out[f"mlp1.{_MLP1_BACK[name]}.{rest}"] = t
        elif key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model."):]] = t
        elif key.startswith("lm_head."):
            if not tied:
                out["language_model." + key] = t
        else:
            raise ModelError(f"unexpected model key {key!r}")
    return {k: v.contiguous() for k, v in out.items()}


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: `model.safetensors.index.json` shards or a single `model.safetensors`."""
    from safetensors import SafetensorError

    folder = Path(folder)
    files = check_weights(folder)  # names a missing shard or a damaged header
    if not files:
        raise ModelError(f"{folder}: no model.safetensors or {INDEX} (convert .bin checkpoints to safetensors first)")
    out: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    out[k] = f.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return out


def write_sharded(sd: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = 5 * 1024**3) -> list[str]:
    """Write safetensors shards (`model-0000i-of-0000n.safetensors` + index) or one `model.safetensors`."""
    folder = Path(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


# ---------------------------------------------------------------------------------------------- configs

def vision_config_to_hf(vc: dict) -> InternVLVisionConfig:
    return InternVLVisionConfig(
        hidden_size=vc["hidden_size"], num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"], intermediate_size=vc["intermediate_size"],
        image_size=vc.get("image_size", 448), patch_size=vc.get("patch_size", 14), num_channels=vc.get("num_channels", 3),
        attention_bias=bool(vc.get("qkv_bias", False)), use_qk_norm=bool(vc.get("qk_normalization", False)),
        norm_type=vc.get("norm_type", "rms_norm"), layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        hidden_act=vc.get("hidden_act", "gelu"), initializer_range=vc.get("initializer_range", 0.02),
        use_mean_pooling=True,
    )


_VISION_FILLER = {"initializer_factor": 1.0, "dropout": 0.0, "attention_dropout": 0.0, "drop_path_rate": 0.0,
                  "use_flash_attn": False}


def vision_config_to_released(v: InternVLVisionConfig) -> dict:
    """The InternViT config fields that matter (no training-only filler)."""
    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
        "image_size": first_int(v.image_size), "patch_size": first_int(v.patch_size), "num_channels": v.num_channels,
        "qkv_bias": v.attention_bias, "qk_normalization": v.use_qk_norm, "norm_type": v.norm_type,
        "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
    }


def template_from_released(name: str | None, tokenizer=None) -> str:
    """Our template name for a released `template` string (unknown names: ChatML unless R1-distill)."""
    name = (name or "").lower()
    for ours in ("r1v3", "r1v2"):
        if ours in name:
            return ours
    if "r1v" in name or "deepseek" in name:
        return "r1v"
    if name in ("chatml",):
        return "chatml"
    return guess_template(tokenizer)


def config_to_hf(cfg: dict, image_token_id: int, src: str = "config.json") -> tuple[InternVLConfig, ProcessingSpec]:
    """Released top-level config -> (InternVLConfig, ProcessingSpec)."""
    try:
        vc, lc = cfg["vision_config"], cfg["llm_config"]
    except KeyError as e:
        raise ModelError(f"{src}: missing {e.args[0]!r}") from None
    if not isinstance(vc, dict) or not isinstance(lc, dict):
        raise ModelError(f"{src}: 'vision_config' and 'llm_config' must be objects")
    mtype = lc.get("model_type") or ""
    if mtype not in SUPPORTED_LLMS:
        archs = lc.get("architectures")
        raise ModelError(f"{src}: llm_config model_type {mtype!r} ({archs}) is not supported; "
                         f"supported LLM families: {', '.join(SUPPORTED_LLMS)}")
    # drop remote-code/loader leftovers (e.g. "_attn_implementation": "flash_attention_2" would force flash-attn)
    text = {k: v for k, v in lc.items() if not k.startswith("_")
            and k not in ("architectures", "auto_map", "torch_dtype", "attn_implementation")}
    tie = bool(lc.get("tie_word_embeddings", False))
    try:
        ratio = float(cfg.get("downsample_ratio", 0.5))
        select = int(cfg.get("select_layer", -1))
    except (TypeError, ValueError) as e:
        raise ModelError(f"{src}: downsample_ratio / select_layer must be numbers ({e})") from None
    try:
        vision = vision_config_to_hf(vc)
        config = InternVLConfig(vision_config=vision.to_dict(), text_config=text, downsample_ratio=ratio,
                                image_token_id=image_token_id, tie_word_embeddings=tie, vision_feature_layer=select)
    except KeyError as e:
        raise ModelError(f"{src}: vision_config has no {e.args[0]!r}") from None
    except Exception as e:  # noqa: BLE001 - transformers' config checks raise TypeError, ValueError, hub errors
        raise ModelError(f"{src}: invalid config ({type(e).__name__}: {e})") from None
    dynamic = bool(cfg.get("dynamic_image_size", True))
    spec = ProcessingSpec(
        template=template_from_released(cfg.get("template")),
        tile_size=int(cfg.get("force_image_size") or first_int(vision.image_size)), patch_size=first_int(vision.patch_size),
        downsample_ratio=ratio, min_tiles=int(cfg.get("min_dynamic_patch", 1)),
        max_tiles=int(cfg.get("max_dynamic_patch", 12)) if dynamic else 1,
        use_thumbnail=bool(cfg.get("use_thumbnail", True)), ps_version=cfg.get("ps_version", "v1"),
    )
    if spec.ps_version not in ("v1", "v2"):
        raise ModelError(f"{src}: ps_version {spec.ps_version!r} is not 'v1' or 'v2'")
    return config, spec


def config_to_released(config: InternVLConfig, spec: ProcessingSpec, base: dict | None = None,
                       dtype: str = "bfloat16") -> dict:
    """InternVLConfig + spec -> released top-level config, updating `base` (the imported one) if given."""
    skywork = spec.template in ("r1v", "r1v2", "r1v3")
    out = dict(base) if base else {
        "architectures": ["SkyworkChatModel" if skywork else "InternVLChatModel"],
        "model_type": "skywork_chat" if skywork else "internvl_chat",
        "template": spec.template, "use_backbone_lora": 0, "use_llm_lora": 0,
    }
    t = config.text_config
    text = t.to_dict()
    llm = dict(base["llm_config"]) if base and "llm_config" in base else {
        k: v for k, v in text.items() if k not in ("dtype", "transformers_version")}
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        if k in text:
            llm[k] = text[k]
    llm.setdefault("architectures", [f"{type(t).__name__.removesuffix('Config')}ForCausalLM"])
    llm["tie_word_embeddings"] = bool(config.tie_word_embeddings)
    vision = vision_config_to_released(config.vision_config)
    vision = {**base["vision_config"], **vision} if base and "vision_config" in base else {**vision, **_VISION_FILLER}
    out.update({
        "vision_config": vision, "llm_config": llm, "downsample_ratio": config.downsample_ratio,
        "force_image_size": spec.tile_size, "dynamic_image_size": spec.max_tiles > 1,
        "min_dynamic_patch": spec.min_tiles, "max_dynamic_patch": spec.max_tiles,
        "use_thumbnail": spec.use_thumbnail, "ps_version": spec.ps_version,
        "select_layer": config.vision_feature_layer, "hidden_size": t.hidden_size,
        "tie_word_embeddings": bool(config.tie_word_embeddings), "torch_dtype": dtype,
    })
    if template_from_released(out.get("template")) != spec.template:
        out["template"] = spec.template
    return out


# ---------------------------------------------------------------------------------------------- folders

def _read_config(folder: Path) -> dict:
    return read_folder_json(Path(folder) / "config.json")


def load_released(folder: str | Path, dtype: torch.dtype | None = None):
    """A released remote-code folder as a `VLM` (weights renamed in memory; ps_version v1 patched)."""
    folder = Path(folder)
    cfg = _read_config(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about the remote model_type
    try:
        tok = load_tokenizer(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    added = add_image_tokens(tok)
    config, spec = config_to_hf(cfg, tok.convert_tokens_to_ids(IMG_CONTEXT), f"{folder}/config.json")
    spec = ProcessingSpec.from_dict({**spec.to_dict(), "template": template_from_released(cfg.get("template"), tok)})
    state = state_to_hf(read_state(folder), str(folder))
    with init_empty_weights(include_buffers=False):
        model = InternVLForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ModelError(f"{folder}: weights do not match config.json: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    if added:
        from r1v.model.tokens import grow_embeddings

        grow_embeddings(model, len(tok), [tok.convert_tokens_to_ids(t) for t in added])
    if dtype is not None:
        model.to(dtype)
    model.eval()
    if spec.ps_version == "v1":
        set_ps_version(model, "v1")
    prov = {"source": str(folder), "released_config": cfg}
    return VLM(model, tok, spec, folder.name, prov)


def load_released_vision(folder: str | Path) -> _VisionModel:
    """A released InternViT folder (keys with or without `vision_model.`) as an InternVLVisionModel."""
    folder = Path(folder)
    cfg = _read_config(folder)
    sd = {k.removeprefix("vision_model."): v for k, v in read_state(folder).items()}
    state = vision_to_hf(sd, str(folder))
    with init_empty_weights(include_buffers=False):
        tower = _VisionModel(vision_config_to_hf(cfg))
    result = tower.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{folder}: weights do not match config.json: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return tower.eval()


def export_released(vlm, dst: str | Path, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write `vlm` in the released layout (config.json, shards + index, tokenizer). No modeling code."""
    dst = Path(dst)
    model = vlm.model
    if any(p.is_meta for p in model.parameters()):
        raise ModelError(f"{vlm.name} is on the meta device (shapes only); nothing to export")
    tied = bool(model.config.tie_word_embeddings)
    sd = state_to_released(model.state_dict(), tied)
    dtype = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    cfg = config_to_released(model.config, vlm.spec, vlm.provenance.get("released_config"), dtype)
    with model_folder(dst) as tmp:  # the whole folder appears at once, or not at all
        write_sharded(sd, tmp, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        if vlm.tokenizer is not None:
            vlm.tokenizer.save_pretrained(tmp)
    return dst
