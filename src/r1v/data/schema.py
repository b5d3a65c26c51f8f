"""The single currency of r1v data: `Sample` (and `Row`, a sample with its file and record), `PreferencePair`,
`Trajectory`.

Every reader (JSONL, parquet, benchmark files, rendered tasks) turns its format into these records;
the processor, rollouts, rewards and eval all read them. Images are references (paths or PIL images),
loaded late by `r1v.processing.images.load_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass
class Message:
    """One chat turn. `content` may hold `<image>` placeholders, one per image of the sample, in order."""

    role: Role
    content: str


@dataclass
class Sample:
    """One record: a conversation, its images, and (when known) the gold answer.

    - `messages`: the conversation; for training the last assistant turn is the target.
    - `images`: image references (file paths or PIL images) matching the `<image>` placeholders.
    - `answer`: the gold final answer (string) used by verifiers; None when unknown.
    - `meta`: any other columns (choices, question_type, category, ...) passed to rewards by name.
    """

    id: str
    messages: list[Message]
    images: list[Any] = field(default_factory=list)
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The text of the last user turn."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return ""

    @property
    def target(self) -> str | None:
        """The last assistant turn, if the conversation ends with one."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return None

    def prompt_messages(self) -> list[Message]:
        """The conversation without its final assistant turn (what a model is asked)."""
        if self.target is not None:
            return self.messages[:-1]
        return list(self.messages)

    @classmethod
    def from_question(cls, id: str, question: str, images: list[Any] | None = None,
                      answer: str | None = None, system: str | None = None, **meta: Any) -> Sample:
        """Build a single-turn sample; adds one `<image>` line per image when the question has none."""
        images = list(images or [])
        n_tags = question.count("<image>")
        if images and n_tags == 0:
            question = "<image>\n" * len(images) + question
        elif n_tags not in (0, len(images)):
            raise ValueError(f"sample {id}: {n_tags} <image> tags but {len(images)} images")
        msgs = [Message("system", system)] if system else []
        msgs.append(Message("user", question))
        return cls(id=id, messages=msgs, images=images, answer=answer, meta=dict(meta))


@dataclass
class Row:
    """A sample and where it came from (file and line/record), for error messages."""

    sample: Sample
    source: str
    record: int | str


@dataclass
class PreferencePair:
    """A prompt with a chosen and a rejected completion (MPO, DPO, reward-model training)."""

    sample: Sample
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None


@dataclass
class Trajectory:
    """An agentic episode: the sample, the interleaved model/tool turns, and the final answer."""

    sample: Sample
    turns: list[Message] = field(default_factory=list)
    final_answer: str | None = None
