"""Selective Sample Buffer: |adv|-weighted draws, eviction, mixing cap, effective ratio, resume."""

from __future__ import annotations

import io

import pytest
import torch

from r1v.algos.ssb import SelectiveSampleBuffer, SSBConfig, fill_batch, groups_from_flat, prefilter_prompts
from r1v.errors import ConfigError


def test_draws_are_proportional_to_abs_advantage() -> None:
    buf = SelectiveSampleBuffer(capacity=10, max_age=None)
    buf.add([("a", 1.0), ("b", -2.0), ("c", 3.0), ("d", -4.0)], step=0)
    rng = torch.Generator().manual_seed(123)
    counts = {k: 0 for k in "abcd"}
    n = 20000
    for _ in range(n):
        counts[buf.draw(1, rng)[0].payload] += 1
    for key, expected in zip("abcd", (0.1, 0.2, 0.3, 0.4), strict=True):
        assert counts[key] / n == pytest.approx(expected, abs=0.015)


def test_zero_advantage_samples_are_never_stored() -> None:
    buf = SelectiveSampleBuffer()
    assert buf.add([("x", 0.0), ("y", 1e-12), ("z", float("nan")), ("w", -0.5)], step=1) == 1
    res = buf.fill([[("p", 0.0), ("q", 0.0)], [("r", 0.0), ("s", 0.0)]], step=2)
    assert [it.payload for it in buf.items] == ["w"]
    assert all(abs(it.advantage) > 0 for it in buf.items)
    assert res.stats["from_buffer"] == 1.0


def test_staleness_eviction() -> None:
    buf = SelectiveSampleBuffer(max_age=2)
    buf.add([("old", 1.0)], step=0)
    buf.add([("new", 1.0)], step=2)
    assert buf.evict_stale(2) == 0 and len(buf) == 2
    res = buf.fill([[("z", 0.0), ("z2", 0.0)]], step=3, add=False)
    assert [it.payload for it in buf.items] == ["new"]
    assert [it.payload for it in res.items if it.from_buffer] == ["new"]


def test_capacity_eviction_policies() -> None:
    oldest = SelectiveSampleBuffer(capacity=2, eviction="oldest")
    oldest.add([("a", 5.0)], step=0)
    oldest.add([("b", 0.1), ("c", 0.2)], step=1)
    assert [it.payload for it in oldest.items] == ["b", "c"]
    small = SelectiveSampleBuffer(capacity=2, eviction="smallest_adv")
    small.add([("a", 5.0)], step=0)
    small.add([("b", -0.1), ("c", 0.2)], step=1)
    assert sorted(it.payload for it in small.items) == ["a", "c"]
    with pytest.raises(ConfigError, match="eviction"):
        SSBConfig(eviction="random")
    with pytest.raises(ConfigError, match="max_buffer_fraction"):
        SelectiveSampleBuffer(max_buffer_fraction=1.5)


def _batch(step: int) -> list[list[tuple[str, float]]]:
    mixed = [(f"m{step}.{j}", a) for j, a in enumerate((1.0, -1.0, 1.0, -1.0))]
    solved = [(f"s{step}.{j}", 0.0) for j in range(4)]
    failed = [(f"f{step}.{j}", 0.0) for j in range(4)]
    return [mixed, solved, failed]


def test_fill_raises_effective_ratio_and_respects_the_cap() -> None:
    buf = SelectiveSampleBuffer(max_buffer_fraction=0.5, max_age=None)
    first = buf.fill(_batch(0), step=0)
    # empty buffer: nothing to draw, both ratios equal, batch unchanged
    assert first.stats["effective_ratio_with"] == first.stats["effective_ratio_without"] == pytest.approx(1 / 3)
    assert [it.payload for it in first.items] == [p for g in _batch(0) for p, _ in g]
    assert len(buf) == 4
    second = buf.fill(_batch(1), step=1)
    assert second.stats["effective_ratio_without"] == pytest.approx(1 / 3)
    assert second.stats["effective_ratio_with"] == pytest.approx(2 / 3)  # 4 slots from buffer (cap 6)
    assert second.stats["zero_groups"] == 2.0 and second.stats["from_buffer"] == 4.0
    drawn = [it for it in second.items if it.from_buffer]
    assert all(it.step == 0 and it.payload.startswith("m0") for it in drawn)  # only earlier steps
    assert [it.payload for it in second.items[:4]] == ["m1.0", "m1.1", "m1.2", "m1.3"]
    assert len(second.items) == 12
    capped = SelectiveSampleBuffer(max_buffer_fraction=0.25, max_age=None)
    capped.add([(f"c{i}", 1.0) for i in range(20)], step=0)
    res = capped.fill(_batch(1), step=1)
    assert res.stats["from_buffer"] == 3.0  # floor(0.25 * 12)
    assert res.stats["effective_ratio_with"] > res.stats["effective_ratio_without"]


