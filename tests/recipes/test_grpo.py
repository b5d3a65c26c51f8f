"""GRPO recipe: learning on a tiny task, SSB vs plain effective-sample ratio, exact resume, KL to a frozen
reference, and the `r1v train grpo` command. Tiny random VLM, short prompts, a handful of CPU steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from r1v.algos.logprobs import completion_logits
from r1v.algos.ssb import SSBConfig
from r1v.data.schema import Sample
from r1v.model.build import build_preset
from r1v.model.trainable import apply_trainable
from r1v.recipes.grpo import GRPOConfig, RewardItem, build_reward, frozen_reference, score, train_grpo
from r1v.rollout.batch import RolloutItem, training_batch
from r1v.train import TrainConfig
from r1v.train.metrics import plot_reward_and_ratio

REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
def lower_share(completion, columns):
    """Share of lowercase letters in the completion: a random policy gets about 0.1."""
    return sum(c.islower() for c in completion) / max(1, len(completion))


def mostly_constant(completion, columns):
    """Three prompts in four always score 1 (zero-variance groups); the rest score lower_share."""
    if int(columns["id"][1:]) % 4:
        return 1.0
    return lower_share(completion, columns)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "rewards.py"
    path.write_text(PLUGIN)
    return path


def prompts(n: int = 8, images: bool = False) -> list[Sample]:
    img = Image.new("RGB", (28, 28), "white")
    return [Sample.from_question(f"q{i}", f"Q{i}?", images=[img] if images and i % 2 else None, answer="1")
            for i in range(n)]


def fresh_model():
    vlm = build_preset("tiny")
    apply_trainable(vlm, "full")
    return vlm


def config(out: Path, reward: str, **kw) -> GRPOConfig:
    train = dict(out_dir=out, lr=1e-2, max_steps=4, micro_batch_size=16, report_to=["jsonl"], progress=False,
                 schedule="constant", warmup_ratio=0.0, weight_decay=0.0, policy="full", plots=False, seed=0)
    train.update(kw.pop("train", {}))
    base = dict(num_generations=8, prompts_per_step=4, max_completion_length=8, think=False,
                rewards=[RewardItem(reward)], train=TrainConfig(**train))
    base.update(kw)
    return GRPOConfig(**base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_grpo_raises_mean_reward_on_a_tiny_task(tmp_path, plugin) -> None:
    vlm = fresh_model()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    cfg = config(tmp_path, f"{plugin}:lower_share", train={"max_steps": 6})
    summary = train_grpo(vlm, prompts(images=True), cfg)  # half the prompts carry an image
    rows = metrics(tmp_path)
    rewards = [r["reward"] for r in rows]
    print("reward per step:", [round(x, 3) for x in rewards])
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.05
    assert summary["reward_last"] == rewards[-1]
    for key in ("reward_std", "reward/lower_share", "effective_ratio", "effective_ratio_without", "clip_frac",
                "entropy", "entropy_critical", "completion_length", "truncated_share", "grad_norm"):
        assert key in rows[-1], key
    assert 0 < rows[0]["entropy"] < 6.0  # uniform over ~263 tokens is ln(263) = 5.57
    assert any(not torch.equal(before[n], p.detach().cpu()) for n, p in vlm.model.named_parameters())
    assert (tmp_path / "final" / "r1v.json").exists() and (tmp_path / "summary.json").exists()


def test_ssb_keeps_the_effective_ratio_above_plain_grpo(tmp_path, plugin) -> None:
    reward = f"{plugin}:mostly_constant"
    plain = train_grpo(fresh_model(), prompts(), config(tmp_path / "plain", reward, num_generations=4))
    ssb = SSBConfig(capacity=64, max_age=4, max_buffer_fraction=0.5)
    with_ssb = train_grpo(fresh_model(), prompts(), config(tmp_path / "ssb", reward, ssb=ssb, num_generations=4))
    rows = metrics(tmp_path / "ssb")
    png = plot_reward_and_ratio(tmp_path / "ssb" / "metrics.jsonl", tmp_path / "ssb" / "ratio.png")
    print(f"effective-sample ratio: plain GRPO {plain['effective_ratio_mean']:.3f}, "
          f"GRPO+SSB {with_ssb['effective_ratio_mean']:.3f} (same run without buffer "
          f"{with_ssb['effective_ratio_without_mean']:.3f}); per step {[r['effective_ratio'] for r in rows]}")
    assert plain["effective_ratio_mean"] == pytest.approx(plain["effective_ratio_without_mean"])
    assert plain["effective_ratio_mean"] <= 0.25 + 1e-6  # 3 of 4 groups have zero variance
    assert with_ssb["effective_ratio_mean"] > plain["effective_ratio_mean"] + 0.2
    assert rows[0]["ssb/from_buffer"] == 0 and all(r["ssb/from_buffer"] > 0 for r in rows[1:])
    assert png.stat().st_size > 1000


def _extra(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:08d}" / "extra.pt", weights_only=False)


def test_resume_restores_buffer_rng_and_data_position(tmp_path, plugin) -> None:
    reward = f"{plugin}:mostly_constant"
    ssb = SSBConfig(capacity=64, max_age=4, max_buffer_fraction=0.5)
    kw = dict(ssb=ssb, num_generations=4, prompts_per_step=2, num_iterations=2)
    whole = fresh_model()
    train_grpo(whole, prompts(), config(tmp_path / "a", reward, train={"max_steps": 8, "save_every": 4}, **kw))
    part = fresh_model()
    train_grpo(part, prompts(), config(tmp_path / "b", reward, train={"max_steps": 4, "save_every": 4}, **kw))
    resumed = fresh_model()
    summary = train_grpo(resumed, prompts(), config(tmp_path / "b", reward, train={"max_steps": 8, "save_every": 4,
                                                                                   "resume": True}, **kw))
    assert summary["resumed_from"].endswith("step-00000004")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [2, 4, 6, 8]
    keys = ("reward", "effective_ratio", "ssb/from_buffer", "ssb/buffer_size", "loss")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert b[2]["ssb/from_buffer"] > 0  # the first batch after resume drew from the restored buffer
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    ea, eb = _extra(tmp_path / "a", 8), _extra(tmp_path / "b", 8)
    assert ea["rollouts"] == eb["rollouts"] == 4
    assert [(adv, s, u) for _, adv, s, u in ea["ssb"]["items"]] == [(adv, s, u) for _, adv, s, u in eb["ssb"]["items"]]
    assert torch.equal(ea["ssb"]["generator"], eb["ssb"]["generator"])
    assert all(p.old_logp is not None and len(p.old_logp) == len(p.completion_ids) for p, *_ in eb["ssb"]["items"])


def test_kl_is_measured_against_a_frozen_reference(tmp_path, plugin) -> None:
    vlm = fresh_model()
    ref = frozen_reference(vlm.model)
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        next(vlm.model.parameters()).add_(1.0)
    assert not torch.equal(next(vlm.model.parameters()), next(ref.parameters()))

    vlm = fresh_model()
    cfg = config(tmp_path, f"{plugin}:lower_share", beta=0.1, num_generations=4, prompts_per_step=2,
                 train={"max_steps": 3})
    train_grpo(vlm, prompts(), cfg)
    rows = metrics(tmp_path)
    kls = [r["kl_mean"] for r in rows]
    print("kl per step:", kls)
    assert rows[0]["kl_mean"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
    assert rows[-1]["kl_mean"] > 1e-4  # the reference stayed behind while the policy moved
    assert 0 < rows[-1]["ratio_mean"] and rows[-1]["clip_frac"] >= 0


def test_collate_lines_up_completions_and_masks_truncated_ones() -> None:
    from r1v.processing.processor import Processor

    vlm = build_preset("tiny")
    proc = Processor(vlm.tokenizer, vlm.spec)
    old = torch.tensor([-0.5, -0.25])
    items = [RolloutItem(1, [5, 6, 7], truncated=True), RolloutItem(0, [8, 9], truncated=False, old_logp=old)]
    samples = prompts(2, images=True)
    b = training_batch(proc, [samples[it.prompt] for it in items], items, [1.0, -1.0], think=False, pad_id=0,
                       mask_truncated=True)
    width = b["input_ids"].shape[1] - 3
    assert b["completion_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["input_ids"][:, width:].tolist() == b["completion_ids"].tolist()
    assert b["attention_mask"][1, -1] == 0 and b["pixel_values"] is not None
    assert b["sequence_mask"].tolist() == [False, True] and b["has_old"].tolist() == [False, True]
    assert torch.equal(b["old_logp"][1, :2], old)
    pos = b["position_ids"][1]
    assert pos[b["attention_mask"][1].bool()].tolist() == list(range(int(b["attention_mask"][1].sum())))
    with torch.no_grad():
        logits = completion_logits(vlm.model, b)
    assert logits.shape == (2, 3, vlm.model.config.text_config.vocab_size)


def test_hybrid_reward_adds_the_reward_model_score(plugin) -> None:
    from r1v.recipes.grpo import reward_model_scorer

    plugin.with_name("rm.py").write_text("def score(completion, columns):\n    return 2.0\n")
    sample = Sample.from_question("x", "Which?", answer="A", choices=["1", "2"])
    good, bad = "<think>compare</think> \\boxed{A}", "B"
    cfg = GRPOConfig(reward_model=f"{plugin.with_name('rm.py')}:score", reward_model_weight=0.5)
    items = [RolloutItem(0, [1], False), RolloutItem(0, [2], False)]
    score(items, [good, bad], [sample], build_reward(cfg), reward_model_scorer(cfg, "cpu"), 0.5)
    parts = items[0].parts
    assert parts["accuracy"] == 1.0 and parts["format"] == 1.0 and parts["rm"] == 2.0
    assert items[0].reward == pytest.approx(1.0 + 1.0 + 0.5 * 2.0)  # r_rule + r_format + w * r_RM
    score(items, [good, bad], [sample], build_reward(cfg), lambda samples, texts: [-1.0] * len(texts), 0.5)
    assert items[1].reward == pytest.approx(0.0 + 0.0 + 0.5 * -1.0)


def test_config_rejects_bad_values(tmp_path) -> None:
    from r1v.errors import ConfigError

    with pytest.raises(ConfigError, match="num_generations"):
        GRPOConfig(num_generations=1).validate()
    with pytest.raises(ConfigError, match="fewer than prompts_per_step"):
        train_grpo(fresh_model(), prompts(2), config(tmp_path, "format"))


def test_cli_train_grpo(tmp_path) -> None:
    from typer.testing import CliRunner

    from r1v.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "grpo", "--config", str(REPO / "configs" / "grpo.yaml"),
                                      "train.max_steps=2", f"train.out_dir={out}", "data=synthetic:4",
                                      "num_generations=2", "prompts_per_step=1", "max_completion_length=4",
                                      "train.progress=false"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and (out / "final").is_dir()
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert (out / "plots" / "grpo_reward_effective_ratio.png").exists()
