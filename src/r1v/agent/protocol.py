"""The R1V4-Lite agent output protocol: parse what a model writes, format what the tools send back.

A model turn is free text (usually a `<think>...</think>` thought) followed by ONE action:

    <tool_call>{"name": "code", "arguments": {"code": "..."}}</tool_call>   call a tool
    <code>...python...</code>                                              shorthand for the `code` tool
    <answer>...</answer>                                                   the final answer (ends the episode)
    <plan>[{"description": ..., "tool_name": ..., "parameters": {...}}]</plan>   planner mode (ends it too)

Tool results come back as a user turn `<observation>...</observation>`; every new image a tool made is an
`<image>` placeholder inside it (in order), so the processor feeds it to the vision tower like any input
image. A malformed action (bad JSON, no tool name, arguments not an object, unclosed tag, no action at all)
is never executed: `parse_turn` returns kind "malformed" with an `error` that the loop sends back as the
observation, so the model can correct itself. Generation stops at `STOP_STRINGS`; `cut_after_action`
drops anything the engine wrote past the closing tag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ACTION_TAGS = ("tool_call", "code", "answer", "plan")
STOP_STRINGS = ["</tool_call>", "</code>", "</answer>"]
PLAN_STOP_STRINGS = ["</plan>", "</answer>"]
IMAGE_TAG = "<image>"
_SAFE_IMAGE_TAG = "<image\u200b>"  # literal "<image>" text from a tool or a model must not become an image slot
_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)

TurnKind = Literal["tool_call", "answer", "plan", "malformed"]


@dataclass
class ToolCall:
    """One requested tool execution."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class PlanStep:
    """One planner step; `parameters` may hold placeholders such as "[Person from Step 1]"."""

    description: str
    tool_name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "tool_name": self.tool_name, "parameters": self.parameters}


@dataclass
class ParsedTurn:
    """What one model turn asked for. Exactly one of call / answer / plan / error is set, by `kind`."""

    kind: TurnKind
    text: str
    think: str | None = None
    call: ToolCall | None = None
    answer: str | None = None
    plan: list[PlanStep] | None = None
    error: str | None = None


def _first_action(text: str) -> tuple[str, int] | None:
    """(tag, start offset) of the earliest opening action tag after the thought, or None."""
    body_start = text.rfind(THINK_CLOSE)
    start = body_start + len(THINK_CLOSE) if body_start >= 0 else 0
    hits = [(text.find(f"<{tag}>", start), tag) for tag in ACTION_TAGS]
    hits = [(i, tag) for i, tag in hits if i >= 0]
    if not hits:
        return None
    i, tag = min(hits)
    return tag, i


def cut_after_action(text: str) -> str:
    """`text` up to and including the first action's closing tag (the rest is engine overshoot)."""
    found = _first_action(text)
    if found is None:
        return text
    tag, start = found
    end = text.find(f"</{tag}>", start)
    return text if end < 0 else text[: end + len(tag) + 3]


def split_think(text: str) -> tuple[str | None, str]:
    """(thought, rest) at the last `</think>`; the thought may start with or without `<think>`."""
    if THINK_CLOSE not in text:
        return None, text
    think, rest = text.rsplit(THINK_CLOSE, 1)
    think = think.strip()
    if think.startswith(THINK_OPEN):
        think = think[len(THINK_OPEN):].strip()
    return think, rest


def strip_code_fence(code: str) -> str:
    """Code without a surrounding ```python ... ``` fence (models often add one)."""
    m = _FENCE.match(code)
    return m.group(1) if m else code.strip("\n")


def parse_tool_call(payload: str) -> ToolCall:
    """The JSON inside `<tool_call>`; raises ValueError with a message meant for the model."""
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as e:
        raise ValueError(f"the tool call is not valid JSON ({e.msg} at character {e.pos}); write "
                         '<tool_call>{"name": "...", "arguments": {...}}</tool_call>') from None
    if not isinstance(obj, dict):
        raise ValueError("the tool call must be a JSON object with \"name\" and \"arguments\"")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the tool call has no \"name\" (a string naming the tool)")
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValueError("\"arguments\" is a string that is not a JSON object") from None
    if not isinstance(args, dict):
        raise ValueError("\"arguments\" must be a JSON object")
    return ToolCall(name, args)


def parse_plan(payload: str) -> list[PlanStep]:
    """The JSON step list inside `<plan>`; raises ValueError with a message meant for the model."""
    try:
        steps = json.loads(payload)
    except json.JSONDecodeError as e:
        raise ValueError(f"the plan is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(steps, list) or not steps:
        raise ValueError("the plan must be a non-empty JSON array of steps")
    out = []
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise ValueError(f"plan step {i} is not a JSON object")
        desc, tool, params = step.get("description"), step.get("tool_name"), step.get("parameters", {})
        if not isinstance(desc, str) or not isinstance(tool, str) or not tool:
            raise ValueError(f"plan step {i} needs string \"description\" and \"tool_name\"")
        if not isinstance(params, dict):
            raise ValueError(f"plan step {i}: \"parameters\" must be a JSON object")
        out.append(PlanStep(desc, tool, params))
    return out


def parse_turn(text: str) -> ParsedTurn:
    """Parse one model turn (see the module docstring). Never raises: problems become kind "malformed"."""
    think, _ = split_think(text)
    found = _first_action(text)
    if found is None:
        return ParsedTurn("malformed", text, think, error="no action found: end your turn with "
                          "<tool_call>{...}</tool_call>, <code>...</code> or <answer>...</answer>")
    tag, start = found
    end = text.find(f"</{tag}>", start)
    if end < 0:
        return ParsedTurn("malformed", text, think, error=f"<{tag}> was opened but never closed with </{tag}>")
    payload = text[start + len(tag) + 2: end]
    if tag == "answer":
        return ParsedTurn("answer", text, think, answer=payload.strip())
    if tag == "code":
        code = strip_code_fence(payload)
        if not code.strip():
            return ParsedTurn("malformed", text, think, error="the <code> block is empty")
        return ParsedTurn("tool_call", text, think, call=ToolCall("code", {"code": code}))
    try:
        if tag == "plan":
            return ParsedTurn("plan", text, think, plan=parse_plan(payload))
        return ParsedTurn("tool_call", text, think, call=parse_tool_call(payload.strip()))
    except ValueError as e:
        return ParsedTurn("malformed", text, think, error=str(e))


# ----------------------------------------------------------------------------------------- formatting


def escape_image_tags(text: str) -> str:
    """Literal `<image>` text made harmless (only the loop places image slots)."""
    return text.replace(IMAGE_TAG, _SAFE_IMAGE_TAG)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def format_plan(steps: list[PlanStep]) -> str:
    return "<plan>" + json.dumps([s.to_dict() for s in steps], ensure_ascii=False) + "</plan>"


def format_observation(text: str, num_images: int = 0) -> str:
    """An observation turn: the tool's text (image tags escaped) and one `<image>` per new image."""
    body = escape_image_tags(text.strip())
    images = "".join(f"\n{IMAGE_TAG}" for _ in range(num_images))
    return f"<observation>\n{body}{images}\n</observation>"


def extract_answer(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` in `text`, or None."""
    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return found[-1].strip() if found else None
