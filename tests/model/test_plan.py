"""`r1v plan`: memory per GPU for the 38B presets, by policy, strategy and GPU count."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from r1v.cli import app
from r1v.errors import ConfigError
from r1v.model.plan import GIB, PlanRequest, estimate, shapes_of


@pytest.fixture(scope="module")
def shapes():
    return shapes_of("r1v-38b")


def test_shapes_come_from_the_meta_model(shapes) -> None:
    assert 38.0e9 < shapes.params["total"] < 38.8e9
    assert shapes.params["connector"] == 12800 * 2 + 12800 * 5120 + 5120 + 5120 * 5120 + 5120
    assert shapes.llm_layers == 64 and shapes.vit_layers == 45 and shapes.image_tokens_per_tile == 256
    assert shapes.llm_kv == 1024 and shapes.vit_tokens_per_tile == 1025


def test_connector_fits_8_gpus_with_fsdp_and_full_does_not_fit_one(shapes) -> None:
    conn = estimate(shapes, PlanRequest(policy="connector", gpus=8, strategy="fsdp"))
    assert conn.fits and conn.per_gpu["total"] < 80 * GIB
    # bf16 weights of 38.4B over 8 GPUs; per trainable parameter 2 (grad) + 12 (m, v, master) bytes, sharded
    assert conn.per_gpu["weights"] == 2 * shapes.params["total"] // 8
    assert conn.per_gpu["gradients"] + conn.per_gpu["optimizer"] == pytest.approx(14 * shapes.params["connector"] / 8, abs=2)
    full1 = estimate(shapes, PlanRequest(policy="full", gpus=1))
    assert not full1.fits and full1.per_gpu["optimizer"] == 12 * shapes.params["total"]
    assert full1.min_gpus is not None and full1.min_gpus > 8
    assert estimate(shapes, PlanRequest(policy="full", gpus=full1.min_gpus)).fits
    assert not estimate(shapes, PlanRequest(policy="full", gpus=full1.min_gpus - 1)).fits
    assert not estimate(shapes, PlanRequest(policy="connector", gpus=8, strategy="ddp")).fits


@pytest.mark.parametrize("policy", ["connector", "connector+llm", "full"])
@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_per_gpu_memory_is_monotone_in_gpus(shapes, policy: str, strategy: str) -> None:
    totals = [estimate(shapes, PlanRequest(policy=policy, strategy=strategy, gpus=n)).per_gpu["total"]
              for n in (1, 2, 4, 8, 16, 32, 64)]
    assert all(a >= b for a, b in zip(totals, totals[1:], strict=False)) and totals[0] > totals[-1]


def test_checkpointing_seq_len_and_policy_move_activations(shapes) -> None:
    base = PlanRequest(policy="full")
    on, off = estimate(shapes, base), estimate(shapes, replace(base, activation_checkpointing=False))
    assert off.per_gpu["activations_llm"] > 10 * on.per_gpu["activations_llm"]
    short = estimate(shapes, replace(base, seq_len=4096))
    assert short.per_gpu["activations_llm"] < on.per_gpu["activations_llm"]
    frozen_vit = estimate(shapes, replace(base, policy="connector+llm"))
    assert frozen_vit.per_gpu["activations_vision"] < on.per_gpu["activations_vision"]
    off_opt = estimate(shapes, replace(base, strategy="zero3", offload_optimizer=True))
    assert off_opt.per_gpu["optimizer"] == 0 and off_opt.cpu_bytes_per_gpu == 12 * shapes.params["total"] // 8


def test_bad_requests_are_config_errors(shapes) -> None:
    with pytest.raises(ConfigError, match="strategy"):
        estimate(shapes, PlanRequest(strategy="tp"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gpus"):
        estimate(shapes, PlanRequest(gpus=0))


def test_cli_json_and_table() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--preset", "r1v-38b", "--gpus", "8", "--policy", "connector", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["fits"] is True and data["request"]["strategy"] == "fsdp" and data["per_gpu_gib"]["total"] < 80
    res = runner.invoke(app, ["plan", "--gpus", "1", "--policy", "full"])
    assert res.exit_code == 0 and "does not fit" in res.output
    res = runner.invoke(app, ["plan", "--policy", "bogus"])
    assert res.exit_code == 2 and "bogus" in res.output


# ---------------------------------------------------------------------------------------------- inference

def test_inference_weights_per_mode(shapes) -> None:
    from r1v.model.plan import InferenceRequest, estimate_inference, inference_weight_bytes

    bf16 = inference_weight_bytes(shapes, "bf16")
    assert sum(bf16.values()) == 2 * shapes.params["total"]
    assert round(sum(bf16.values()) / GIB, 1) == 71.5  # the 38B presets' bf16 weights
    int8, int4 = inference_weight_bytes(shapes, "int8"), inference_weight_bytes(shapes, "int4")
    assert int8["weights_vision"] == int4["weights_vision"] == bf16["weights_vision"]  # tower + connector bf16
    # the LLM: ~1 byte per parameter in int8 (plus row scales), ~0.5 + 4/64 in int4 with an int8 head/embedding
    llm = shapes.params["llm"]
    assert 1.0 < int8["weights_llm"] / llm < 1.001
    embed_head = 2 * 152064 * 5120
    assert int4["weights_llm"] == pytest.approx((llm - embed_head) * (0.5 + 4 / 64) + embed_head, rel=1e-3)
    plans = {m: estimate_inference(shapes, InferenceRequest(quantize=m)) for m in ("bf16", "int8", "int4")}
    assert plans["bf16"].bf16_weights == plans["int4"].bf16_weights == sum(bf16.values())
    assert plans["bf16"].bytes["total"] > plans["int8"].bytes["total"] > plans["int4"].bytes["total"]


def test_kv_cache_and_gpu_fit(shapes) -> None:
    from r1v.model.plan import InferenceRequest, estimate_inference

    p = estimate_inference(shapes, InferenceRequest(quantize="int4", context=16384))
    assert p.bytes["kv_cache"] == 2 * 64 * 1024 * 16384 * 2  # K and V, 64 layers, 8 kv heads x 128, bf16
    assert p.bytes["kv_cache"] == 4 * GIB
    long = estimate_inference(shapes, InferenceRequest(quantize="int4", context=65536, batch=2))
    assert long.bytes["kv_cache"] == 8 * p.bytes["kv_cache"]
    # int4 38B: 28 GiB of weights (the 11 GB vision tower stays bf16): one 48/80 GB GPU, two 24 GB ones
    assert p.gpus_needed == {24: 2, 48: 1, 80: 1}
    bf16 = estimate_inference(shapes, InferenceRequest(quantize="bf16"))
    assert bf16.gpus_needed[48] == 2 and bf16.gpus_needed[24] >= 4
    # more GPUs are never needed for a shorter context
    short = estimate_inference(shapes, InferenceRequest(quantize="bf16", context=1024))
    assert all(short.gpus_needed[g] <= bf16.gpus_needed[g] for g in (24, 48, 80))


def test_inference_request_errors_and_cli(shapes) -> None:
    from r1v.model.plan import InferenceRequest, estimate_inference

    with pytest.raises(ConfigError, match="quantize"):
        estimate_inference(shapes, InferenceRequest(quantize="int2"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="context"):
        estimate_inference(shapes, InferenceRequest(context=0))
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--preset", "r1v2-38b", "--quantize", "int8", "--context", "8192", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["request"]["quantize"] == "int8" and data["bf16_weights_gib"] == 71.51
    assert data["gib"]["kv_cache"] == 2.0 and set(data["gpus_needed"]) == {"24", "48", "80"}
    res = runner.invoke(app, ["plan", "--quantize", "int4"])
    assert res.exit_code == 0 and "48 GB GPUs: fits one" in res.output
    res = runner.invoke(app, ["plan", "--quantize", "fp8"])
    assert res.exit_code == 2 and "fp8" in res.output
