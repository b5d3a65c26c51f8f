"""Released remote-code layout: tiny checkpoints written in exactly that layout, checked against an
independent reference forward written here from the released key names (fused qkv, ls1/ls2, drop CLS,
pixel shuffle v1/v2, mlp1, Qwen2 LLM with image embeddings spliced at <IMG_CONTEXT>)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close_scaled
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from r1v.errors import ModelError
from r1v.model.build import convert, load_vlm
from r1v.model.released import INDEX, read_state
from r1v.model.tokens import tiny_tokenizer

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these

VIS = dict(hidden=32, layers=2, heads=2, inter=64, image=56, patch=14)
LLM = dict(model_type="qwen2", hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0)


def write_released(folder: Path, *, ps_version: str, norm_type: str = "rms_norm", qkv_bias: bool = False,
                   qk_norm: bool = True, tied: bool = False, select_layer: int = -1, shards: int = 1,
                   dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A tiny Skywork-style checkpoint: config.json, safetensors (optionally sharded + index), tokenizer."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.save_pretrained(folder)
    C, n_pos = VIS["hidden"], (VIS["image"] // VIS["patch"]) ** 2 + 1
    sd = {
        "vision_model.embeddings.class_embedding": rnd(1, 1, C),
        "vision_model.embeddings.patch_embedding.weight": rnd(C, 3, VIS["patch"], VIS["patch"], scale=0.05),
        "vision_model.embeddings.patch_embedding.bias": rnd(C),
        "vision_model.embeddings.position_embedding": rnd(1, n_pos, C),
    }
    for i in range(VIS["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        sd[p + "attn.qkv.weight"] = rnd(3 * C, C)
        if qkv_bias:
            sd[p + "attn.qkv.bias"] = rnd(3 * C)
        if qk_norm:
            sd[p + "attn.q_norm.weight"] = 1 + rnd(C)
            sd[p + "attn.k_norm.weight"] = 1 + rnd(C)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rnd(C, C), rnd(C)
        sd[p + "ls1"], sd[p + "ls2"] = 0.5 + rnd(C), 0.5 + rnd(C)
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"] = 1 + rnd(C)
            if norm_type == "layer_norm":
                sd[p + n + ".bias"] = rnd(C)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(VIS["inter"], C), rnd(VIS["inter"])
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(C, VIS["inter"]), rnd(C)
    D, H = 4 * C, LLM["hidden_size"]
    sd.update({"mlp1.0.weight": 1 + rnd(D), "mlp1.0.bias": rnd(D), "mlp1.1.weight": rnd(H, D), "mlp1.1.bias": rnd(H),
               "mlp1.3.weight": rnd(H, H), "mlp1.3.bias": rnd(H)})
    llm_cfg = {**LLM, "vocab_size": len(tok), "tie_word_embeddings": tied}
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(**llm_cfg))
    # leftovers real released llm_config dicts carry (remote code, old transformers)
    llm_cfg.update({"architectures": ["Qwen2ForCausalLM"], "_attn_implementation": "flash_attention_2",
                    "_name_or_path": "Qwen/QwQ-32B", "torch_dtype": "bfloat16", "rope_scaling": None,
                    "use_sliding_window": False, "bad_words_ids": None})
    for k, v in llm.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        sd["language_model." + k] = (v + rnd(*v.shape, scale=0.02)).clone()
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(folder / "model.safetensors"))
    else:
        wm = {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: sd[k] for k in keys[s::shards]}
            save_file(part, str(folder / name))
            wm.update(dict.fromkeys(part, name))
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}))
    cfg = {
        "architectures": ["SkyworkChatModel"], "model_type": "skywork_chat", "template": "skywork-r1v3",
        "downsample_ratio": 0.5, "force_image_size": VIS["image"], "dynamic_image_size": True,
        "max_dynamic_patch": 6, "min_dynamic_patch": 1, "use_thumbnail": True, "ps_version": ps_version,
        "select_layer": select_layer, "hidden_size": H, "torch_dtype": str(dtype).removeprefix("torch."),
        "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
                          "hidden_size": C, "num_hidden_layers": VIS["layers"], "num_attention_heads": VIS["heads"],
                          "intermediate_size": VIS["inter"], "image_size": VIS["image"], "patch_size": VIS["patch"],
                          "qkv_bias": qkv_bias, "qk_normalization": qk_norm, "norm_type": norm_type,
                          "layer_norm_eps": 1e-6, "hidden_act": "gelu", "num_channels": 3},
        "llm_config": llm_cfg,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def _norm(x, w, b, kind, eps=1e-6):
    if kind == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_logits(folder: Path, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Released-architecture forward from the raw tensors (independent of r1v and of transformers' InternVL)."""
    cfg = json.loads((folder / "config.json").read_text())
    vc, lc = cfg["vision_config"], cfg["llm_config"]
    sd = {k: v.float() for k, v in read_state(folder).items()}
    C, heads, kind = vc["hidden_size"], vc["num_attention_heads"], vc["norm_type"]
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, sd[e + "patch_embedding.weight"], sd[e + "patch_embedding.bias"], stride=vc["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[e + "class_embedding"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sd[e + "position_embedding"]
    hidden = [x]
    for i in range(vc["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _norm(x, sd[p + "norm1.weight"], sd.get(p + "norm1.bias"), kind)
        B, N, _ = h.shape
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if vc["qk_normalization"]:  # RMS over all heads together, as InternViT does
            q = _norm(q.transpose(1, 2).flatten(-2), sd[p + "attn.q_norm.weight"], None, "rms").view(B, N, heads, -1).transpose(1, 2)
            k = _norm(k.transpose(1, 2).flatten(-2), sd[p + "attn.k_norm.weight"], None, "rms").view(B, N, heads, -1).transpose(1, 2)
        att = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(B, N, C)
        x = x + sd[p + "ls1"] * F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = _norm(x, sd[p + "norm2.weight"], sd.get(p + "norm2.bias"), kind)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + sd[p + "ls2"] * h
        hidden.append(x)
    feats = hidden[cfg["select_layer"]][:, 1:, :]
    n, side = feats.shape[0], int(feats.shape[1] ** 0.5)
    grid = feats.reshape(n, side, side, C)  # [tile, row, col, C]
    # merge each 2x2 block: channels = [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]
    blocks = grid.reshape(n, side // 2, 2, side // 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(n, side // 2, side // 2, 4 * C)
    if cfg["ps_version"] == "v1":  # column-major order of the blocks
        blocks = blocks.transpose(1, 2)
    tokens = blocks.reshape(n, -1, 4 * C)
    y = F.layer_norm(tokens, (4 * C,), sd["mlp1.0.weight"], sd["mlp1.0.bias"], 1e-5)
    y = F.linear(F.gelu(F.linear(y, sd["mlp1.1.weight"], sd["mlp1.1.bias"])), sd["mlp1.3.weight"], sd["mlp1.3.bias"])
    llm = Qwen2ForCausalLM(Qwen2Config(**{k: lc[k] for k in (*LLM, "vocab_size", "tie_word_embeddings")}))
    lm_sd = {k[len("language_model."):]: v for k, v in sd.items() if k.startswith("language_model.")}
    missing = llm.load_state_dict(lm_sd, strict=False).missing_keys
    assert missing == ([] if not lc["tie_word_embeddings"] else ["lm_head.weight"])
    llm.eval()
    emb = llm.model.embed_tokens(input_ids).clone()
    ctx = tiny_tokenizer().convert_tokens_to_ids("<IMG_CONTEXT>")
    emb[input_ids == ctx] = y.reshape(-1, y.shape[-1])
    with torch.no_grad():
        return llm(inputs_embeds=emb).logits


def _inputs(n_tiles: int = 2, seed: int = 1):
    tok = tiny_tokenizer()
    prompt = "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * (4 * n_tiles) + "</img>\nWhat shape?<|im_end|>\n"
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    pix = torch.randn(n_tiles, 3, VIS["image"], VIS["image"], generator=torch.Generator().manual_seed(seed))
    return ids, pix


def _logits(model, ids, pix):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pix).logits


CASES = {
    "v2-rms-untied-sharded": dict(ps_version="v2", shards=3),
    "v1-rms-untied": dict(ps_version="v1"),
    "v2-layernorm-bias-tied-layer-2": dict(ps_version="v2", norm_type="layer_norm", qkv_bias=True, qk_norm=False,
                                          tied=True, select_layer=-2),
    "v1-layernorm-tied": dict(ps_version="v1", norm_type="layer_norm", qk_norm=False, tied=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_reference_forward(tmp_path, case):
    src = write_released(tmp_path / "src", **CASES[case])
    ids, pix = _inputs()
    ref = reference_logits(src, ids, pix)
    vlm = load_vlm(src)
    assert vlm.spec.ps_version == CASES[case]["ps_version"]
    assert vlm.spec.tile_size == 56 and vlm.spec.max_tiles == 6 and vlm.spec.template == "r1v3"
    assert vlm.model.config.tie_word_embeddings == CASES[case].get("tied", False)
    ours = _logits(vlm.model, ids, pix)
    assert_close_scaled(ours, ref, msg="logits vs the reference implementation")
    if CASES[case].get("tied"):
        assert vlm.model.lm_head.weight.data_ptr() == vlm.model.get_input_embeddings().weight.data_ptr()


def test_ps_v1_patch_matters(tmp_path):
    """Without r1v's v1 pixel shuffle the outputs differ: the patch is not a no-op."""
    from r1v.model.vlm import set_ps_version

    src = write_released(tmp_path / "src", ps_version="v1")
    ids, pix = _inputs()
    vlm = load_vlm(src)
    set_ps_version(vlm.model, "v2")
    assert not torch.allclose(_logits(vlm.model, ids, pix), reference_logits(src, ids, pix), atol=1e-3)


@pytest.mark.parametrize("case", ["v2-rms-untied-sharded", "v2-layernorm-bias-tied-layer-2"])
def test_export_hf_then_plain_transformers(tmp_path, case):
    src = write_released(tmp_path / "src", **CASES[case])
    ids, pix = _inputs()
    ref = reference_logits(src, ids, pix)
    convert(src, tmp_path / "hf", to="hf")
    plain = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert_close_scaled(_logits(plain, ids, pix), ref, msg="logits vs the reference implementation")
    torch.testing.assert_close(_logits(plain, ids, pix), _logits(load_vlm(src).model, ids, pix), atol=0, rtol=0)


def test_v1_to_hf_refused(tmp_path):
    src = write_released(tmp_path / "src", ps_version="v1")
    with pytest.raises(ModelError, match="ps_version 'v1'"):
        convert(src, tmp_path / "hf", to="hf")
    assert not (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("case,dtype", [("v2-rms-untied-sharded", torch.bfloat16),
                                        ("v2-layernorm-bias-tied-layer-2", torch.float32)])
def test_round_trip_bit_exact(tmp_path, case, dtype):
    src = write_released(tmp_path / "src", dtype=dtype, **CASES[case])
    convert(src, tmp_path / "hf", to="hf")
    convert(tmp_path / "hf", tmp_path / "back", to="released", max_shard_bytes=20_000)
    a, b = read_state(src), read_state(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    index = json.loads((tmp_path / "back" / INDEX).read_text())
    assert set(index["weight_map"]) == set(a) and len(set(index["weight_map"].values())) > 1
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (src, tmp_path / "back"))
    for key in ("architectures", "model_type", "template", "downsample_ratio", "force_image_size", "ps_version",
                "dynamic_image_size", "max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "select_layer",
                "vision_config"):
        assert ca[key] == cb[key], key
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings", "num_key_value_heads"):
        assert ca["llm_config"][key] == cb["llm_config"][key], key
    # the re-exported folder imports again with the same logits
    ids, pix = _inputs()
    torch.testing.assert_close(_logits(load_vlm(tmp_path / "back").model.float(), ids, pix),
                               _logits(load_vlm(src).model.float(), ids, pix), atol=0, rtol=0)


def test_v1_released_round_trip(tmp_path):
    src = write_released(tmp_path / "src", ps_version="v1")
    convert(src, tmp_path / "back", to="released")
    a, b = read_state(src), read_state(tmp_path / "back")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["ps_version"] == "v1"


def test_bad_released_folders(tmp_path):
    src = write_released(tmp_path / "src", ps_version="v2")
    cfg = json.loads((src / "config.json").read_text())
    cfg["llm_config"]["model_type"] = "internlm2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="internlm2"):
        load_vlm(src)
    src2 = write_released(tmp_path / "src2", ps_version="v2")
    sd = read_state(src2)
    sd["vision_model.encoder.layers.0.attn.extra"] = torch.zeros(1)
    save_file(sd, str(src2 / "model.safetensors"))
    with pytest.raises(ModelError, match="attn.extra"):
        load_vlm(src2)
    with pytest.raises(ModelError, match="--to"):
        convert(src2, tmp_path / "x", to="gguf")
