"""Tolerances that scale with what is compared, so the suite passes on any x86 CPU.

Two runs of the same float32 computation differ by rounding when the kernels or the summation order differ
(`ATEN_CPU_CAPABILITY=default|avx2|avx512`, 1 or 2 threads, other padding or micro-batching). That rounding is
a fraction of the size of the numbers involved, never a fixed absolute amount, so every comparison here is
relative to a scale:

- `assert_close_scaled(a, b, rel=...)`: `max|a - b| <= rel * max|b|` (the logit scale, the loss scale).
- `assert_same_update(a, b, start, rel=...)`: two trainings from the same `start` ended at `a` and `b`; each
  tensor's difference (norm) is at most `rel` of how far that tensor moved. A tensor that did not move must be
  equal.

`rel` is the claim a test makes ("equal up to float32 reordering" is about 1e-4 of the scale for the short
reductions of the tiny models; an optimiser step amplifies it, so trainings use 1e-3 of the update).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FLOAT32_REORDER = 1e-4
"""Relative size of float32 reordering over the reductions of the tiny test models (~1000 eps)."""
TRAINED_REORDER = 1e-3
"""The same after a few optimiser steps, relative to the norm of the update."""


def _max_abs(t: torch.Tensor) -> float:
    return float(t.detach().double().abs().max()) if t.numel() else 0.0


def scaled_difference(actual, expected, *, scale: float | None = None) -> tuple[float, float]:
    """(max|actual - expected|, scale): `scale` defaults to `max|expected|` over its finite entries.
    Shapes must agree and non-finite entries must be equal (difference inf otherwise)."""
    a = torch.as_tensor(actual).detach().double()
    e = torch.as_tensor(expected).detach().double()
    if a.shape != e.shape:
        raise AssertionError(f"shapes {tuple(a.shape)} and {tuple(e.shape)}")
    finite = torch.isfinite(e)
    if not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite], e[~finite]):
        return float("inf"), 0.0
    s = _max_abs(e[finite]) if scale is None else float(scale)
    return _max_abs(a[finite] - e[finite]), s


def close_scaled(actual, expected, *, rel: float = FLOAT32_REORDER, scale: float | None = None) -> bool:
    """`max|actual - expected| <= rel * scale` (see `scaled_difference`)."""
    diff, s = scaled_difference(actual, expected, scale=scale)
    return diff <= rel * s


def assert_close_scaled(actual, expected, *, rel: float = FLOAT32_REORDER, scale: float | None = None,
                        msg: str = "") -> None:
    """`close_scaled`, with the difference and the scale in the failure message."""
    diff, s = scaled_difference(actual, expected, scale=scale)
    assert diff <= rel * s, f"{msg}: max difference {diff:.3g} > {rel:g} x scale {s:.3g}"


def assert_same_update(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                       start: Mapping[str, torch.Tensor], *, rel: float = TRAINED_REORDER) -> float:
    """Per tensor: `||actual - expected|| <= rel * ||expected - start||` (Frobenius norms). Returns the largest
    update norm seen, so a caller can also assert that the runs really trained.

    Norms, not the largest element: AdamW moves an element whose true gradient is ~0 by `lr * g / (|g| + eps)`,
    so rounding noise in such a `g` can move that one element by a good part of `lr`. A real difference (other
    data, a missed step, ranks out of sync) moves the whole tensor and shows in the norm."""
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    largest = 0.0
    for name in expected:
        moved = float((expected[name].double() - start[name].double()).norm())
        largest = max(largest, moved)
        diff = float((actual[name].double() - expected[name].double()).norm())
        assert diff <= rel * moved, (f"{name}: runs differ by {diff:.3g} (norm), more than {rel:g} of the update "
                                     f"{moved:.3g}")
    return largest


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every named parameter."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
