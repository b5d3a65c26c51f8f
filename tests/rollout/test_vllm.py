"""The vLLM rollout engine checked against ours on the same fp32 model (`tiny64`: the `tiny` preset with head size
64, which vLLM's CPU attention runs). The tests marked `vllm` start the real engine (vLLM's CPU build, `make
test-vllm`), one per module (~70 s); the rest (what a sync sends) need no vLLM.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from r1v.data.schema import Sample
from r1v.errors import ConfigError, ModelError
from r1v.model.build import build_preset
from r1v.model.parts import apply_lora, apply_policy
from r1v.rollout.engine import THINK_CLOSE, SamplingParams, TransformersEngine, completion_logprobs
from r1v.rollout.vllm import VLLMEngine, llm_only_names, trained_tensors, weight_chunks

SAMPLES = [Sample.from_question(f"q{i}", f"What is {i} + {2 * i}? Think first.") for i in range(4)]


def tiny64():
    vlm = build_preset("tiny64")
    vlm.model.float()
    return vlm


def test_weight_chunks_respect_the_byte_limit_and_keep_a_layer_together() -> None:
    named = [(f"m{i}.w", torch.zeros(10, dtype=torch.float32)) for i in range(5)] + [("big.w", torch.zeros(100))]
    chunks = list(weight_chunks(iter(named), max_bytes=80))  # two 40-byte tensors per chunk
    assert [[n for n, _ in c] for c in chunks] == [["m0.w", "m1.w"], ["m2.w", "m3.w"], ["m4.w"], ["big.w"]]
    assert all(t.device.type == "cpu" and t.is_contiguous() for c in chunks for _, t in c)
    layer = [(f"model.layers.0.self_attn.{p}_proj.weight", torch.zeros(10)) for p in "qkv"]
    assert [len(c) for c in weight_chunks(layer + [("model.norm.weight", torch.zeros(10))], 40)] == [3, 1]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_names_the_install(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"make test-vllm"):
        VLLMEngine(tmp_path)


def test_a_connector_only_policy_sends_only_the_connector() -> None:
    model = tiny64().model
    apply_policy(model, "connector")
    sent = trained_tensors(model)
    assert sent and all(".multi_modal_projector." in n for n in sent)
    assert llm_only_names(sent) == {}  # a text-only engine has nothing to update
    apply_policy(model, "connector+llm")
    names = set(llm_only_names(trained_tensors(model)))
    assert "lm_head.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("vision" in n or "projector" in n for n in names)


def test_lora_sends_the_merged_weights_of_the_adapted_layers() -> None:
    vlm = tiny64()
    apply_lora(vlm, r=4, policy="connector")
    with torch.no_grad():  # B starts at zero: make the adapters change something
        for n, p in vlm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    sent = trained_tensors(vlm.model)
    merged = copy.deepcopy(vlm.model).merge_and_unload().state_dict()
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert q in sent and torch.equal(sent[q], merged[q])
    assert not any("lora_" in n or "vision" in n or n.endswith("layernorm.weight") for n in sent)
    assert any(".multi_modal_projector." in n for n in sent)


# ------------------------------------------------------------------------------------------- real engine


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(vLLM engine, our engine) on the same fp32 tiny64 model."""
    vlm = tiny64()
    eng = VLLMEngine.from_vlm(vlm, tmp_path_factory.mktemp("vllm") / "llm", dtype="float32", enforce_eager=True,
                              kv_cache_gib=0.25, max_model_len=1024)
    yield eng, TransformersEngine(vlm), vlm


def greedy(**kw) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": 24, "temperature": 0.0, "repetition_penalty": 1.0, **kw})


@pytest.mark.vllm
def test_greedy_tokens_equal_ours(pair) -> None:
    eng, ours, _ = pair
    for params in (greedy(), greedy(think=False, max_new_tokens=12), greedy(repetition_penalty=[1.0, 1.3, 1.1, 2.0])):
        got, want = eng.generate(SAMPLES, params), ours.generate(SAMPLES, params)
        for g, w in zip(got, want, strict=True):
            assert g[0].token_ids == w[0].token_ids and g[0].text == w[0].text
            assert (g[0].finish_reason, g[0].think, g[0].answer) == (w[0].finish_reason, w[0].think, w[0].answer)
            assert g[0].prompt_tokens == w[0].prompt_tokens


