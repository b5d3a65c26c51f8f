"""Agent episodes beyond one loop call: R1V4's trajectory filters, scripted-expert trajectories, perception
samples in the agent's protocol, greedy agent-loop accuracy, and the `r1v chat --agent` / `r1v eval --agent`
entry points.

- `rejection_reason` / `filter_trajectories`: keep an episode only if it ended with an answer, the answer
  matches the gold answer and the last thought states it, no tool call failed and it cropped once.
- `expert_trajectories`: scripted-expert episodes (some deliberately flawed) through the real loop.
- `agent_accuracy`: greedy episodes in batches, scored by normalised answer match (`answer_matches`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v.agent.loop import AgentTrajectory, ScriptedPolicy, default_params, run_episodes
from r1v.agent.tools import ToolRegistry, default_registry
from r1v.data.schema import Sample
from r1v.data.tool_tasks import FLAWS, expert_script, generate_zoom_tasks, look_tasks
from r1v.tables import print_table

_CROP = re.compile(r"\.crop\s*\(")


# ------------------------------------------------------------------------------------------ filters


def normalise_answer(text: str | None) -> str:
    return re.sub(r"[^a-z0-9 ]", "", (text or "").lower()).strip()


def answer_matches(pred: str | None, gold: str | None) -> bool:
    """Normalised equality (case, punctuation), or the gold word as the prediction's first word."""
    p, g = normalise_answer(pred), normalise_answer(gold)
    return bool(g) and (p == g or p.split()[:1] == [g])


def rejection_reason(traj: AgentTrajectory) -> str | None:
    """Why an episode fails the R1V4 filters (None: keep it)."""
    if any(not s.ok for s in traj.steps):
        return "tool_error"
    if traj.finish != "answer":
        return "no_answer"
    crops = [s for s in traj.steps if s.name == "code" and _CROP.search(str((s.arguments or {}).get("code", "")))]
    calls = [repr(sorted((s.arguments or {}).items())) for s in traj.steps if s.name]
    if len(crops) > 1 or len(calls) != len(set(calls)):
        return "repeated_crop"
    last = traj.turns[-1].content
    last_think = last.split("</think>")[0] if "</think>" in last else ""
    if not answer_matches(traj.final_answer, traj.sample.answer) or \
            normalise_answer(traj.final_answer) not in normalise_answer(last_think):
        return "inconsistent_answer"
    return None


def filter_trajectories(trajs: Sequence[AgentTrajectory]) -> tuple[list[AgentTrajectory], Counter[str]]:
    """(kept episodes, rejected counts by reason)."""
    kept, rejected = [], Counter()
    for t in trajs:
        reason = rejection_reason(t)
        if reason is None:
            kept.append(t)
        else:
            rejected[reason] += 1
    return kept, rejected


def expert_trajectories(tasks: Sequence[Sample], registry: ToolRegistry, *, rollouts: int, flaw_rate: float,
                        seed: int, work_dir: Path, max_turns: int = 4) -> list[AgentTrajectory]:
    """`rollouts` scripted-expert episodes per task through the real loop (real sandbox runs)."""
    rng = random.Random(seed)
    samples, flaws = [], {}
    for task in tasks:
        for k in range(rollouts):
            s = replace(task, id=f"{task.id}~r{k}")
            flaws[s.id] = rng.choice(FLAWS[1:]) if rng.random() < flaw_rate else None
            samples.append(s)
    return run_episodes(ScriptedPolicy(expert_script(flaws)), samples, registry, max_turns=max_turns,
                        work_dir=work_dir)


def observation_perception_samples(n: int, registry: ToolRegistry, *, seed: int = 0, size: int = 896,
                                   work_dir: Path, max_turns: int = 4) -> list[Sample]:
    """Perception data in the agent's protocol: the clean expert on `look_tasks(n)` (real sandbox crops),
    one training sample per episode whose target is the answer turn after the zoomed crop's observation
    (the tool-call turn is context only: `render_training` labels the last assistant turn alone)."""
    tasks = look_tasks(n, seed=seed, size=size)
    trajs = expert_trajectories(tasks, registry, rollouts=1, flaw_rate=0.0, seed=seed, work_dir=work_dir,
                                max_turns=max_turns)
    kept, _ = filter_trajectories(trajs)
    out = []
    for t in kept:
        last = t.training_samples()[-1]
        out.append(replace(last, id=f"{t.sample.id}#answer", meta={**last.meta, "task": "tool_look"}))
    return out


# --------------------------------------------------------------------------------------------- eval


