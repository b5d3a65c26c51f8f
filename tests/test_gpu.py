"""GPU checks the CPU suite cannot make: rollout, SFT, FSDP2 over NCCL and GRPO on a CUDA device.

All tests are marked `gpu` (`make test` deselects them) and skip without CUDA. They use the tiny random
models the other tests build (`build_preset("tiny")`, `load_llm("tiny")`), so nothing is downloaded.

`R1V_GPU_TEST_DEVICE=cpu pytest -m gpu tests/test_gpu.py` runs the same bodies on the CPU (gloo instead of
NCCL): a dry run of this file before spending time on a GPU machine.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from r1v.data.schema import Sample

DEVICE = os.environ.get("R1V_GPU_TEST_DEVICE", "cuda")
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32: no TF32 in convolutions (the ViT patch embedding) or matmuls while a test runs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def tiny_vlm():
    from r1v.model.build import build_preset

    return _quiet(build_preset, "tiny")


def tiny_text():
    """The tiny random Qwen2 CausalLM with its byte-level tokenizer, wrapped as a `VLM` for the engine."""
    from r1v.model.build import load_llm
    from r1v.model.presets import get_preset
    from r1v.model.vlm import VLM

    llm, tok = _quiet(load_llm, "tiny")
    return VLM(llm, tok, get_preset("tiny").spec, "tiny-llm")


def tiny_llama():
    """A tiny random Llama CausalLM (SmolLM2's architecture family) with the byte-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1v.model.presets import get_preset
    from r1v.model.tokens import tiny_tokenizer
    from r1v.model.vlm import VLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        llm = _quiet(LlamaForCausalLM, cfg).eval()
    return VLM(llm, tok, get_preset("tiny").spec, "tiny-llama")


MODELS = {"vlm": tiny_vlm, "text": tiny_text, "llama": tiny_llama}


def _image() -> Image.Image:
    img = Image.new("RGB", (90, 60), "white")
    img.paste((255, 0, 0), (10, 10, 40, 40))
    return img


def _samples(images: bool) -> list[Sample]:
    img = _image()
    return [Sample.from_question("a", "What is here?", images=[img] if images else None),
            Sample.from_question("b", "Count the things, please.", images=[img, img] if images else None),
            Sample.from_question("c", "Q?")]


def _moved(vlm, device: str, dtype: torch.dtype | None = None):
    from dataclasses import replace

    model = copy.deepcopy(vlm.model).to(device)
    if dtype is not None:
        model = model.to(dtype)
    return replace(vlm, model=model.eval())


# ---------------------------------------------------------------------------------------------- rollout

@pytest.mark.parametrize("kind", list(MODELS))
def test_engine_greedy_tokens_on_gpu_equal_cpu_in_fp32(kind: str) -> None:
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    base = MODELS[kind]()
    samples = _samples(images=kind == "vlm")
    params = SamplingParams(max_new_tokens=16, temperature=0.0, n=2, think=False, return_logprobs=True)
    cpu = TransformersEngine(base).generate(samples, params)
    gpu_vlm = _moved(base, DEVICE)
    assert next(gpu_vlm.model.parameters()).device.type == DEVICE
    gpu = TransformersEngine(gpu_vlm).generate(samples, params)
    a = [c for g in cpu for c in g]
    b = [c for g in gpu for c in g]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    assert sum(len(c.token_ids) for c in a) > len(a)  # real generations, not all empty
    diff = max(abs(x - y) for ca, cb in zip(a, b, strict=True) for x, y in zip(ca.logprobs, cb.logprobs, strict=True))
    print(f"{kind}: {sum(len(c.token_ids) for c in a)} tokens equal on cpu and {DEVICE}; max logprob diff {diff:.2e}")
    assert diff < 1e-3
    # transformers' own generate (the `hf` backend) on the device picks the same greedy tokens
    hf = TransformersEngine(gpu_vlm, backend="hf").generate(samples, params)
    assert [c.token_ids for g in hf for c in g] == [c.token_ids for c in b]


@pytest.mark.parametrize("kind", list(MODELS))
def test_engine_runs_in_bf16_on_gpu(kind: str) -> None:
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    base = MODELS[kind]()
    vlm = _moved(base, DEVICE, torch.bfloat16)
    engine = TransformersEngine(vlm)
    samples = _samples(images=kind == "vlm")
    greedy = engine.generate(samples, SamplingParams(max_new_tokens=12, temperature=0.0, n=2, think=False,
                                                     return_logprobs=True))
    vocab = vlm.model.get_output_embeddings().weight.shape[0]
    for group in greedy:
        assert group[0].token_ids == group[1].token_ids  # greedy: the n copies agree
        for c in group:
            assert all(0 <= t < vocab for t in c.token_ids)
            assert len(c.logprobs) == len(c.token_ids) and all(math.isfinite(x) and x <= 1e-6 for x in c.logprobs)
    # sampling on the device: reproducible under a seed, with a thinking budget and a repetition penalty
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, n=4, seed=3,
                            repetition_penalty=1.1, max_think_tokens=4, think=True)
    one = engine.generate(samples, params)
    two = engine.generate(samples, params)
    assert [c.token_ids for g in one for c in g] == [c.token_ids for g in two for c in g]
    assert len({tuple(c.token_ids) for g in one for c in g}) > 1


# ---------------------------------------------------------------------------------------------- training

