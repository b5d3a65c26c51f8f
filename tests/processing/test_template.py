"""Chat templates: exact strings per generation, thinking on/off, training segments."""

from __future__ import annotations

import pytest

from r1v.data.schema import Message
from r1v.errors import ConfigError, DataError
from r1v.processing.template import SMOLLM2_SYSTEM, render_prompt, render_training

CONV = [Message("system", "Be brief."), Message("user", "<image>\nWhat is 2+2?")]
MULTI = [Message("user", "Hi"), Message("assistant", "<think>\nhmm\n</think>\n\nHello"), Message("user", "Again")]


def test_r1v_prompt():
    assert render_prompt(CONV, "r1v") == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜><image>\nWhat is 2+2?<｜Assistant｜><think>\n")
    assert render_prompt(CONV, "r1v", think=False).endswith("<｜Assistant｜>")
    assert render_prompt(CONV, "r1v", add_generation_prompt=False).endswith("What is 2+2?")
    # history keeps only the answer after </think>
    assert render_prompt(MULTI, "r1v", think=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>Again<｜Assistant｜>")


def test_r1v2_and_r1v3_chatml():
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n")
    assert render_prompt(CONV, "r1v2") == expected
    assert render_prompt(CONV, "r1v3") == expected
    assert render_prompt(CONV, "r1v3", think=False) == expected[: -len("<think>\n")]
    # r1v2 (QwQ) drops past reasoning, r1v3 keeps history verbatim
    assert "<think>" not in render_prompt(MULTI, "r1v2", think=False)
    assert "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|im_end|>\n" in render_prompt(MULTI, "r1v3")
    # no system message -> none emitted
    assert render_prompt([Message("user", "x")], "r1v3").startswith("<|im_start|>user\nx")


def test_chatml_default_system_and_think():
    text = render_prompt([{"role": "user", "content": "x"}], "chatml", think=False)
    assert text == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert render_prompt([{"role": "user", "content": "x"}], "chatml").endswith("assistant\n<think>\n")


@pytest.mark.parametrize("template", ["r1v", "r1v2", "r1v3", "chatml"])
def test_training_segments(template):
    conv = CONV + [Message("assistant", "<think>\n2+2=4\n</think>\n\n\\boxed{4}")]
    segs = render_training(conv, template, think=True)
    labelled = [s for s in segs if s.assistant]
    assert len(labelled) == 1
    eot = "<｜end▁of▁sentence｜>" if template == "r1v" else "<|im_end|>"
    assert labelled[0].text == "2+2=4\n</think>\n\n\\boxed{4}" + eot
    # the prompt part is exactly the inference prompt (prefill included)
    joined = "".join(s.text for s in segs)
    assert joined.startswith(render_prompt(CONV, template, think=True))
    prompt_part = "".join(s.text for s in segs[: segs.index(labelled[0])])
    assert prompt_part == render_prompt(CONV, template, think=True)
    # thinking off: the whole assistant text is the target, after a prompt without prefill
    segs_off = render_training(conv, template, think=False)
    target = [s for s in segs_off if s.assistant][0]
    assert target.text.startswith("<think>\n2+2=4")
    assert "".join(s.text for s in segs_off[: segs_off.index(target)]) == render_prompt(CONV, template, think=False)


def test_errors():
    with pytest.raises(ConfigError, match="unknown chat template"):
        render_prompt(CONV, "llama")
    with pytest.raises(DataError, match="end with an assistant"):
        render_training(CONV, "r1v3")
    with pytest.raises(DataError, match="role"):
        render_prompt([{"role": "robot", "content": "x"}], "r1v3")
    with pytest.raises(DataError, match="system message may only come first"):
        render_prompt([Message("user", "a"), Message("system", "b")], "r1v3")
