"""Build, load, assemble and save vision-language models on transformers' InternVL classes.

A `VLM` (`r1v.model.vlm`) bundles the `InternVLForConditionalGeneration` model, its tokenizer (with `<img>`, `</img>`,
`<IMG_CONTEXT>`), the `ProcessingSpec` the processor needs, and a name. Sources:

- `build_preset(name)`: a preset from `presets.py` (`meta` device for shapes only).
- `load_vlm(target)`: a preset name, our folder (transformers layout + `r1v.json`), a plain transformers
  InternVL folder, or a released remote-code folder (Skywork-R1V*/InternVL-chat, imported on the fly).
- `assemble(vision, llm)`: a vision checkpoint + a separate LLM checkpoint + a connector (the R1V thesis).
- `swap_llm(vlm, llm)`: keep the vision tower and connector, replace the LLM (R1V's efficient transfer).

`save_model` writes a folder plain `InternVLForConditionalGeneration.from_pretrained` loads, plus `r1v.json`;
`convert` rewrites a folder into the transformers or the released layout.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    InternVLVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from r1v.errors import ModelError
from r1v.model import released
from r1v.model.presets import PRESETS, TINY_TEXT, get_preset
from r1v.model.tokens import add_image_tokens, single_token_id, tiny_tokenizer
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

R1V_JSON = "r1v.json"

# Role markers each chat template needs as single tokens (the swap_llm compatibility rule).
TEMPLATE_MARKERS: dict[str, tuple[str, ...]] = {
    "r1v": ("<｜User｜>", "<｜Assistant｜>"),
    "r1v2": ("<|im_start|>", "<|im_end|>"),
    "r1v3": ("<|im_start|>", "<|im_end|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}


# ---------------------------------------------------------------------------------------------- presets

def _internvl_config(vision: dict, text: dict, ratio: float, image_token_id: int) -> InternVLConfig:
    return InternVLConfig(vision_config=dict(vision), text_config=dict(text), downsample_ratio=ratio,
                          image_token_id=image_token_id,
                          tie_word_embeddings=bool(text.get("tie_word_embeddings", False)))


def _instantiate(config: InternVLConfig, device: str, dtype: torch.dtype | None, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = InternVLForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_preset(name: str, device: str = "cpu", dtype: torch.dtype | None = None) -> VLM:
    """A preset model: random weights (`tiny`, 38B shapes), real parts (`smol`), or shapes only on `meta`."""
    preset = get_preset(name)
    if preset.from_assets:
        return _build_smol(device, dtype)
    tokenizer = None
    text = dict(preset.text)
    image_token_id = preset.image_token_id
    if name in ("tiny", "tiny64"):
        tokenizer = tiny_tokenizer()
        text["vocab_size"] = len(tokenizer)
        image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    config = _internvl_config(preset.vision, text, preset.downsample_ratio, image_token_id)
    model = _instantiate(config, device, dtype)
    return VLM(model, tokenizer, preset.spec, name, {"preset": name})


def _build_smol(device: str, dtype: torch.dtype | None) -> VLM:
    from r1v import assets

    llm_dir = Path(assets.smollm2_dir())
    tower_dir = assets.vision_tower_dir()
    prov = {"preset": "smol", "llm": str(llm_dir), "vision": str(tower_dir) if tower_dir else "random"}
    if device == "meta":
        vcfg = (InternVLVisionConfig.from_pretrained(tower_dir) if tower_dir
                else InternVLVisionConfig(**assets.SMOL_VISION_CONFIG))
        tcfg = AutoConfig.from_pretrained(llm_dir)
        tok = AutoTokenizer.from_pretrained(llm_dir)
        add_image_tokens(tok)
        text = tcfg.to_dict()
        text["vocab_size"] = max(tcfg.vocab_size, len(tok))
        config = _internvl_config(vcfg.to_dict(), text, 0.5, tok.convert_tokens_to_ids(IMG_CONTEXT))
        spec = replace(get_preset("smol").spec, tile_size=first_int(vcfg.image_size), patch_size=first_int(vcfg.patch_size))
        return VLM(_instantiate(config, "meta", dtype), tok, spec, "smol", prov)
    if tower_dir is None:
        warnings.warn("no pretrained small vision tower found (run `r1v assets`); using a random one", stacklevel=2)
    vlm = assemble(str(tower_dir) if tower_dir else "smol-random-vision", str(llm_dir))
    vlm = replace(vlm, name="smol", spec=replace(vlm.spec, template="chatml"), provenance=prov)
    return _to(vlm, device, dtype)


def _to(vlm: VLM, device: str, dtype: torch.dtype | None) -> VLM:
    if dtype is not None:
        vlm.model.to(dtype)
    if device not in ("cpu", "meta"):
        vlm.model.to(device)
    return vlm


# ---------------------------------------------------------------------------------------------- folders

def hf_config(folder: Path) -> PretrainedConfig:
    """`AutoConfig` of a transformers folder; a config transformers rejects is a ModelError naming it."""
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - transformers raises TypeError, ValueError, KeyError, hub errors, ...
        raise ModelError(f"{Path(folder) / 'config.json'}: invalid config ({type(e).__name__}: {e})") from None


def _from_pretrained(cls, folder: Path, **kwargs):
    """`cls.from_pretrained(folder)` after checking the weight files; failures name the folder."""
    check_weights(folder)
    try:
        return cls.from_pretrained(folder, **kwargs)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - shape mismatches, dtype errors, damaged .bin files, ...
        raise ModelError(f"{folder}: cannot load the weights ({type(e).__name__}: {e})") from None


def folder_kind(path: Path) -> str:
    """'r1v' | 'hf' | 'released' | 'vision' | 'released_vision' | 'llm' from the folder's config.json."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a folder and not a preset name")
    cfg = read_folder_json(path / "config.json")
    mtype = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    if mtype == "internvl":
        return "r1v" if (path / R1V_JSON).exists() else "hf"
    if released.is_released_config(cfg):
        return "released"
    if mtype == "internvl_vision":
        return "vision"
    if released.is_released_vision_config(cfg):
        return "released_vision"
    if any(a.endswith("ForCausalLM") for a in archs) or mtype in ("qwen2", "llama", "qwen3", "mistral"):
        return "llm"
    raise ModelError(f"{path}/config.json: unrecognised model (model_type={mtype!r}, architectures={archs})")


