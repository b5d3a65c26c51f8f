"""MKL weight packing: packed linears compute what the layers compute, and give the layers back."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_scaled

from r1v.rollout.packing import can_pack, linear, packed_linears

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def test_packed_linears_give_the_same_outputs_and_are_removed_after() -> None:
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4, bias=False))
    x = torch.randn(3, 2, 8)
    want = net(x)
    with torch.no_grad(), packed_linears([net], batch=6) as n:
        got = net(x)
        assert all("forward" in vars(m) for m in (net[0], net[2])) or not can_pack(net[0].weight)
    assert n == (2 if can_pack(net[0].weight) else 0)
    assert not any("forward" in vars(m) for m in net)
    assert_close_scaled(got, want)


def test_linear_packs_when_it_can_and_falls_back_to_f_linear() -> None:
    torch.manual_seed(6)
    w, b, x = torch.randn(5, 8), torch.randn(5), torch.randn(3, 8)
    want = torch.nn.functional.linear(x, w, b)
    for batch in (3, None):
        assert_close_scaled(linear(w, b, batch)(x), want)
    torch.testing.assert_close(linear(w.double(), None, 3)(x.double()), x.double() @ w.double().T)


class _Wrapped(torch.Tensor):
    """A tensor subclass that reports float32, like a quantised weight (torchao's subclasses do)."""


def test_a_tensor_subclass_is_not_packed() -> None:
    w = torch.randn(4, 8)
    assert can_pack(torch.nn.Parameter(w)) == can_pack(w)
    sub = torch.Tensor._make_subclass(_Wrapped, w)
    assert sub.dtype == torch.float32 and not can_pack(sub)
    net = torch.nn.Linear(8, 4)
    net.weight = torch.nn.Parameter(torch.Tensor._make_subclass(_Wrapped, w), requires_grad=False)
    with packed_linears([net], batch=2) as n:
        assert n == 0