def test_remove_drawn() -> None:
    buf = SelectiveSampleBuffer(remove_drawn=True, max_age=None, max_buffer_fraction=1.0)
    buf.add([("a", 1.0), ("b", 2.0)], step=0)
    buf.fill([[("z", 0.0)]], step=1)
    assert len(buf) == 1


def _run(buf: SelectiveSampleBuffer, steps: range) -> list[list[str]]:
    out = []
    for step in steps:
        res = buf.fill(_batch(step), step=step)
        out.append([it.payload for it in res.items if it.from_buffer])
    return out


def test_resume_round_trip_gives_the_same_draws() -> None:
    buf = SelectiveSampleBuffer(capacity=10, max_age=3, seed=7)
    _run(buf, range(0, 5))
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    resumed = SelectiveSampleBuffer()
    resumed.load_state_dict(torch.load(blob, weights_only=False))
    assert resumed.config == buf.config
    expected = _run(buf, range(5, 10))
    assert _run(resumed, range(5, 10)) == expected
    assert any(expected)
    # the draws do depend on the generator: another seed differs somewhere
    other = SelectiveSampleBuffer(capacity=10, max_age=3, seed=8)
    assert _run(other, range(0, 10))[5:] != expected


def test_groups_from_flat() -> None:
    groups = groups_from_flat(["a", "b", "c", "d"], torch.tensor([1.0, -1.0, 0.0, 0.0]), 2)
    assert groups == [[("a", 1.0), ("b", -1.0)], [("c", 0.0), ("d", 0.0)]]
    with pytest.raises(ConfigError):
        groups_from_flat(["a"], torch.tensor([1.0, 2.0]), 2)


def test_prefilter_drops_zero_variance_prompts() -> None:
    def rollout(prompts: list[int], n: int) -> list[list[int]]:
        return [[p * 10 + j for j in range(n)] for p in prompts]

    def reward(prompt: int, completion: int) -> float:
        if prompt % 3 == 0:
            return 1.0  # always solved
        if prompt % 3 == 1:
            return 0.0  # never solved
        return float(completion % 2)  # half right

    res = prefilter_prompts(list(range(9)), rollout, reward, num_generations=4, batch_size=4)
    assert res.kept == [2, 5, 8]
    assert res.dropped == [0, 1, 3, 4, 6, 7]
    assert res.stats["dropped_by_value"] == {1.0: 3, 0.0: 3}
    assert res.stats["effective_ratio_all"] == pytest.approx(1 / 3)
    assert res.stats["effective_ratio_kept"] == pytest.approx(1.0)
    assert res.rewards[2] == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ConfigError):
        prefilter_prompts([1], rollout, reward, num_generations=1)


def test_fill_batch_with_and_without_a_buffer() -> None:
    adv = torch.tensor([0.0, 0.0, 1.0, -1.0])  # group 0 constant, group 1 mixed (G=2)
    rows, advs, stats = fill_batch(None, ["a", "b", "c", "d"], adv, 2, step=0)
    assert rows == ["a", "b", "c", "d"] and advs == adv.tolist()
    assert stats == {"effective_ratio": 0.5, "effective_ratio_without": 0.5}
    buf = SelectiveSampleBuffer(SSBConfig(capacity=8, max_age=4, max_buffer_fraction=0.5))
    fill_batch(buf, ["a", "b", "c", "d"], adv, 2, step=0)  # caches c and d
    rows, advs, stats = fill_batch(buf, ["e", "f", "g", "h"], adv, 2, step=1)
    assert set(rows[:2]) <= {"c", "d"} and rows[2:] == ["g", "h"] and all(a != 0 for a in advs)
    assert stats["effective_ratio"] == 1.0 and stats["effective_ratio_without"] == 0.5
    assert stats["ssb/from_buffer"] == 2 and stats["ssb/buffer_size"] >= 2
