"""`r1v plan --stage grpo`: trainer + reference + rollout engine memory, placements and the recommended layout."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from r1v.cli import app
from r1v.errors import ConfigError
from r1v.model.plan import GIB, shapes_of
from r1v.model.plan_rl import RLPlanRequest, candidate_layouts, estimate_rl, kv_bytes_per_token, recommend


@pytest.fixture(scope="module")
def shapes():
    return shapes_of("r1v-38b")


def test_kv_cache_of_the_38b_llm(shapes) -> None:
    # Qwen2.5-32B: 64 layers x 8 KV heads x 128 dims, keys and values in bf16
    assert kv_bytes_per_token(shapes) == 2 * 64 * 1024 * 2
    plan = estimate_rl(shapes, RLPlanRequest(gpus=8, rollout_tp=4))
    seq = kv_bytes_per_token(shapes) * (4096 + 8192) // 4
    assert plan.rollout_per_gpu["weights"] == 2 * shapes.params["total"] // 4
    assert plan.rollout_per_gpu["kv_cache"] == plan.concurrent_sequences * seq
    assert plan.waves == -(-64 * 8 // 2 // plan.concurrent_sequences)  # 2 engines of tp 4 share 512 rows


def test_sleep_reference_and_placement_move_the_peak(shapes) -> None:
    base = RLPlanRequest(gpus=8, rollout_tp=4)
    sleeping, awake = estimate_rl(shapes, base), estimate_rl(shapes, replace(base, sleep=False))
    assert awake.concurrent_sequences < sleeping.concurrent_sequences  # the trainer's activations stay
    ref = estimate_rl(shapes, replace(base, beta=0.04))
    assert ref.train_per_gpu["reference"] == 2 * shapes.params["total"] // 8 > 0
    assert sleeping.train_per_gpu["reference"] == 0
    apart = estimate_rl(shapes, replace(base, placement="separate", rollout_gpus=4))
    assert apart.request.train_gpus == 4 and set(apart.peak_per_gpu) == {"train_gpu", "rollout_gpu"}
    assert apart.train_per_gpu["weights"] == 2 * shapes.params["total"] // 4  # sharded over the 4 trainers
    assert not estimate_rl(shapes, replace(base, rollout_tp=1)).fits  # 77 GB of bf16 weights on one GPU


@pytest.mark.parametrize("gpus", [8, 16, 32])
def test_a_layout_is_recommended_for_8_16_32_gpus(shapes, gpus: int) -> None:
    best, plans = recommend(shapes, RLPlanRequest(gpus=gpus))
    assert best is not None and best.fits and best in plans
    assert all(p.waves >= best.waves for p in plans if p.fits)
    assert max(best.peak_per_gpu.values()) <= 80 * GIB
    assert {p.request.placement for p in plans} == {"colocated", "separate"}


def test_nothing_fits_one_gpu_and_bad_layouts_are_refused(shapes) -> None:
    best, _ = recommend(shapes, RLPlanRequest(gpus=1))
    assert best is None
    with pytest.raises(ConfigError, match="rollout_tp 3 does not divide the 8 GPUs"):
        estimate_rl(shapes, RLPlanRequest(gpus=8, rollout_tp=3))
    with pytest.raises(ConfigError, match="leaves no GPU"):
        estimate_rl(shapes, RLPlanRequest(gpus=8, placement="separate", rollout_gpus=8))
    with pytest.raises(ConfigError, match="placement"):
        estimate_rl(shapes, RLPlanRequest(placement="elsewhere"))  # type: ignore[arg-type]
    assert len(candidate_layouts(RLPlanRequest(gpus=8))) == 9


def test_cli_plan_grpo_recommend_json() -> None:
    result = CliRunner().invoke(app, ["plan", "--stage", "grpo", "--gpus", "16", "--recommend", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["recommended"]["fits"] and len(out["candidates"]) > 4
    bad = CliRunner().invoke(app, ["plan", "--stage", "rl"])
    assert bad.exit_code != 0 and "--stage" in bad.output
