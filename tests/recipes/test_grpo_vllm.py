"""GRPO with `engine: vllm` (vLLM's CPU build, in this process): the reward rises as with our engine, and the
engine's weights follow the policy (its greedy output at the end equals the trained model's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1v.data.schema import Sample
from r1v.model.build import build_preset
from r1v.model.trainable import apply_trainable
from r1v.recipes.grpo import GRPOConfig, RewardItem, train_grpo
from r1v.rollout.engine import SamplingParams, TransformersEngine
from r1v.rollout.policy import VLLMOptions
from r1v.train import TrainConfig

PLUGIN = '''
def lower_share(completion, columns):
    """Share of lowercase letters in the completion: a random policy gets about 0.1."""
    return sum(c.islower() for c in completion) / max(1, len(completion))
'''


@pytest.mark.vllm
def test_grpo_on_vllm_raises_the_reward_and_syncs_the_policy(tmp_path: Path) -> None:
    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    vlm = build_preset("tiny64")
    vlm.model.float()
    apply_trainable(vlm, "full")
    prompts = [Sample.from_question(f"q{i}", f"Q{i}?", answer="1") for i in range(8)]
    engines = []

    def keep(engine):  # the engine train_grpo makes, kept for the check after the run
        engines.append(engine)
        return engine

    from r1v.recipes import grpo

    made = grpo.make_engine
    grpo.make_engine = lambda *a, **k: keep(made(*a, **k))
    try:
        cfg = GRPOConfig(
            num_generations=8, prompts_per_step=4, max_completion_length=8, think=False,
            rewards=[RewardItem(f"{plugin}:lower_share")], engine="vllm",
            vllm=VLLMOptions(dtype="float32", text_only=True, enforce_eager=True, kv_cache_gib=0.25,
                             max_model_len=256),
            train=TrainConfig(out_dir=tmp_path / "run", lr=1e-2, max_steps=6, micro_batch_size=16,
                              report_to=["jsonl"], progress=False, schedule="constant", warmup_ratio=0.0,
                              weight_decay=0.0, policy="full", plots=False, seed=0))
        train_grpo(vlm, prompts, cfg)
    finally:
        grpo.make_engine = made
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows]
    print("reward per step (vLLM engine):", [round(x, 3) for x in rewards])
    assert len(rows) == 6 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.05
    (engine,) = engines
    assert engine.last_sync is not None and engine.last_sync.tensors > 0
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, think=False)
    want = [g[0].token_ids for g in TransformersEngine(vlm).generate(prompts, greedy)]
    assert [g[0].token_ids for g in engine.generate(prompts, greedy)] == want
