"""Token entropy, critical-token entropy and checkpoint selection."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_close_scaled, close_scaled

from r1v.algos.entropy import (
    connective_mask,
    critical_token_entropy,
    entropy_sums,
    lse_and_entropy,
    select_checkpoint,
    span_before,
    sum_means,
    token_entropy,
    top_entropy_per_sequence,
)
from r1v.errors import ConfigError

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def test_token_entropy_known_values_and_chunks() -> None:
    logits = torch.zeros(2, 3, 8)
    assert torch.allclose(token_entropy(logits), torch.full((2, 3), math.log(8)))
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    banned = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])
    assert token_entropy(banned).item() == pytest.approx(math.log(2))
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(4, 5, 9, generator=g)
    p = torch.softmax(rand, -1)
    ref = -(p * p.log()).sum(-1)
    assert_close_scaled(token_entropy(rand, chunk_elements=9), ref)
    assert torch.allclose(token_entropy(rand.bfloat16()), ref, atol=0.05)


def test_entropy_gradient_is_finite_with_banned_tokens() -> None:
    logits = torch.tensor([[0.0, 1.0, -math.inf]], requires_grad=True)
    token_entropy(logits).sum().backward()
    assert torch.isfinite(logits.grad[0, :2]).all()
    assert logits.grad[0, 2] == 0  # not NaN: it would spread through the LM head's weights
    # the hand-written logsumexp/entropy equal torch's, -inf columns and a fully banned row included
    rows = torch.randn(5, 11, generator=torch.Generator().manual_seed(3))
    rows[1, :4] = -math.inf
    rows[4] = -math.inf
    lse, ent = lse_and_entropy(rows)
    assert close_scaled(lse[:4], torch.logsumexp(rows[:4], -1)) and lse[4] == -math.inf
    p = torch.softmax(rows[:4], -1)
    assert_close_scaled(ent[:4], -torch.special.xlogy(p, p).sum(-1))


def test_span_before() -> None:
    ids = torch.tensor([[5, 6, 9, 7], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert span_before(ids, 9, mask).tolist() == [[True, True, False, False], [True, True, True, False]]
    # a multi-token marker ("</think>" as plain text): only the whole sequence counts, its first token is cut
    ids = torch.tensor([[5, 9, 7, 9, 8, 3, 4], [9, 8, 1, 1, 1, 1, 1], [5, 9, 5, 9, 9, 9, 8]])
    mask = torch.tensor([[1] * 7, [1] * 7, [1] * 6 + [0]])
    assert span_before(ids, [9, 8], mask).tolist() == [
        [True, True, True, False, False, False, False],  # the lone 9 at 1 is no marker
        [False] * 7,  # the marker opens the row
        [True] * 6 + [False],  # [9, 8] only reaches into padding: the whole mask stays
    ]
    assert torch.equal(span_before(ids, [9], mask), span_before(ids, 9, mask))
    assert span_before(ids[:, :1], [9, 8], mask[:, :1]).tolist() == [[True], [True], [True]]  # shorter than it
    with pytest.raises(ConfigError, match="no tokens"):
        span_before(ids, [], mask)


def test_top_entropy_per_sequence_hand_values() -> None:
    ent = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [1.0, 5.0, 3.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    out = top_entropy_per_sequence(ent, mask, top_fraction=0.4)
    assert out[0].item() == pytest.approx(4.5)  # k = 2 of 5: (5 + 4) / 2
    assert out[1].item() == pytest.approx(3.5)  # k = ceil(1.6) = 2 of 4: (4 + 3) / 2
    assert math.isnan(out[2].item())
    assert critical_token_entropy(ent, mask, top_fraction=0.4) == pytest.approx(4.0)
    assert top_entropy_per_sequence(ent, mask, top_fraction=1.0)[1].item() == pytest.approx(2.5)
    with pytest.raises(ConfigError):
        top_entropy_per_sequence(ent, mask, top_fraction=0.0)


def test_connective_mask_and_critical_mask_variant() -> None:
    tokens = [["So", " the", " answer", " is", " also", " 4", ".", " Wait", ",", " there", "fore"]]
    mask = connective_mask(tokens)
    assert mask.nonzero()[:, 1].tolist() == [0, 7, 9]  # "also" is not "so"
    ent = torch.arange(11, dtype=torch.float32).unsqueeze(0)
    span = torch.ones(1, 11, dtype=torch.bool)
    assert critical_token_entropy(ent, span, critical_mask=mask) == pytest.approx((0 + 7 + 9) / 3)
    assert connective_mask(tokens, length=5).shape == (1, 5)


def test_select_checkpoint_rules() -> None:
    scores = {100: 0.8, 200: 1.2, 300: 1.0, 400: float("nan")}
    assert select_checkpoint(scores).step == 200
    acc = {100: 0.50, 200: 0.40, 300: 0.495, 400: 0.3}
    choice = select_checkpoint(scores, acc, accuracy_tolerance=0.01)
    assert choice.step == 300 and choice.accuracy == 0.495 and "accuracy" in choice.rule
    assert select_checkpoint({1: 0.5, 2: 0.5}).step == 2  # ties go to the later step
    assert select_checkpoint(scores, higher_is_better=False).step == 100
    with pytest.raises(ConfigError, match="lacks"):
        select_checkpoint(scores, {100: 0.5})
    with pytest.raises(ConfigError):
        select_checkpoint({})


def test_entropy_sums_add_up_over_micro_batches_to_the_batch_means() -> None:
    ent = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    span = torch.tensor([[True, True, False], [False, False, False]])  # the second row has no thinking span
    whole = entropy_sums(ent, mask, span, top_fraction=0.5)
    parts = [entropy_sums(ent[i:i + 1], mask[i:i + 1], span[i:i + 1], top_fraction=0.5) for i in range(2)]
    added = {k: sum(p[k] for p in parts) for k in whole}
    assert added == whole
    means = sum_means(dict(added, loss=1.0))
    assert means == {"entropy": 12.0 / 5, "entropy_critical": 3.0}  # row 0's top half: its 3.0
