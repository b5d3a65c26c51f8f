"""GRPO's group rollouts: the same completions whichever prompts share a call, rewards and batch metrics, and
the offline prompt filter (zero-variance prompts dropped, the kept list written and read back on resume)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from r1v.data.schema import Sample
from r1v.model.build import build_preset
from r1v.rollout.batch import RolloutItem
from r1v.rollout.engine import SamplingParams, TransformersEngine
from r1v.rollout.groups import GroupSampling, group_metrics, prefilter, rollout, score


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_preset("tiny")


def prompts(n: int = 6) -> list[Sample]:
    return [Sample.from_question(f"q{i}", f"Question {i}?", answer="1") for i in range(n)]


SAMPLING = GroupSampling(SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, repetition_penalty=1.0,
                                        think=False, n=3), seed=7)


def test_a_group_samples_the_same_completions_whoever_shares_the_call(tiny) -> None:
    engine, ps = TransformersEngine(tiny), prompts()
    together, _ = rollout(engine, ps, [0, 1, 2, 3], SAMPLING, tiny.tokenizer, batch=5)
    alone, _ = rollout(engine, ps, [2], SAMPLING, tiny.tokenizer, batch=5)
    assert [it.prompt for it in together] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [it.completion_ids for it in together[6:9]] == [it.completion_ids for it in alone]
    other, _ = rollout(engine, ps, [2], SAMPLING, tiny.tokenizer, batch=6)  # another rollout batch, other draws
    assert [it.completion_ids for it in other] != [it.completion_ids for it in alone]


def test_score_and_group_metrics() -> None:
    items = [RolloutItem(0, [1, 2], False), RolloutItem(0, [3], True), RolloutItem(1, [4], False),
             RolloutItem(1, [5, 6, 7], False)]
    samples = prompts(2)
    score(items, ["a", "bb", "c", "d"], samples, lambda text, cols: {"overall": float(len(text) == 1), "x": 1.0},
          lambda s, texts: [0.5] * len(texts), rm_weight=2.0)
    assert [it.reward for it in items] == [2.0, 1.0, 2.0, 2.0]
    assert items[0].parts == {"x": 1.0, "rm": 0.5}
    m = group_metrics(items, 2)
    assert m["reward"] == 1.75 and m["frac_reward_zero_std"] == 0.5  # group 1 is constant
    assert m["completion_length"] == 7 / 4 and m["truncated_share"] == 0.25 and m["reward/rm"] == 0.5


def test_prefilter_keeps_varying_prompts_and_resume_reads_them_back(tiny, tmp_path: Path) -> None:
    engine, ps = TransformersEngine(tiny), prompts()

    def reward(items, texts):  # prompts 0 and 3 always score 1; the others score by text length parity
        for it, text in zip(items, texts, strict=True):
            it.reward = 1.0 if it.prompt % 3 == 0 else float(len(text) % 2)

    kept_file = tmp_path / "prefilter.json"
    kept = prefilter(engine, ps, SAMPLING, tiny.tokenizer, reward, per_call=4, kept_file=kept_file)
    saved = json.loads(kept_file.read_text())
    assert saved["kept"] == kept and saved["n_prompts"] == 6 and saved["n_kept"] == len(kept)
    assert 0 not in kept and 3 not in kept and kept  # constant groups dropped, some varying ones kept
    kept_file.write_text(json.dumps({"kept": [5]}))
    assert prefilter(engine, ps, SAMPLING, tiny.tokenizer, reward, 4, kept_file, resume=True) == [5]
