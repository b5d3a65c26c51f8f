"""Presets, save/load, assemble from separate checkpoints, swap_llm, ps_version override."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, InternVLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from r1v.errors import ModelError
from r1v.model.build import assemble, build_preset, load_vlm, save_model, swap_llm
from r1v.model.parts import count_params
from r1v.model.presets import TINY_TEXT
from r1v.model.tokens import IMAGE_TOKENS, tiny_tokenizer
from r1v.model.vlm import set_ps_version
from r1v.processing.spec import IMG_CONTEXT

# Recorded parameter counts (exact; the 38B presets are built on the meta device).
R1V_38B = {"vision": 5_536_496_000, "connector": 91_786_240, "llm": 32_763_876_352, "total": 38_392_158_592}
TINY = {"vision": 36_448, "connector": 12_672, "llm": 108_096, "total": 157_216}


def _inputs(vlm, n_tiles=1):
    tok = vlm.tokenizer
    text = "<|im_start|>user\n<img>" + IMG_CONTEXT * (vlm.spec.tokens_per_tile * n_tiles) + "</img>\nhi<|im_end|>\n"
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    pix = torch.randn(n_tiles, 3, vlm.spec.tile_size, vlm.spec.tile_size, generator=torch.Generator().manual_seed(0))
    return ids, pix


def _logits(model, ids, pix):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pix).logits


@pytest.mark.parametrize("name", ["r1v-38b", "r1v2-38b", "r1v3-38b"])
def test_38b_presets_on_meta(name):
    vlm = build_preset(name, device="meta")
    counts = count_params(vlm.model)
    assert counts == R1V_38B
    assert abs(counts["total"] - 38.4e9) / 38.4e9 < 0.01
    v, t = vlm.model.config.vision_config, vlm.model.config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (3200, 45, 25, 12800)
    assert v.use_qk_norm and v.norm_type == "rms_norm" and not v.attention_bias
    assert (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads, t.vocab_size) == (5120, 64, 8, 152064)
    assert vlm.model.config.tie_word_embeddings is False
    assert vlm.model.model.multi_modal_projector.linear_1.weight.shape == (5120, 12800)
    assert vlm.spec.tokens_per_tile == 256 and vlm.spec.template == name.split("-")[0]


def test_tiny_preset_builds_fast_and_runs():
    t0 = time.perf_counter()
    vlm = build_preset("tiny")
    print(f"tiny build: {time.perf_counter() - t0:.3f} s")
    assert count_params(vlm.model) == TINY
    assert vlm.spec.tokens_per_tile == 4
    tok = vlm.tokenizer
    for t in (*IMAGE_TOKENS, "<think>", "</think>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert vlm.model.config.image_token_id == tok.convert_tokens_to_ids(IMG_CONTEXT)
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
    ids, pix = _inputs(vlm, 2)
    assert _logits(vlm.model, ids, pix).shape == (1, ids.shape[1], len(tok))
    # deterministic
    torch.testing.assert_close(_logits(build_preset("tiny").model, ids, pix), _logits(vlm.model, ids, pix))


def test_save_load_roundtrip_and_plain_transformers(tmp_path):
    vlm = build_preset("tiny")
    save_model(vlm, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "r1v.json").read_text())
    assert meta["spec"]["tile_size"] == 56 and meta["name"] == "tiny"
    ids, pix = _inputs(vlm)
    ref = _logits(vlm.model, ids, pix)
    again = load_vlm(tmp_path / "m")
    assert again.spec == vlm.spec
    torch.testing.assert_close(_logits(again.model, ids, pix), ref, atol=0, rtol=0)
    plain = InternVLForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(_logits(plain, ids, pix), ref, atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "m").convert_tokens_to_ids(IMG_CONTEXT) == plain.config.image_token_id


def test_ps_v1_override_permutes_tokens(tmp_path):
    vlm = build_preset("tiny")
    feats = torch.arange(2 * 4 * 4 * 3, dtype=torch.float32).reshape(2, 4, 4, 3)
    v2 = vlm.model.model.pixel_shuffle(feats, 0.5)
    set_ps_version(vlm.model, "v1")
    v1 = vlm.model.model.pixel_shuffle(feats, 0.5)
    assert torch.equal(v1, v2.transpose(1, 2)) and not torch.equal(v1, v2)
    vlm.spec = vlm.spec.__class__(**{**vlm.spec.to_dict(), "ps_version": "v1"})
    save_model(vlm, tmp_path / "v1")
    loaded = load_vlm(tmp_path / "v1")
    assert torch.equal(loaded.model.model.pixel_shuffle(feats, 0.5), v1)
    with pytest.raises(ModelError):
        set_ps_version(vlm.model, "v3")


def _llm_folder(path, hidden=64, tokenizer=None, seed=3):
    tok = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(**{**TINY_TEXT, "hidden_size": hidden, "vocab_size": len(tok)}))
    llm.save_pretrained(path)
    tok.save_pretrained(path)
    return llm, tok


def _plain_tokenizer():
    """A tiny tokenizer without the image tokens (as a plain LLM ships)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    t = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.add_special_tokens([AddedToken(s, special=True) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def test_assemble_from_folders_adds_tokens_and_reuses_connector(tmp_path):
    tiny = build_preset("tiny")
    tiny.model.model.vision_tower.save_pretrained(tmp_path / "vit")
    llm, tok = _llm_folder(tmp_path / "llm", tokenizer=_plain_tokenizer())
    old_rows = llm.get_input_embeddings().weight.detach().clone()
    vlm = assemble(str(tmp_path / "vit"), str(tmp_path / "llm"), template="chatml")
    new_tok = vlm.tokenizer
    assert len(new_tok) == len(tok) + 3
    emb = vlm.model.get_input_embeddings().weight
    assert emb.shape[0] == len(new_tok)
    assert torch.equal(emb[: old_rows.shape[0]], old_rows)
    for t in IMAGE_TOKENS:
        torch.testing.assert_close(emb[new_tok.convert_tokens_to_ids(t)], old_rows.mean(0))
    assert vlm.provenance["connector"] == "fresh"
    # the vision tower is the saved one
    for (k, a), b in zip(vlm.model.model.vision_tower.state_dict().items(),
                         tiny.model.model.vision_tower.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # reuse the connector from a safetensors file (released mlp1 names work too)
    proj = {f"mlp1.{i}.{k.split('.', 1)[1]}": v.clone() for k, v in vlm.model.model.multi_modal_projector.state_dict().items()
            for i in [{"layer_norm": 0, "linear_1": 1, "linear_2": 3}[k.split(".")[0]]]}
    save_file(proj, str(tmp_path / "conn.safetensors"))
    again = assemble(str(tmp_path / "vit"), str(tmp_path / "llm"), connector=tmp_path / "conn.safetensors",
                     template="chatml")
    for a, b in zip(again.model.model.multi_modal_projector.parameters(),
                    vlm.model.model.multi_modal_projector.parameters(), strict=True):
        assert torch.equal(a, b)
    save_model(again, tmp_path / "out")
    plain = InternVLForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids, pix = _inputs(again)
    torch.testing.assert_close(_logits(plain, ids, pix), _logits(again.model, ids, pix), atol=0, rtol=0)


def test_assemble_refusals(tmp_path):
    _llm_folder(tmp_path / "llm", tokenizer=_plain_tokenizer())
    with pytest.raises(ModelError, match="unknown preset"):
        assemble("nope", "tiny")
    with pytest.raises(ModelError, match="no tokenizer"):
        assemble("tiny", "r1v-38b")
    with pytest.raises(ModelError, match="template 'r1v'"):
        assemble("tiny", str(tmp_path / "llm"), template="r1v")
    save_file({"layer_norm.weight": torch.ones(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="connector"):
        assemble("tiny", "tiny", connector=tmp_path / "bad.safetensors")


def test_swap_llm_keeps_connector_and_refuses_mismatches(tmp_path):
    vlm = build_preset("tiny")
    _llm_folder(tmp_path / "same", hidden=64, seed=7)
    _llm_folder(tmp_path / "wide", hidden=96)
    _llm_folder(tmp_path / "nochat", tokenizer=tiny_tokenizer())
    swapped = swap_llm(vlm, str(tmp_path / "same"))
    assert swapped.model.model.multi_modal_projector is vlm.model.model.multi_modal_projector
    assert swapped.model.model.vision_tower is vlm.model.model.vision_tower
    assert swapped.spec == vlm.spec and swapped.provenance["llm"] == str(tmp_path / "same")
    ids, pix = _inputs(swapped)
    assert _logits(swapped.model, ids, pix).shape[-1] == len(swapped.tokenizer)
    with pytest.raises(ModelError, match="hidden size 96"):
        swap_llm(vlm, str(tmp_path / "wide"))
    with pytest.raises(ModelError, match="template 'r1v'"):
        swap_llm(vlm, str(tmp_path / "nochat"), template="r1v")


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="no such folder and not a preset"):
        load_vlm("no-such-model")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_vlm(tmp_path / "bad")
    _llm_folder(tmp_path / "llm")
    with pytest.raises(ModelError, match="assemble"):
        load_vlm(tmp_path / "llm")


@pytest.mark.slow
def test_smol_preset_real_llm():
    """SmolLM2-135M-Instruct + the small tower (pretrained if `r1v assets` ran, else random)."""
    from r1v.errors import AssetError

    try:
        vlm = load_vlm("smol")
    except AssetError as e:
        pytest.skip(str(e))
    counts = count_params(vlm.model)
    assert counts["llm"] == 134_546_688  # SmolLM2-135M with the added image/think token rows
    assert vlm.spec.template == "chatml" and vlm.spec.tokens_per_tile == (vlm.spec.tile_size // 14) ** 2 // 4
    assert count_params(build_preset("smol", device="meta").model) == counts
    ids, pix = _inputs(vlm)
    out = vlm.model.generate(input_ids=ids, pixel_values=pix, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
