"""GRPO / KL / DPO / BCO / NLL / MPO / Bradley-Terry against hand values and plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_close_scaled, close_scaled

from r1v.algos.losses import (
    RunningMean,
    aggregate,
    bco_pair_loss,
    bradley_terry_loss,
    dpo_loss,
    grpo_loss,
    kl_k3,
    logprobs_and_entropy,
    loss_units,
    mpo_loss,
    nll_loss,
    selective_log_softmax,
    sequence_logps,
)
from r1v.errors import ConfigError

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------ log-probs
def test_selective_log_softmax_matches_full_and_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    full = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 11 * 2, 11 * 7, 1 << 20):
        assert_close_scaled(selective_log_softmax(logits, ids, chunk_elements=chunk), full)
    bf = selective_log_softmax(logits.bfloat16(), ids)
    assert bf.dtype == torch.float32 and torch.allclose(bf, full, atol=0.05)


def test_logprobs_and_entropy_masks_and_grad() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g, requires_grad=True)
    ids = torch.randint(0, 7, (2, 4), generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    logp, ent = logprobs_and_entropy(logits, ids, mask, chunk_elements=7 * 3)
    p = torch.softmax(logits, -1)
    ref_ent = -(p * p.log()).sum(-1) * mask
    assert_close_scaled(ent, ref_ent)
    assert not ent.requires_grad and logp.requires_grad
    assert (logp[0, 2:] == 0).all()
    _, ent_g = logprobs_and_entropy(logits, ids, entropy_grad=True)
    assert ent_g.requires_grad
    with pytest.raises(ConfigError, match="not aligned"):
        logprobs_and_entropy(logits, ids[:, :3])
    assert torch.allclose(sequence_logps(logp, mask), (logp * mask).sum(1))


# ------------------------------------------------------------------------------ GRPO
def _ratios(values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.zeros(1, len(values))
    logp = torch.tensor([[math.log(v) for v in values]], requires_grad=True)
    return logp, old


def test_grpo_clip_high_side() -> None:
    logp, old = _ratios([1.5, 0.5])
    loss, m = grpo_loss(logp, torch.tensor([1.0]), torch.ones(1, 2), old_logp=old, epsilon=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)
    loss.backward()
    # clipped token has no gradient; the other d(-ratio)/dlogp = -ratio, over 2 tokens
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.25], abs=1e-6)
    assert m["clip_frac_high"] == 0.5 and m["clip_frac_low"] == 0.0 and m["clip_frac"] == 0.5
    assert m["ratio_max"] == pytest.approx(1.5) and m["ratio_min"] == pytest.approx(0.5)
    assert m["ratio_mean"] == pytest.approx(1.0)


def test_grpo_clip_low_side_and_epsilon_high() -> None:
    logp, old = _ratios([1.5, 0.5])
    loss, m = grpo_loss(logp, torch.tensor([-1.0]), torch.ones(1, 2), old_logp=old, epsilon=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2, abs=1e-6)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.75, 0.0], abs=1e-6)
    assert m["clip_frac_low"] == 0.5 and m["clip_frac_high"] == 0.0
    # clip-higher: eps_high 0.6 leaves ratio 1.5 unclipped for A > 0
    logp2, old2 = _ratios([1.5, 0.5])
    loss2, m2 = grpo_loss(logp2, torch.tensor([1.0]), torch.ones(1, 2), old_logp=old2, epsilon=0.2,
                          epsilon_high=0.6)
    assert loss2.item() == pytest.approx((-1.5 - 0.5) / 2, abs=1e-6) and m2["clip_frac"] == 0.0


def test_grpo_on_policy_gradient_is_policy_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.3]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, _ = grpo_loss(logp, adv, torch.ones(2, 2))
    assert loss.item() == pytest.approx(-(2 + 2 - 1 - 1) / 4)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))


def test_aggregation_modes_hand_values() -> None:
    per_token = torch.tensor([[1.0, 9.0, 9.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert aggregate(per_token, mask, "token").item() == pytest.approx(7 / 4)
    assert aggregate(per_token, mask, "sequence").item() == pytest.approx(1.5)
    assert aggregate(per_token, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(7 / 8)
    assert aggregate(per_token, mask, "dr_grpo").item() == pytest.approx(7 / 6)
    empty_row = torch.tensor([[0, 0, 0], [1, 1, 1]])
    assert aggregate(per_token, empty_row, "sequence").item() == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="unknown loss_type"):
        aggregate(per_token, mask, "bnpo")


def test_grpo_loss_types_and_truncation_mask() -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -3.0])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    token, _ = grpo_loss(logp, adv, mask, loss_type="token")
    seq, _ = grpo_loss(logp, adv, mask, loss_type="sequence")
    dr, _ = grpo_loss(logp, adv, mask, loss_type="dr_grpo", max_completion_length=3)
    assert token.item() == pytest.approx(-(1 - 9) / 4)
    assert seq.item() == pytest.approx(-(1 - 3) / 2)
    assert dr.item() == pytest.approx(-(1 - 9) / 6)
    masked, m = grpo_loss(logp, adv, mask, sequence_mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(-1.0) and m["tokens"] == 1.0


def test_k3_kl_properties() -> None:
    g = torch.Generator().manual_seed(2)
    logp = torch.randn(4, 6, generator=g)
    ref = torch.randn(4, 6, generator=g)
    kl = kl_k3(logp, ref)
    assert (kl >= 0).all()
    assert torch.allclose(kl_k3(logp, logp), torch.zeros_like(logp))
    d = (ref - logp).double()
    assert_close_scaled(kl, d.exp() - d - 1)


def test_grpo_kl_term_and_gradient_isolation() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.9]], requires_grad=True)
    ref = torch.tensor([[-0.5, -2.5]], requires_grad=True)
    adv = torch.tensor([0.7], requires_grad=True)
    ent = torch.tensor([[0.3, 0.5]])
    loss, m = grpo_loss(logp, adv, torch.ones(1, 2), old_logp=old, ref_logp=ref, beta=0.1, entropy=ent)
    loss.backward()
    assert logp.grad is not None and old.grad is None and ref.grad is None and adv.grad is None
    kl = kl_k3(logp.detach(), ref.detach())
    assert m["kl_mean"] == pytest.approx(kl.mean().item(), abs=1e-6)
    assert m["entropy_mean"] == pytest.approx(0.4)
    # with zero advantage only beta * kl is left
    zero, _ = grpo_loss(logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    assert zero.item() == pytest.approx(0.1 * kl.mean().item(), abs=1e-6)
    with pytest.raises(ConfigError, match="ref_logp"):
        grpo_loss(logp, torch.zeros(1), torch.ones(1, 2), beta=0.1)


# ------------------------------------------------------------------------------ DPO / BCO / NLL / MPO
def _pairs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    return tuple(-torch.rand(5, generator=g) * 10 for _ in range(4))


def test_dpo_bco_nll_against_loops() -> None:
    pc, pr, rc, rr = _pairs()
    beta, delta = 0.3, 0.05
    dpo = dpo_loss(pc, pr, rc, rr, beta)
    bco = bco_pair_loss(pc, pr, rc, rr, beta, delta)
    lengths = torch.tensor([3, 5, 7, 9, 11])
    nll = nll_loss(pc, lengths)
    for i in range(5):
        lc, lr = pc[i].item() - rc[i].item(), pr[i].item() - rr[i].item()
        assert dpo[i].item() == pytest.approx(-logsig(beta * (lc - lr)), rel=1e-5)
        assert bco[i].item() == pytest.approx(-logsig(beta * lc - delta) - logsig(-(beta * lr - delta)), rel=1e-5)
        assert nll[i].item() == pytest.approx(-pc[i].item() / lengths[i].item(), rel=1e-6)


def test_running_mean_rule_and_round_trip() -> None:
    rm = RunningMean()
    assert rm.mean == 0.0
    assert rm.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == pytest.approx(2.0)
    assert rm.update(torch.tensor([0.0, 0.0, 0.0, 4.0])) == pytest.approx((2.0 + 1.0) / 2)
    rm.update_mean(6.0)
    assert rm.mean == pytest.approx(3.0) and rm.count == 3
    again = RunningMean()
    again.load_state_dict(rm.state_dict())
    assert again.update(torch.tensor([7.0])) == rm.update(torch.tensor([7.0])) == pytest.approx(4.0)


def test_mpo_hand_values_and_delta_state() -> None:
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    rc = torch.tensor([-1.5], requires_grad=True)
    rr = torch.tensor([-1.5], requires_grad=True)
    state = RunningMean()
    total, parts = mpo_loss(pc, pr, rc, rr, torch.tensor([4]), beta=1.0, delta_state=state)
    dpo, bco, nll = -logsig(1.0), -2 * logsig(0.5), 0.25  # delta = mean(0.5, -0.5) = 0
    assert parts["dpo"].item() == pytest.approx(dpo, rel=1e-5)
    assert parts["bco"].item() == pytest.approx(bco, rel=1e-5)
    assert parts["nll"].item() == pytest.approx(nll)
    assert total.item() == pytest.approx(0.8 * dpo + 0.2 * bco + 1.0 * nll, rel=1e-5)
    assert parts["delta"] == 0.0 and parts["reward_accuracy"] == 1.0 and parts["reward_margin"] == 1.0
    total.backward()
    assert pc.grad is not None and pr.grad is not None and rc.grad is None and rr.grad is None
    # second batch: implicit rewards 1.0 and 0.0 -> batch mean 0.5, running delta (0 + 0.5) / 2
    _, parts2 = mpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                         torch.tensor([-1.5]), torch.tensor([4]), beta=1.0, delta_state=state)
    assert parts2["delta"] == pytest.approx(0.25) and state.count == 2
    assert parts2["bco"].item() == pytest.approx(-logsig(1.0 - 0.25) - logsig(-(0.0 - 0.25)), rel=1e-5)
    with pytest.raises(ConfigError, match="delta_state"):
        mpo_loss(pc, pr, rc, rr, torch.tensor([4]))
    no_bco, p3 = mpo_loss(pc, pr, rc, rr, torch.tensor([4]), beta=1.0, weights=(1.0, 0.0, 0.0))
    assert no_bco.item() == pytest.approx(dpo, rel=1e-5) and p3["delta"] == 0.0


def test_bradley_terry() -> None:
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, m = bradley_terry_loss(rc, rr)
    assert loss.item() == pytest.approx(-(logsig(1.0) + logsig(-1.0)) / 2, rel=1e-6)
    assert m["accuracy"] == 0.5 and m["margin_mean"] == 0.0
    loss_m, _ = bradley_terry_loss(rc, rr, margin=0.5)
    assert loss_m.item() == pytest.approx(-(logsig(0.5) + logsig(-1.5)) / 2, rel=1e-6)


def test_fused_logprobs_entropy_with_banned_tokens_match_autograd() -> None:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(3, 4, 17, generator=g)
    base[0, 1, 3:9] = -math.inf  # banned tokens
    base[2, :, 0] = -math.inf
    ids = torch.randint(9, 17, (3, 4), generator=g)
    weight = torch.randn(3, 4, generator=g)
    a = base.clone().requires_grad_(True)
    (torch.log_softmax(a, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * weight).sum().backward()
    p = torch.softmax(base, -1)
    ref_ent = -torch.special.xlogy(p, p).sum(-1)
    for chunk in (17, 17 * 5, None):
        b = base.clone().requires_grad_(True)
        logp, ent = logprobs_and_entropy(b, ids, chunk_elements=chunk)
        (logp * weight).sum().backward()
        assert close_scaled(b.grad, a.grad) and torch.isfinite(b.grad).all()
        assert close_scaled(ent, ref_ent) and not ent.requires_grad
        assert torch.allclose(logp, torch.log_softmax(base, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1))
    _, ent_g = logprobs_and_entropy(base.clone().requires_grad_(True), ids, entropy_grad=True)
    assert ent_g.requires_grad and close_scaled(ent_g, ref_ent)
    bf_logp, bf_ent = logprobs_and_entropy(base.bfloat16(), ids)
    assert bf_logp.dtype == bf_ent.dtype == torch.float32 and torch.allclose(bf_ent, ref_ent, atol=0.05)
    with torch.no_grad():
        _, none = logprobs_and_entropy(base, ids, with_entropy=False)
    assert none is None


def test_selective_log_softmax_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 6, 13, generator=g)
    ids = torch.randint(0, 13, (2, 6), generator=g)
    weight = torch.randn(2, 6, generator=g)
    a = base.clone().requires_grad_(True)
    (torch.log_softmax(a, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * weight).sum().backward()
    for chunk in (13, 13 * 5, 1 << 20):
        b = base.clone().requires_grad_(True)
        (selective_log_softmax(b, ids, chunk_elements=chunk) * weight).sum().backward()
        assert_close_scaled(b.grad, a.grad)
        assert torch.equal(b.detach(), base)  # backward works on a scratch copy, never in place
    # non-contiguous slice (the usual logits[:, :-1]) and bf16 keep working
    c = base.bfloat16().requires_grad_(True)
    out = selective_log_softmax(c[:, :-1], ids[:, 1:])
    out.sum().backward()
    assert c.grad.dtype == torch.bfloat16 and torch.isfinite(c.grad.float()).all()
    assert (c.grad[:, -1] == 0).all()


def test_loss_units_count_what_each_loss_type_averages_over() -> None:
    batch = {"completion_mask": torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]]),
             "sequence_mask": torch.tensor([True, True, False])}
    assert loss_units(batch, "token") == 2  # the third row is masked out as a sequence
    assert loss_units(batch, "sequence") == 1
    assert loss_units(batch, "dr_grpo") == 3