def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_sft_bf16_on_gpu_lowers_the_loss_and_the_checkpoint_loads_on_cpu(tmp_path: Path) -> None:
    from r1v.data.demo_tasks import synthetic_rows
    from r1v.model.build import load_vlm
    from r1v.model.trainable import apply_trainable, export_fn
    from r1v.processing.processor import Processor
    from r1v.train import TrainConfig, sft_objective, train

    vlm = tiny_vlm()
    apply_trainable(vlm, "full")
    processor = Processor(vlm.tokenizer, vlm.spec)
    items = [processor.encode_for_training(r.sample) for r in synthetic_rows(16, seed=3)]
    cfg = TrainConfig(lr=2e-3, warmup_ratio=0.0, schedule="constant", max_steps=8, micro_batch_size=4, grad_accum=2,
                      device=DEVICE, precision="bf16", out_dir=tmp_path, report_to=["jsonl"], progress=False,
                      plots=False, policy="full", seed=1)
    res = train(vlm.model, items, sft_objective(), cfg, collate_fn=processor.collate_training,
                export_fn=export_fn(vlm))
    assert next(vlm.model.parameters()).device.type == DEVICE
    assert next(vlm.model.parameters()).dtype == torch.float32  # fp32 master weights under bf16 autocast
    losses = [r["sft"] for r in _metrics(tmp_path)]
    print(f"sft loss on {DEVICE} (bf16):", [round(x, 3) for x in losses])
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5
    loaded = _quiet(load_vlm, res.checkpoint / "model", device="cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"
    trained = {k: v.detach().cpu() for k, v in vlm.model.state_dict().items()}
    state = loaded.model.state_dict()
    assert set(state) == set(trained)
    for key, value in state.items():
        torch.testing.assert_close(value.float(), trained[key].float(), rtol=0, atol=0, msg=key)
    # the reloaded CPU model answers like the trained device model (fp32, greedy)
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    samples = [r.sample for r in synthetic_rows(2, seed=5, with_target=False)]
    params = SamplingParams(max_new_tokens=8, temperature=0.0, think=False)
    on_device = TransformersEngine(vlm).generate(samples, params)
    on_cpu = TransformersEngine(loaded).generate(samples, params)
    assert [c.token_ids for g in on_device for c in g] == [c.token_ids for g in on_cpu for c in g]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_world_size_one_over_nccl_exports_a_loadable_model(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from r1v.model.build import load_vlm

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "gpu_fsdp_run.py"), str(tmp_path), "--device", DEVICE],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads((tmp_path / "info.json").read_text())
    print("fsdp2:", info)
    assert info["sharded"] and info["world"] == 1 and info["param_device"] == DEVICE
    assert info["backend"] == ("nccl" if DEVICE == "cuda" else "gloo")
    losses = [r["sft"] for r in _metrics(tmp_path)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    ckpt = Path(info["checkpoint"])
    assert (ckpt / "optimizer-rank0.pt").exists()
    start = tiny_vlm().model.state_dict()
    exported = _quiet(load_vlm, ckpt / "model", device="cpu").model.state_dict()
    assert set(exported) == set(start)
    assert max(float((exported[k] - start[k]).abs().max()) for k in start) > 1e-4  # it trained
    trainable = load_file(str(ckpt / "trainable.safetensors"))
    torch.testing.assert_close(trainable["lm_head.weight"], exported["lm_head.weight"])


PLUGIN = '''
def lower_share(completion, columns):
    """Share of lowercase letters in the completion."""
    return sum(c.islower() for c in completion) / max(1, len(completion))
'''


def test_grpo_steps_on_gpu_end_to_end(tmp_path: Path) -> None:
    from r1v.model.trainable import apply_trainable
    from r1v.recipes.grpo import GRPOConfig, RewardItem, train_grpo
    from r1v.train import TrainConfig

    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    vlm = tiny_vlm()
    apply_trainable(vlm, "full")
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    img = Image.new("RGB", (28, 28), "white")
    prompts = [Sample.from_question(f"q{i}", f"Q{i}?", images=[img] if i % 2 else None, answer="1") for i in range(4)]
    out = tmp_path / "run"
    train = TrainConfig(out_dir=out, lr=1e-2, max_steps=4, micro_batch_size=4, report_to=["jsonl"], progress=False,
                        schedule="constant", warmup_ratio=0.0, weight_decay=0.0, policy="full", plots=False, seed=0,
                        device=DEVICE, precision="bf16")
    # beta > 0 puts a frozen reference on the device; num_iterations 2 fills old log-probs there too
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_completion_length=8, think=False, beta=0.04,
                     num_iterations=2, rewards=[RewardItem(f"{plugin}:lower_share")], train=train)
    summary = train_grpo(vlm, prompts, cfg)
    rows = _metrics(out)
    print(f"grpo on {DEVICE}:", [(r["step"], round(r["reward"], 3), round(r["loss"], 4)) for r in rows])
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and math.isfinite(r["kl_mean"])
    assert next(vlm.model.parameters()).device.type == DEVICE
    assert any(not torch.equal(before[n], p.detach().cpu()) for n, p in vlm.model.named_parameters())
    assert (out / "final" / "r1v.json").exists() and summary["reward_last"] == rows[-1]["reward"]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_loading_on_the_device(mode: str) -> None:
    """`--quantize` on a GPU: bitsandbytes quantises each layer as it moves to the device; the decode loop and
    transformers' generate give the same greedy tokens there, as on the CPU."""
    pytest.importorskip("bitsandbytes")
    from r1v.model.build import load_vlm
    from r1v.model.quantize import weight_bytes
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    vlm = load_vlm("tiny", device=DEVICE, quantize=mode)
    assert all(p.device.type == torch.device(DEVICE).type for p in vlm.model.parameters())
    assert weight_bytes(vlm.model) < weight_bytes(load_vlm("tiny").model)
    samples = [Sample.from_question("a", "What colour is the sky?")]
    p = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, think=False)
    ours = TransformersEngine(vlm).generate(samples, p)[0][0].token_ids
    assert ours == TransformersEngine(vlm, backend="hf").generate(samples, p)[0][0].token_ids and ours