def load_vlm(target: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
             quantize: str | None = None) -> VLM:
    """Load a preset name or a model folder (ours, plain transformers InternVL, or released layout).

    `quantize` ('int8' | 'int4'): the LLM's weights quantised for inference (`r1v.model.quantize`); the model
    is read on the CPU and moved to `device` layer by layer as it is quantised.
    """
    if quantize is not None:
        from r1v.model.quantize import check_mode, quantize_vlm

        check_mode(quantize)
        return quantize_vlm(load_vlm(target, dtype=dtype), quantize, device)
    path = Path(target)
    if not path.exists():
        if str(target) not in PRESETS:
            raise ModelError(f"{target}: no such folder and not a preset name (presets: {', '.join(PRESETS)})")
        return build_preset(str(target), device=device, dtype=dtype)
    kind = folder_kind(path)
    if kind == "released":
        return _to(released.load_released(path, dtype=dtype), device, dtype)
    if kind not in ("r1v", "hf"):
        raise ModelError(f"{path}: a {kind} checkpoint, not a whole vision-language model "
                         "(use `r1v assemble` to join a vision tower and an LLM)")
    config = hf_config(path)
    tokenizer = load_tokenizer(path)
    model = _from_pretrained(InternVLForConditionalGeneration, path, config=config, dtype=dtype or "auto").eval()
    if kind == "r1v":
        meta = read_folder_json(path / R1V_JSON)
        spec, name, prov = _spec(meta.get("spec", {}), path / R1V_JSON), meta.get("name", path.name), meta.get("provenance", {})
    else:
        v = model.config.vision_config
        spec = ProcessingSpec(template=guess_template(tokenizer), tile_size=first_int(v.image_size),
                              patch_size=first_int(v.patch_size), downsample_ratio=model.config.downsample_ratio)
        name, prov = path.name, {"source": str(path)}
    if spec.ps_version == "v1":
        set_ps_version(model, "v1")
    return _to(VLM(model, tokenizer, spec, name, prov), device, dtype)