def agent_accuracy(vlm: Any, samples: Sequence[Sample], registry: ToolRegistry, *, max_turns: int = 4,
                   max_new_tokens: int = 96, batch_size: int = 8, work_dir: Path | None = None
                   ) -> tuple[float, list[AgentTrajectory]]:
    """Greedy agent-loop accuracy (normalised answer match) and the episodes."""
    from r1v.rollout.engine import TransformersEngine

    engine = TransformersEngine(vlm)
    was_training = vlm.model.training
    vlm.model.eval()
    trajs: list[AgentTrajectory] = []
    try:
        for start in range(0, len(samples), batch_size):
            trajs += run_episodes(engine, list(samples[start:start + batch_size]), registry, max_turns=max_turns,
                                  params=default_params(max_new_tokens), work_dir=work_dir and work_dir / str(start))
    finally:
        vlm.model.train(was_training)
    correct = [answer_matches(t.final_answer, t.sample.answer) for t in trajs]
    return (sum(correct) / len(correct) if correct else float("nan")), trajs


def with_max_tiles(vlm: Any, max_tiles: int | None) -> Any:
    """`vlm` with its processing spec's tiles per image capped."""
    if max_tiles is None:
        return vlm
    return replace(vlm, spec=replace(vlm.spec, max_tiles=max_tiles, min_tiles=min(vlm.spec.min_tiles, max_tiles)))


# ---------------------------------------------------------------------------------------------- entry points


def episode_record(traj: AgentTrajectory, correct: bool | None = None) -> dict[str, Any]:
    """A JSON-able summary of one episode (turn texts, tool steps, answer, finish)."""
    return {"id": traj.sample.id, "answer": traj.sample.answer, "final_answer": traj.final_answer,
            "correct": correct, "finish": traj.finish, "turns": [{"role": m.role, "content": m.content}
                                                                 for m in traj.turns],
            "steps": [{"turn": s.turn, "name": s.name, "ok": s.ok, "error": s.error, "images": s.num_images}
                      for s in traj.steps]}


def agent_chat(*, model: str, question: str, images: Sequence[Path], max_turns: int = 4, max_new_tokens: int = 256,
               max_tiles: int | None = None, work_dir: Path | None = None, console: Console | None = None
               ) -> AgentTrajectory:
    """`r1v chat --agent`: one greedy agent episode with the code tool, printed turn by turn."""
    from r1v.model.build import load_vlm
    from r1v.processing.images import load_image
    from r1v.rollout.engine import TransformersEngine

    console = console or Console()
    loaded = [load_image(p) for p in images]
    vlm = with_max_tiles(load_vlm(model), max_tiles)
    sample = Sample.from_question("chat", question, images=loaded)
    traj = run_episodes(TransformersEngine(vlm), [sample], default_registry(), max_turns=max_turns,
                        params=default_params(max_new_tokens), work_dir=work_dir)[0]
    for m in traj.turns:
        console.print("[bold cyan]model[/]" if m.role == "assistant" else "[bold yellow]tool[/]")
        console.print(m.content, markup=False, highlight=False)
    console.print(f"[bold green]answer:[/] {traj.final_answer}  [dim](finish: {traj.finish}, "
                  f"{len(traj.steps)} tool steps)[/]")
    return traj


def agent_eval(*, model: str, benchmark: str, data: Path, out: Path, limit: int | None = None, max_turns: int = 4,
               max_new_tokens: int = 256, max_tiles: int | None = None, batch_size: int = 8,
               console: Console | None = None) -> dict[str, Any]:
    """`r1v eval --agent`: agent-loop accuracy on a benchmark's local files, or on the held-out zoom task
    (`--benchmark zoom --data N`: the first N held-out zoom tasks). Writes episodes.jsonl and report.json."""
    import json

    from r1v.data.sources import atomic_write_text
    from r1v.model.build import load_vlm

    console = console or Console()
    if benchmark == "zoom":
        n = int(str(data)) if str(data).isdigit() else 40
        samples = generate_zoom_tasks(min(n, limit or n), split="heldout")
    else:
        from r1v.data.benchmarks import load_benchmark

        samples = load_benchmark(benchmark, data, limit=limit)
    vlm = with_max_tiles(load_vlm(model), max_tiles)
    out.mkdir(parents=True, exist_ok=True)
    _, trajs = agent_accuracy(vlm, samples, default_registry(), max_turns=max_turns, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, work_dir=out / "tool_outputs")
    if benchmark == "zoom":
        correct = [answer_matches(t.final_answer, t.sample.answer) for t in trajs]
    else:
        from r1v.rewards.rules import accuracy_many, columns_of

        scores = accuracy_many([f"\\boxed{{{t.final_answer or ''}}}" for t in trajs],
                               [columns_of(t.sample) for t in trajs])
        correct = [p["accuracy"] >= 1.0 for p in scores]
    atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(episode_record(t, c), default=str) + "\n"
                                                      for t, c in zip(trajs, correct, strict=True)))
    report = {"benchmark": benchmark, "model": model, "n": len(trajs),
              "accuracy": sum(correct) / len(correct) if correct else float("nan"),
              "finish": dict(Counter(t.finish for t in trajs)),
              "tool_calls": sum(len(t.steps) for t in trajs),
              "tool_errors": sum(not s.ok for t in trajs for s in t.steps)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print_table(console, f"agent eval: {benchmark}", ["", "value"], list(report.items()))
    return report
