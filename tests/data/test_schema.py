"""The Sample record."""

from __future__ import annotations

import pytest

from r1v.data.schema import Message, Sample
from r1v.errors import DataError


def test_from_question_adds_image_tags() -> None:
    s = Sample.from_question("1", "How many?", images=["a.png", "b.png"], answer="3", system="sys", kind="count")
    assert s.messages[0] == Message("system", "sys")
    assert s.question == "<image>\n<image>\nHow many?"
    assert s.meta == {"kind": "count"} and s.answer == "3" and s.target is None


def test_from_question_rejects_mismatched_tags() -> None:
    with pytest.raises(ValueError, match="2 <image> tags but 1 images"):
        Sample.from_question("x", "<image><image> q", images=["a.png"])


def test_target_and_prompt() -> None:
    s = Sample("1", [Message("user", "q"), Message("assistant", "<think>t</think> a")])
    assert s.target == "<think>t</think> a"
    assert [m.role for m in s.prompt_messages()] == ["user"]


def test_data_error_names_source_record_field() -> None:
    e = DataError("not a string", source="d.jsonl", record=7, field="answer")
    assert str(e) == "d.jsonl, record 7, field 'answer': not a string"
