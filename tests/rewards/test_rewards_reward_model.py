"""The reward-model scoring API: last-answer-token scores, padding invariance, save/load, plug-in shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from r1v.data.schema import Message, Sample
from r1v.errors import DataError, ModelError
from r1v.model.build import build_preset
from r1v.rewards.reward_model import (
    RewardModel,
    as_assistant_turn,
    last_answer_index,
    score_completion,
    with_answer,
)

RED = Image.new("RGB", (56, 56), (220, 40, 40))


@pytest.fixture(scope="module")
def rm() -> RewardModel:
    return RewardModel.from_vlm(build_preset("tiny"), batch_size=4)


def _sample(i: int = 0) -> Sample:
    return Sample.from_question(f"s{i}", "What colour is the square?", images=[RED], answer="red")


def test_scores_read_the_last_answer_token_and_ignore_padding(rm: RewardModel) -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100], [-100] * 5])
    assert last_answer_index(labels).tolist() == [3, 1, -1]
    texts = ["<think>\nred\n</think>\n\n\\boxed{red}", "blue", "a much longer answer " * 6]
    together = rm.score([_sample(i) for i in range(3)], texts)
    alone = [rm.score([_sample(i)], [t])[0] for i, t in enumerate(texts)]
    assert all(isinstance(x, float) for x in together)
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-5)  # right padding never changes a score
    assert len(set(round(x, 6) for x in together)) == 3
    # the score is the head on that token's hidden state: recompute it by hand
    enc = rm.processor.encode_for_training(with_answer(_sample(), "blue"))
    with torch.no_grad():
        h = rm.vlm.model.model(input_ids=enc["input_ids"][None], pixel_values=enc["pixel_values"]).last_hidden_state
        last = int(last_answer_index(enc["labels"][None])[0])
        assert rm.vlm.tokenizer.decode(enc["input_ids"][last:last + 1]) == "<|im_end|>"
        want = float(rm.net.head(h[0, last]))
    assert rm.score([_sample()], ["blue"])[0] == pytest.approx(want, rel=1e-5)


def test_save_load_round_trip_and_plugin_shapes(rm: RewardModel, tmp_path: Path, monkeypatch) -> None:
    with torch.no_grad():
        rm.net.head.bias.fill_(0.25)
    folder = rm.save(tmp_path / "rm")
    loaded = RewardModel.load(folder)
    texts = ["red", "<think>\nhm\n</think>\n\n\\boxed{blue}"]
    assert loaded.score([_sample(), _sample()], texts) == pytest.approx(rm.score([_sample(), _sample()], texts))
    # GRPO plug-in: completion + columns (text-only when no images are given); iterative SFT: whole samples
    text_only = Sample(id="t", messages=[Message("user", "What colour is the square?")])
    assert loaded("red", {"id": "t", "question": "<image>\nWhat colour is the square?"}) == \
        pytest.approx(loaded.score([text_only], ["red"])[0])
    full = with_answer(_sample(), "red")
    assert loaded.score_samples([full]) == pytest.approx(loaded.score([_sample()], ["red"]))
    monkeypatch.setenv("R1V_REWARD_MODEL", str(folder))
    assert score_completion("red", {"question": "What colour is the square?"}) == \
        pytest.approx(loaded.score([text_only], ["red"])[0])


def test_bad_input_raises_r1v_errors(rm: RewardModel, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="2 completions for 1 samples"):
        rm.score([_sample()], ["a", "b"])
    with pytest.raises(DataError, match="must end with an assistant answer"):
        rm.score_samples([_sample()])
    with pytest.raises(ModelError, match="not a reward model folder"):
        RewardModel.load(tmp_path)
    monkeypatch.delenv("R1V_REWARD_MODEL", raising=False)
    with pytest.raises(ModelError, match="R1V_REWARD_MODEL"):
        score_completion("x", {})


def test_generated_text_gets_the_think_prefill_back() -> None:
    assert as_assistant_turn("step\n</think>\n\n\\boxed{1}") == "<think>\nstep\n</think>\n\n\\boxed{1}"
    assert as_assistant_turn("<think>\nstep\n</think> 1") == "<think>\nstep\n</think> 1"
    assert as_assistant_turn("plain answer") == "plain answer"
