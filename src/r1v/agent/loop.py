"""The agent loop: generate until an action, execute it, feed the observation back, repeat.

    registry = default_registry()
    [traj] = run_episodes(TransformersEngine(vlm), [sample], registry, max_turns=4)
    traj.final_answer, traj.finish, traj.steps, traj.to_sample()

Each turn every still-running episode is one row of a single `engine.generate` call (batched), with the
protocol's stop strings (`</tool_call>`, `</code>`, `</answer>`; `</plan>` in planner mode). The turn's
text is cut after its action and appended as an assistant message; a tool call runs through the registry
and its result comes back as a user message `<observation>...</observation>` whose new images are appended
to the episode's images (one `<image>` slot each), so the next turn sees them. A malformed action gets an
observation explaining the error. An episode ends with `<answer>` (finish "answer"), a valid `<plan>`
(planner mode, finish "plan") or after `max_turns` model turns (finish "turn_limit", no answer).

Training: `AgentTrajectory.training_samples()` turns an episode into one Sample per assistant turn (the
conversation up to and including that turn), so the loss covers every model turn while observations, being
user turns, are always context with label -100; each turn is trained on exactly the prompt it had.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from r1v.agent.protocol import (
    PLAN_STOP_STRINGS,
    STOP_STRINGS,
    THINK_OPEN,
    PlanStep,
    cut_after_action,
    escape_image_tags,
    format_observation,
    parse_turn,
)
from r1v.agent.tools import ToolContext, ToolRegistry
from r1v.data.schema import Message, Sample, Trajectory
from r1v.rollout.engine import Completion, SamplingParams, split_completion

THINK_PREFILL = "<think>\n"
AGENT_SYSTEM = (
    "You solve visual tasks with tools. Think inside <think>...</think>, then either call one tool with "
    '<tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call> (Python may also go in <code>...</code>) '
    "or give the final answer in <answer>...</answer>. Tool results come back in <observation>...</observation>."
    "\nTools:\n{tools}"
)
PLANNER_SYSTEM = (
    "You plan how to solve a task with tools. Think inside <think>...</think>, then return the plan as "
    '<plan>[{{"description": ..., "tool_name": ..., "parameters": {{...}}}}, ...]</plan>; later steps may refer '
    'to earlier results with placeholders such as "[result of Step 1]".\nTools:\n{tools}'
)


@dataclass
class ToolStep:
    """One executed (or rejected) action of an episode."""

    turn: int
    name: str | None
    arguments: dict[str, Any] | None
    ok: bool
    error: str | None = None
    num_images: int = 0


@dataclass
class AgentTrajectory(Trajectory):
    """A `Trajectory` plus what the loop knows: every image (the sample's, then the tools'), the steps,
    why it ended (`answer`, `plan`, `turn_limit`) and the plan in planner mode."""

    prompt: list[Message] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    steps: list[ToolStep] = field(default_factory=list)
    finish: str = "turn_limit"
    plan: list[PlanStep] | None = None

    @property
    def num_model_turns(self) -> int:
        return sum(1 for m in self.turns if m.role == "assistant")

    def to_sample(self) -> Sample:
        """The whole episode as one conversation (images in order of their `<image>` slots)."""
        return Sample(self.sample.id, [*self.prompt, *self.turns], list(self.images), self.sample.answer,
                      dict(self.sample.meta))

    def training_samples(self) -> list[Sample]:
        """One sample per assistant turn: the conversation up to and including that turn."""
        out = []
        messages = list(self.prompt)
        for k, msg in enumerate(self.turns):
            messages.append(msg)
            if msg.role != "assistant":
                continue
            n_images = sum(m.content.count("<image>") for m in messages)
            out.append(Sample(f"{self.sample.id}#t{k}", list(messages), list(self.images[:n_images]),
                              self.sample.answer, dict(self.sample.meta)))
        return out


def agent_prompt(sample: Sample, registry: ToolRegistry, *, planner: bool = False,
                 system: str | None = None) -> list[Message]:
    """The sample's prompt messages with the protocol's system prompt first (an own system message is
    appended to it)."""
    text = system if system is not None else (PLANNER_SYSTEM if planner else AGENT_SYSTEM)
    text = text.format(tools=registry.describe())
    messages = sample.prompt_messages()
    if messages and messages[0].role == "system":
        text = f"{text}\n\n{messages[0].content}"
        messages = messages[1:]
    return [Message("system", text), *messages]


def _materialise(images: Sequence[Any], folder: Path) -> list[Path]:
    """Image references as files the sandbox can copy (PIL images are written as PNG)."""
    out = []
    for i, ref in enumerate(images):
        if isinstance(ref, (str, Path)):
            out.append(Path(ref))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"input_{i}.png"
            ref.convert("RGB").save(path)
            out.append(path)
    return out


def default_params(max_new_tokens: int = 256) -> SamplingParams:
    """Greedy decoding, no repetition penalty (the loop's default)."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0)


def run_episodes(engine: Any, samples: Sequence[Sample], registry: ToolRegistry, *, max_turns: int = 4,
                 params: SamplingParams | None = None, planner: bool = False, system: str | None = None,
                 work_dir: str | Path | None = None, max_images: int = 8) -> list[AgentTrajectory]:
    """Run one episode per sample, batched turn by turn; returns the trajectories in sample order.

    `engine`: anything with `generate(samples, params) -> [[Completion]]` (TransformersEngine, the vLLM
    engine, `ScriptedPolicy`). Tool outputs are written under `work_dir` (a fresh temporary folder when
    None; it is kept, since trajectories refer to the images in it).
    """
    if max_turns < 1:
        raise ValueError("max_turns must be >= 1")
    params = replace(params or default_params(), n=1, stop=sorted(set(
        (params.stop if params else []) + (PLAN_STOP_STRINGS if planner else STOP_STRINGS))))
    root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="r1v-agent-"))
    trajs = [AgentTrajectory(sample=s, prompt=agent_prompt(s, registry, planner=planner, system=system),
                             images=list(s.images)) for s in samples]
    files = [_materialise(s.images, root / f"episode_{i}") for i, s in enumerate(samples)]
    active = list(range(len(trajs)))
    for turn in range(max_turns):
        if not active:
            break
        rows = [Sample(trajs[i].sample.id, [*trajs[i].prompt, *trajs[i].turns], list(trajs[i].images),
                       trajs[i].sample.answer, trajs[i].sample.meta) for i in active]
        groups = engine.generate(rows, params)
        still = []
        for i, group in zip(active, groups, strict=True):
            if _step(trajs[i], files[i], group[0].text, turn, registry, root / f"episode_{i}",
                     think=params.think, planner=planner, max_images=max_images):
                still.append(i)
        active = still
    return trajs


