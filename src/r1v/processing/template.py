"""Chat templates of the R1V generations, with thinking on/off and a training form for label masks.

Templates (`template` names, as in `ProcessingSpec.template`):

- `r1v`: DeepSeek-R1-distill style (R1V's LLM is DeepSeek-R1-Distill-Qwen-32B)::

      <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>...
      generation prompt: ...<｜User｜>{user}<｜Assistant｜><think>\\n      (thinking on)
                         ...<｜User｜>{user}<｜Assistant｜>                (thinking off)

  The system text follows the BOS with no marker. Earlier assistant turns in a prompt keep only the
  text after their `</think>` (the R1 convention: past reasoning is not fed back).
- `r1v2`: QwQ-32B ChatML (R1V2's LLM)::

      <|im_start|>system\\n{system}<|im_end|>\\n          (only when a system message is given)
      <|im_start|>user\\n{user}<|im_end|>\\n
      <|im_start|>assistant\\n{answer}<|im_end|>\\n
      generation prompt: <|im_start|>assistant\\n<think>\\n  (thinking on; without `<think>\\n` off)

  Like QwQ, earlier assistant turns keep only the text after `</think>`.
- `r1v3`: ChatML with the `<think>\\n` prefill (spec 2.4: R1V3's conversation template and its
  tokenizer chat_template end the generation prompt with `<|im_start|>assistant\\n<think>\\n`;
  disabling thinking deletes that prefill). Same layout as `r1v2`; history is kept verbatim.
- `chatml`: SmolLM2-Instruct ChatML: as `r1v3`, but a missing system message is replaced by
  SmolLM2's default system prompt. Thinking on adds the same `<think>\\n` prefill.

Training form: `render_training` returns `Segment`s of the whole conversation, each tagged
`assistant=True/False`; the processor tokenises them one by one so labels cover exactly the
assistant text plus its end-of-turn token (`<｜end▁of▁sentence｜>` or `<|im_end|>`). With thinking
on, a leading `<think>\\n` in a trained assistant turn belongs to the (unlabelled) prompt, because at
inference the prompt pre-fills it; turns without it are trained whole after a prompt without prefill.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from r1v.errors import ConfigError, DataError

TEMPLATES = ("r1v", "r1v2", "r1v3", "chatml")
THINK_PREFILL = "<think>\n"
R1_BOS = "<｜begin▁of▁sentence｜>"
R1_EOS = "<｜end▁of▁sentence｜>"
R1_USER = "<｜User｜>"
R1_ASSISTANT = "<｜Assistant｜>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `assistant` marks text the model is trained to produce."""

    text: str
    assistant: bool = False


def _role_content(message: Any) -> tuple[str, str]:
    if isinstance(message, dict):
        role, content = message.get("role"), message.get("content")
    else:
        role, content = getattr(message, "role", None), getattr(message, "content", None)
    if role not in ("system", "user", "assistant") or not isinstance(content, str):
        raise DataError(f"a chat message needs role system/user/assistant and string content, got {message!r}",
                        field="messages")
    return role, content


def _after_think(text: str) -> str:
    """The answer part of an assistant turn (text after the last `</think>`)."""
    return text.rsplit("</think>", 1)[-1].lstrip("\n") if "</think>" in text else text


def _check(template: str) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")


def _segments(messages: Iterable[Any], template: str, *, think: bool, add_generation_prompt: bool,
              train_last: bool) -> list[Segment]:
    _check(template)
    turns = [_role_content(m) for m in messages]
    r1_style = template == "r1v"
    strip_history = template in ("r1v", "r1v2")
    out: list[Segment] = []

    def text(s: str) -> None:
        out.append(Segment(s, False))

    system = None
    if turns and turns[0][0] == "system":
        system = turns[0][1]
        turns = turns[1:]
    if template == "chatml" and system is None:
        system = SMOLLM2_SYSTEM
    if r1_style:
        text(R1_BOS + (system or ""))
    elif system is not None:
        text(f"{IM_START}system\n{system}{IM_END}\n")

    last = len(turns) - 1
    for i, (role, content) in enumerate(turns):
        if role == "system":
            raise DataError("a system message may only come first in a conversation", field="messages")
        if role == "user":
            text(f"{R1_USER}{content}" if r1_style else f"{IM_START}user\n{content}{IM_END}\n")
            continue
        opener = R1_ASSISTANT if r1_style else f"{IM_START}assistant\n"
        closer = R1_EOS if r1_style else IM_END
        if train_last and i == last:
            prefix = ""
            if think and content.startswith(THINK_PREFILL):
                prefix, content = THINK_PREFILL, content[len(THINK_PREFILL):]
            text(opener + prefix)
            out.append(Segment(content + closer, True))
            if not r1_style:
                text("\n")
        else:
            shown = _after_think(content) if strip_history else content
            text(f"{opener}{shown}{closer}" + ("" if r1_style else "\n"))
    if add_generation_prompt and not train_last:
        opener = R1_ASSISTANT if r1_style else f"{IM_START}assistant\n"
        text(opener + (THINK_PREFILL if think else ""))
    return out


def render_prompt(messages: Iterable[Any], template: str, *, think: bool = True,
                  add_generation_prompt: bool = True) -> str:
    """Render a conversation (Message objects or {role, content} dicts) as a prompt string.

    With `add_generation_prompt` the text ends with the assistant opener, plus the `<think>\\n`
    prefill when `think` is on. `<image>` placeholders are left in place for the processor.
    """
    segs = _segments(messages, template, think=think, add_generation_prompt=add_generation_prompt,
                     train_last=False)
    return "".join(s.text for s in segs)


def render_training(messages: Iterable[Any], template: str, *, think: bool = True) -> list[Segment]:
    """Render a conversation ending with the assistant target as tagged segments.

    Only the last assistant turn (its text and end-of-turn token) is tagged `assistant=True`;
    earlier turns are context. Joining the texts gives the full training string.
    """
    turns = list(messages)
    if not turns or _role_content(turns[-1])[0] != "assistant":
        raise DataError("a training conversation must end with an assistant message", field="messages")
    return _segments(turns, template, think=think, add_generation_prompt=False, train_last=True)