@pytest.mark.vllm
def test_sampled_logprobs_match_the_trainers(pair) -> None:
    eng, ours, vlm = pair
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, repetition_penalty=1.0, n=2,
                            return_logprobs=True)
    rows = [c for g in eng.generate(SAMPLES, params, seeds=[1, 2, 3, 4]) for c in g]
    batch = ours.processor.encode_batch_prompts([s for s in SAMPLES for _ in range(2)])
    width = max(len(c.token_ids) for c in rows)
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width)
    for r, c in enumerate(rows):
        ids[r, :len(c.token_ids)], mask[r, :len(c.token_ids)] = torch.tensor(c.token_ids), 1.0
    trainer = completion_logprobs(vlm.model, batch, ids, mask)
    for r, c in enumerate(rows):
        assert len(c.logprobs) == len(c.token_ids)
        torch.testing.assert_close(torch.tensor(c.logprobs), trainer[r, :len(c.token_ids)], atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_seeded_sampling_is_reproducible_per_row(pair) -> None:
    eng, _, _ = pair
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1.0, repetition_penalty=1.0, n=3)
    tokens = lambda groups: [[c.token_ids for c in g] for g in groups]  # noqa: E731
    whole = tokens(eng.generate(SAMPLES, params, seeds=[10, 11, 12, 13]))
    assert whole == tokens(eng.generate(SAMPLES, params, seeds=[10, 11, 12, 13]))
    # a row draws the same tokens whichever rows share the call (world-size invariant rollouts)
    assert whole[2:] == tokens(eng.generate(SAMPLES[2:], params, seeds=[12, 13]))
    assert all(len({tuple(t) for t in g}) == 3 for g in whole)  # n > 1: distinct completions of one prompt
    assert whole != tokens(eng.generate(SAMPLES, params, seeds=[20, 21, 22, 23]))


@pytest.mark.vllm
def test_stop_strings_and_finish_reasons_as_ours(pair) -> None:
    eng, ours, _ = pair
    free = eng.generate(SAMPLES[:1], greedy(think=False))[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 24
    stop = free.text[6:9]
    params = greedy(think=False, stop=[stop])
    got, want = eng.generate(SAMPLES[:1], params)[0][0], ours.generate(SAMPLES[:1], params)[0][0]
    assert got.finish_reason == want.finish_reason == "stop"
    assert stop in got.text and got.token_ids == want.token_ids and got.text == want.text


@pytest.mark.vllm
def test_thinking_budget_closes_the_thought_as_ours(pair) -> None:
    eng, ours, _ = pair
    params = greedy(max_new_tokens=20, max_think_tokens=5, return_logprobs=True)
    close = eng.tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
    for g, w in zip(eng.generate(SAMPLES, params), ours.generate(SAMPLES, params), strict=True):
        c = g[0]
        assert c.token_ids == w[0].token_ids and c.token_ids[5:5 + len(close)] == close
        assert c.num_think_tokens == 5 and c.think == w[0].think and c.answer == w[0].answer
        assert len(c.logprobs) == len(c.token_ids) and c.finish_reason == "length"


@pytest.mark.vllm
def test_text_only_engine_refuses_images(pair, tmp_path) -> None:
    from PIL import Image

    Image.new("RGB", (56, 56)).save(tmp_path / "x.png")
    with pytest.raises(ConfigError, match="text_only"):
        pair[0].generate([Sample.from_question("i", "What?", images=[str(tmp_path / "x.png")])], greedy())


@pytest.mark.vllm
def test_sync_after_an_optimiser_step_makes_greedy_equal_the_trained_model(pair) -> None:
    eng, _, vlm = pair
    trained = copy.deepcopy(vlm)
    apply_policy(trained.model, "connector+llm")
    params = greedy(max_new_tokens=12)
    before = [g[0].token_ids for g in eng.generate(SAMPLES, params)]
    # one big step towards a target continuation: the greedy output must change
    ours = TransformersEngine(trained)
    batch = ours.processor.encode_batch_prompts(SAMPLES)
    target = torch.tensor([ours.tokenizer.encode("42 is it.", add_special_tokens=False)] * len(SAMPLES))
    opt = torch.optim.SGD([p for p in trained.model.parameters() if p.requires_grad], lr=2.0)
    trained.model.train()
    for _ in range(3):
        ids = torch.cat([batch["input_ids"], target], 1)
        attn = torch.cat([batch["attention_mask"], torch.ones_like(target)], 1)
        logits = trained.model(input_ids=ids, attention_mask=attn).logits[:, -target.shape[1] - 1:-1]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
        opt.step()
    trained.model.eval()
    want = [g[0].token_ids for g in ours.generate(SAMPLES, params)]
    assert want != before
    sent = eng.sync_weights(trained.model)
    assert sent == len(llm_only_names(trained_tensors(trained.model))) and eng.last_sync.seconds > 0
    assert [g[0].token_ids for g in eng.generate(SAMPLES, params)] == want
    eng.sync_weights(vlm.model, everything=True)  # back to the module's model for the other tests
    assert [g[0].token_ids for g in eng.generate(SAMPLES, params)] == before