def _step(traj: AgentTrajectory, files: list[Path], text: str, turn: int, registry: ToolRegistry, folder: Path,
          *, think: bool, planner: bool, max_images: int) -> bool:
    """Apply one model turn to an episode; True while the episode goes on."""
    text = escape_image_tags(cut_after_action(text))
    if think and not text.lstrip().startswith(THINK_OPEN):
        text = THINK_PREFILL + text  # the prompt pre-filled it; the turn owns it
    traj.turns.append(Message("assistant", text))
    parsed = parse_turn(text)
    if parsed.kind == "answer":
        traj.final_answer, traj.finish = parsed.answer, "answer"
        return False
    if parsed.kind == "plan" and planner:
        unknown = [s.tool_name for s in parsed.plan or [] if s.tool_name not in registry.names]
        if not unknown:
            traj.plan, traj.finish = parsed.plan, "plan"
            return False
        parsed.kind, parsed.error = "malformed", f"the plan uses unknown tools {unknown}; available: {registry.names}"
    elif parsed.kind == "plan":
        parsed.kind, parsed.error = "malformed", "planning is not enabled here; call a tool or answer"
    if parsed.kind == "malformed" or parsed.call is None:
        traj.steps.append(ToolStep(turn, None, None, False, parsed.error))
        traj.turns.append(Message("user", format_observation(f"error: {parsed.error}")))
        return True
    call = parsed.call
    result = registry.call(call, ToolContext(list(files), folder / f"turn_{turn}"))
    room = max(0, max_images - len(traj.images))
    new = list(result.images[:room])
    note = f"\n({len(result.images) - len(new)} more images dropped: at most {max_images} per episode)" \
        if len(new) < len(result.images) else ""
    traj.images.extend(new)
    files.extend(new)
    traj.steps.append(ToolStep(turn, call.name, call.arguments, result.ok, result.error, len(new)))
    traj.turns.append(Message("user", format_observation(result.observation_text() + note, len(new))))
    return True


def run_episode(engine: Any, sample: Sample, registry: ToolRegistry, max_turns: int = 4, planner: bool = False,
                **kwargs: Any) -> AgentTrajectory:
    """One episode (see `run_episodes`)."""
    return run_episodes(engine, [sample], registry, max_turns=max_turns, planner=planner, **kwargs)[0]


class ScriptedPolicy:
    """An engine whose turns come from `script(sample, turn) -> text` (experts, tests).

    `turn` counts the assistant turns already in the conversation. Texts are returned as written (they may
    start with `<think>`); the engine interface is the same as `TransformersEngine.generate`.
    """

    def __init__(self, script: Callable[[Sample, int], str]) -> None:
        self.script = script
        self.calls = 0

    def generate(self, samples: Sequence[Sample], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for s in samples:
            text = self.script(s, sum(1 for m in s.messages if m.role == "assistant"))
            think, answer = split_completion(text, starts_in_think=False)
            out.append([Completion(text=text, token_ids=[], finish_reason="stop", think=think, answer=answer,
                                   num_think_tokens=0, prompt_tokens=0)])
        return out