def _spec(data: object, source: Path) -> ProcessingSpec:
    """The `spec` of an r1v.json, every field checked against `ProcessingSpec` (unknown keys are ignored)."""
    from r1v.config import from_dict
    from r1v.errors import ConfigError

    if not isinstance(data, dict):
        raise ModelError(f"{source}: field 'spec' must be an object, got {type(data).__name__}")
    known = {k: v for k, v in data.items() if k in ProcessingSpec.__dataclass_fields__}
    try:
        return from_dict(ProcessingSpec, known, f"{source} spec")
    except ConfigError as e:
        raise ModelError(str(e)) from None


def save_model(vlm: VLM, out_dir: str | Path, *, max_shard_size: str = "5GB") -> Path:
    """Write `vlm` as a transformers InternVL folder (+ tokenizer) with `r1v.json` beside it."""
    out = Path(out_dir)
    model = vlm.model
    if not isinstance(model, InternVLForConditionalGeneration):
        raise ModelError(f"save_model: expected an InternVLForConditionalGeneration, got {type(model).__name__}"
                         " (merge LoRA adapters first with merge_and_unload())")
    if any(p.is_meta for p in model.parameters()):
        raise ModelError(f"save_model: {vlm.name} is on the meta device (shapes only); build it on cpu")
    if "quantize" in vlm.provenance:
        raise ModelError(f"save_model: {vlm.name} was quantised for inference ({vlm.provenance['quantize']['mode']}); "
                         "save the full-precision model, or export it with `r1v convert --to gguf|compressed-tensors`")
    meta = {"format": "r1v/1", "name": vlm.name, "spec": vlm.spec.to_dict(), "provenance": vlm.provenance}
    if vlm.spec.ps_version == "v1":
        meta["note"] = ("ps_version v1: plain transformers applies v2 pixel shuffle to this folder; "
                        "load it with r1v.model.load_vlm for the checkpoint's own token order")
    with model_folder(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if vlm.tokenizer is not None:
            vlm.tokenizer.save_pretrained(tmp)
        (tmp / R1V_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- parts

def load_vision(src: str | Path) -> tuple[InternVLVisionModel, float, str]:
    """(vision tower, downsample_ratio, ps_version) from a preset name or a vision/VLM folder."""
    path = Path(src)
    if str(src) == "smol-random-vision":
        from r1v import assets

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return InternVLVisionModel(InternVLVisionConfig(**assets.SMOL_VISION_CONFIG)).eval(), 0.5, "v2"
    if not path.exists():
        preset = get_preset(str(src))
        if preset.from_assets:
            vlm = build_preset(str(src))
            return vlm.model.model.vision_tower, vlm.model.config.downsample_ratio, "v2"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tower = InternVLVisionModel(InternVLVisionConfig(**preset.vision)).eval()
        return tower, preset.downsample_ratio, preset.spec.ps_version
    kind = folder_kind(path)
    if kind == "vision":
        return _from_pretrained(InternVLVisionModel, path).eval(), 0.5, "v2"
    if kind == "released_vision":
        return released.load_released_vision(path), 0.5, "v2"
    if kind in ("r1v", "hf", "released"):
        vlm = load_vlm(path)
        return vlm.model.model.vision_tower, vlm.model.config.downsample_ratio, vlm.spec.ps_version
    raise ModelError(f"{path}: a {kind} checkpoint has no vision tower")


def load_llm(src: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(CausalLM, tokenizer) from a preset name (`tiny`, `smol`) or an LLM folder with a tokenizer."""
    path = Path(src)
    if not path.exists():
        preset = get_preset(str(src))
        if preset.name == "tiny":
            tok = tiny_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                llm = Qwen2ForCausalLM(Qwen2Config(**{**TINY_TEXT, "vocab_size": len(tok)}))
            return llm.eval(), tok
        if preset.from_assets:
            from r1v import assets

            return load_llm(assets.smollm2_dir())
        raise ModelError(f"preset {preset.name!r} has no tokenizer; pass an LLM checkpoint folder instead")
    kind = folder_kind(path)
    if kind != "llm":
        raise ModelError(f"{path}: a {kind} checkpoint, expected a CausalLM folder (e.g. Qwen2ForCausalLM)")
    tok = load_tokenizer(path)
    llm = _from_pretrained(AutoModelForCausalLM, path, config=hf_config(path), dtype="auto").eval()
    if not hasattr(llm, "model") or not hasattr(llm, "lm_head"):
        raise ModelError(f"{path}: {type(llm).__name__} lacks .model/.lm_head (need a Qwen2/Llama-family CausalLM)")
    return llm, tok


_CONNECTOR_KEYS = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def load_connector(path: str | Path) -> dict[str, torch.Tensor]:
    """Projector weights from a safetensors file: keys `layer_norm.*`/`linear_1.*`/`linear_2.*`, optionally
    prefixed `model.multi_modal_projector.`, or the released `mlp1.{0,1,3}.*`."""
    try:
        raw = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelError(f"{path}: cannot read connector weights ({e})") from e
    out = {}
    for k, v in raw.items():
        k = k.removeprefix("model.").removeprefix("multi_modal_projector.")
        if k.startswith("mlp1."):
            idx, rest = k[len("mlp1."):].split(".", 1)
            k = f"{_CONNECTOR_KEYS.get(idx, idx)}.{rest}"
        out[k] = v
    return out


def _compose(tower, ratio: float, ps_version: str, llm, tok, name: str, template: str,
             connector: torch.nn.Module | dict | None, provenance: dict) -> VLM:
    add_image_tokens(tok, llm)
    text = llm.config.to_dict()
    tie = bool(getattr(llm.config, "tie_word_embeddings", False))
    config = InternVLConfig(vision_config=tower.config.to_dict(), text_config=text, downsample_ratio=ratio,
                            image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT), tie_word_embeddings=tie)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    dtype = llm.get_input_embeddings().weight.dtype
    model.model.vision_tower = tower.to(dtype)
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    if isinstance(connector, torch.nn.Module):
        proj = connector
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            proj = InternVLMultiModalProjector(config)
        if connector is not None:
            try:
                proj.load_state_dict(connector, strict=True)
            except RuntimeError as e:
                source = provenance.get("connector", "the connector file")
                detail = " ".join(str(e).split())  # torch lists every mismatch on its own line
                raise ModelError(f"{source}: connector weights do not fit this vision tower + LLM: {detail}") from None
    model.model.multi_modal_projector = proj.to(dtype)
    if any(p.is_meta for p in model.parameters()):
        raise ModelError("internal: parts left on the meta device after assembly")
    model.eval()
    v = tower.config
    spec = ProcessingSpec(template=template, tile_size=first_int(v.image_size), patch_size=first_int(v.patch_size),
                          downsample_ratio=ratio, ps_version=ps_version)
    if ps_version == "v1":
        set_ps_version(model, "v1")
    return VLM(model, tok, spec, name, provenance)


def assemble(vision: str | Path, llm: str | Path, connector: str | Path | None = None, *,
             template: str | None = None, name: str = "assembled") -> VLM:
    """Join a vision tower and a separate LLM with a connector (from `connector` or freshly initialised).

    Adds `<img>`, `</img>`, `<IMG_CONTEXT>` to the LLM tokenizer if missing (embeddings resized, new rows
    set to the mean of the old ones). `template` defaults to a guess from the tokenizer.
    """
    tower, ratio, ps = load_vision(vision)
    lm, tok = load_llm(llm)
    state = load_connector(connector) if connector is not None else None
    tmpl = template or ("r1v3" if str(llm) == "tiny" else guess_template(tok))
    _check_template(tok, tmpl, str(llm))
    prov = {"vision": str(vision), "llm": str(llm), "connector": str(connector) if connector else "fresh"}
    return _compose(tower, ratio, ps, lm, tok, name, tmpl, state, prov)


def _check_template(tok: PreTrainedTokenizerBase, template: str, source: str) -> None:
    if template not in TEMPLATE_MARKERS:
        raise ModelError(f"unknown template {template!r}; known: {', '.join(TEMPLATE_MARKERS)}")
    missing = [m for m in TEMPLATE_MARKERS[template] if single_token_id(tok, m) is None]
    if missing:
        raise ModelError(f"tokenizer of {source} cannot use template {template!r}: "
                         f"{', '.join(missing)} not single tokens (pass a template this tokenizer supports)")


def swap_llm(vlm: VLM, llm: str | Path, *, template: str | None = None) -> VLM:
    """Keep the vision tower and connector of `vlm`; replace its LLM (and tokenizer) by `llm`.

    Compatibility rule (refused with ModelError otherwise):
    1. the new LLM's hidden size equals the connector's output size;
    2. the new tokenizer holds `<img>`, `</img>`, `<IMG_CONTEXT>` as single tokens once added;
    3. the chat template (`template`, default the current one) has its role markers as single tokens
       in the new tokenizer (e.g. `<|im_start|>`/`<|im_end|>` for ChatML templates).
    """
    proj = vlm.model.model.multi_modal_projector
    lm, tok = load_llm(llm)
    out_dim = proj.linear_2.out_features
    if lm.config.hidden_size != out_dim:
        raise ModelError(f"swap_llm: {llm} has hidden size {lm.config.hidden_size} but the connector outputs "
                         f"{out_dim}; train a new connector with `assemble` instead")
    tmpl = template or vlm.spec.template
    _check_template(tok, tmpl, str(llm))
    inner = vlm.model.model
    prov = {**vlm.provenance, "llm": str(llm), "swapped_from": vlm.name}
    new = _compose(inner.vision_tower, vlm.model.config.downsample_ratio, vlm.spec.ps_version, lm, tok,
                   vlm.name, tmpl, proj, prov)
    new.spec = replace(vlm.spec, template=tmpl)
    return new


def convert(src: str | Path, dst: str | Path, to: str = "hf", max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Convert a model folder: `to='hf'` (transformers InternVL + r1v.json) or `to='released'`."""
    if to not in ("hf", "released"):
        raise ModelError(f"--to must be 'hf', 'released', 'gguf' or 'compressed-tensors', got {to!r}")
    vlm = load_vlm(src)
    if to == "released":
        return released.export_released(vlm, dst, max_shard_bytes)
    if vlm.spec.ps_version == "v1":
        raise ModelError(
            f"{src}: ps_version 'v1' cannot be converted to the plain transformers layout: transformers' "
            "InternVL always applies the v2 pixel shuffle, which orders each tile's image tokens row-major "
            "where v1 orders them column-major, so plain transformers would compute different outputs. No "
            "weight-only rewrite fixes this (the order follows the image content). Load the folder with "
            "r1v.model.load_vlm (which patches the shuffle) or keep it in the released layout.")
    return save_model(vlm, dst, max_shard_size=f"{max(1, max_shard_bytes // 1024**2)}MB")
