"""The vLLM rollout engine. The GPU tests build their own tiny model folder, so they need nothing but vllm
and a CUDA device; elsewhere they are skipped with the reason. Chunking and the missing-vllm error run on CPU.

The tiny model is wired so its greedy output is known: every layer's output projection is zero (the residual
stream is just the token embedding), all embeddings are ones, and the LM head has a single non-zero row, so
the model always writes that row's token whatever the prompt. Syncing weights whose non-zero row is another
token must switch every output to that token.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from r1v.data.schema import Sample
from r1v.errors import ModelError
from r1v.rollout.engine import THINK_CLOSE, SamplingParams
from r1v.rollout.vllm import VLLMEngine, weight_chunks


def test_weight_chunks_respect_the_byte_limit() -> None:
    named = [(f"w{i}", torch.zeros(10, dtype=torch.float32)) for i in range(5)] + [("big", torch.zeros(100))]
    chunks = list(weight_chunks(iter(named), max_bytes=80))  # two 40-byte tensors per chunk
    assert [[n for n, _ in c] for c in chunks] == [["w0", "w1"], ["w2", "w3"], ["w4"], ["big"]]
    assert all(t.device.type == "cpu" and t.is_contiguous() for c in chunks for _, t in c)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_names_the_extra(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"r1v\[vllm\]"):
        VLLMEngine(tmp_path)


def constant_model(tokenizer, token: str):
    """A 1-layer Qwen2 (head size 64) whose every next token is `token` (see the module docstring)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 1.0
    return model


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("vllm", reason="vllm is not installed (pip install 'r1v[vllm]')")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM engine needs a CUDA device")
    from r1v.model.tokens import tiny_tokenizer

    folder = tmp_path_factory.mktemp("vllm_model")
    tok = tiny_tokenizer()
    constant_model(tok, "a").save_pretrained(folder)
    tok.save_pretrained(folder)
    eng = VLLMEngine(folder, gpu_memory_utilization=0.2, max_model_len=512, dtype="bfloat16", enforce_eager=True)
    yield eng, tok
    del eng


SAMPLES = [Sample.from_question("x", "Say something."), Sample.from_question("y", "Anything else?")]


def test_generate_sync_weights_and_thinking_budget(engine) -> None:
    eng, tok = engine
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0, repetition_penalty=1.0, think=False, n=3,
                            return_logprobs=True)
    groups = eng.generate(SAMPLES, greedy)
    assert [len(g) for g in groups] == [3, 3]
    for c in (c for g in groups for c in g):
        assert c.token_ids == [a] * 5 and c.finish_reason == "length" and c.text == "aaaaa"
        assert c.logprobs is not None and len(c.logprobs) == 5 and max(c.logprobs) <= 0 and min(c.logprobs) > -1e-3

    sent = eng.sync_weights(constant_model(tok, "b"))
    assert sent == len(constant_model(tok, "b").state_dict())
    sampled = SamplingParams(max_new_tokens=5, temperature=1.0, repetition_penalty=1.0, think=False, n=2)
    assert all(c.token_ids == [b] * 5 for g in eng.generate(SAMPLES, sampled) for c in g)

    budget = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, think=True, n=2,
                            max_think_tokens=3)
    close = tok.encode(THINK_CLOSE, add_special_tokens=False)
    for c in (c for g in eng.generate(SAMPLES, budget) for c in g):
        assert c.token_ids == [b] * 3 + close + [b] * (8 - 3 - len(close))
        assert c.think == "bbb" and c.answer == "b" * (8 - 3 - len(close)) and c.num_think_tokens == 3
