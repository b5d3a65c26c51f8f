"""Optimiser groups over trainable parameters only, and the warmup + cosine schedule."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import collate, tiny_dataset, tiny_model  # noqa: E402

from r1v.errors import ConfigError  # noqa: E402
from r1v.train import TrainConfig, sft_loss  # noqa: E402
from r1v.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups, warmup_steps  # noqa: E402


def test_groups_skip_frozen_and_exempt_norms_and_biases() -> None:
    model = tiny_model()
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 0.05)
    names = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert not any(n.startswith("model.layers.0.") for n in names)
    assert names["model.layers.1.self_attn.q_proj.weight"] == 0.05
    assert names["model.layers.1.self_attn.q_proj.bias"] == 0.0
    assert names["model.layers.1.input_layernorm.weight"] == 0.0 and names["model.norm.weight"] == 0.0
    assert len(names) == sum(p.requires_grad for p in model.parameters())


def test_connector_lr_gives_the_projector_its_own_groups_and_the_schedule_scales_both() -> None:
    from r1v.model.build import build_preset

    model = build_preset("tiny").model
    cfg = TrainConfig(lr=1e-4, connector_lr=2e-3, policy="full", warmup_ratio=0.0, schedule="linear")
    opt = build_optimizer(model, cfg)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert {lr for n, lr in lrs.items() if "multi_modal_projector." in n} == {2e-3}
    assert {lr for n, lr in lrs.items() if "multi_modal_projector." not in n} == {1e-4}
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())
    sched = build_scheduler(opt, cfg, 4)
    opt.step()
    sched.step()
    assert sorted({round(g["lr"], 8) for g in opt.param_groups}) == [7.5e-5, 1.5e-3]
    with pytest.raises(ConfigError, match="connector_lr"):
        TrainConfig(connector_lr=0.0).validate()


def test_frozen_parameters_carry_no_gradient_or_optimizer_state() -> None:
    model = tiny_model()
    frozen = list(model.model.layers[0].parameters()) + [model.model.embed_tokens.weight]
    for p in frozen:
        p.requires_grad_(False)
    opt = build_optimizer(model, TrainConfig())
    sft_loss(model, collate(tiny_dataset(2))).total.backward()
    opt.step()
    assert all(p.grad is None for p in frozen)
    assert all(p not in opt.state for p in frozen)
    assert len(opt.state) == sum(p.requires_grad for p in model.parameters()) > 0
    tracked = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not tracked & {id(p) for p in frozen}


def test_nothing_trainable_is_a_config_error() -> None:
    model = tiny_model()
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, TrainConfig(policy="connector"))


def test_warmup_then_cosine() -> None:
    total, warm = 100, warmup_steps(TrainConfig(warmup_ratio=0.03), 100)
    assert warm == 3
    assert [lr_factor(s, total, warm) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(3, total, warm) == pytest.approx(1.0)
    mid = 3 + (total - 3) / 2
    assert lr_factor(int(mid), total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert lr_factor(total, total, warm) == pytest.approx(0.0)
    assert lr_factor(total, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, total, 0, "linear") == pytest.approx(0.5)
    assert lr_factor(50, total, 0, "constant") == 1.0
    values = [lr_factor(s, total, warm) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_drives_the_optimizer_lr() -> None:
    model = tiny_model()
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(5e-4) and seen[1] == pytest.approx(1e-3)
    assert seen[-1] < 1e-4 and len({g["lr"] for g in opt.param_groups}) == 1
    torch.testing.assert_close(torch.tensor(seen[2]), torch.tensor(1e-3 * lr_factor(2, 20, 2)))


def test_fused_adamw_for_plain_cpu_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig())
    assert opt.defaults["fused"] is True
