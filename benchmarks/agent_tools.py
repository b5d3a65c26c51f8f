"""Does the zoom tool help? The smol model on the held-out zoom task, without and with tools.

    nice -n 10 .venv/bin/python benchmarks/agent_tools.py --json runs/bench/agent_tools.json

Measured side by side in one run, every image at one 224 px tile (`max_tiles=1`):
- direct (base): smol answers the question directly (no thinking), scored by the first shape word it writes;
- direct (SFT): smol fine-tuned with the same steps and tasks on direct answers
  (`<think>The ... part shows a star.</think><answer>star</answer>`), no tools;
- agent (SFT): smol after `agent-sft` on filtered expert trajectories (crop+zoom with the sandboxed `code`
  tool, then answer), running the agent loop with the code tool.
`ours` = agent (SFT) accuracy, `baseline` = the better of the two direct accuracies, ratio = ours/baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from r1v.agent.tools import default_registry
from r1v.data.schema import Message
from r1v.data.tool_tasks import CELL_NAMES, generate_zoom_tasks
from r1v.model.build import load_vlm
from r1v.recipes.agent_sft import AgentSFTConfig, agent_accuracy, answer_matches, with_max_tiles
from r1v.recipes.agent_sft import run as run_agent_sft
from r1v.recipes.common import (
    BadSamples,
    Row,
    build_trainable,
    collate_groups,
    encode_rows,
    grouped_training_set,
)
from r1v.train import TrainConfig, sft_objective, train

SHAPE_WORD = re.compile(r"\b(circle|square|triangle|star)s?\b", re.IGNORECASE)


def first_shape(text: str) -> str | None:
    m = SHAPE_WORD.search(text or "")
    return m.group(1).lower() if m else None


def direct_accuracy(vlm, samples, *, think: bool, max_new_tokens: int) -> tuple[float, list[str]]:
    from r1v.agent.protocol import extract_answer
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    engine = TransformersEngine(vlm)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
                            think=think, stop=["</answer>"])
    vlm.model.eval()
    texts = []
    for i in range(0, len(samples), 8):
        texts += [g[0].text for g in engine.generate(samples[i:i + 8], params)]
    preds = [extract_answer(t) or first_shape(t) for t in texts]
    return sum(answer_matches(p, s.answer) for p, s in zip(preds, samples, strict=True)) / len(samples), texts


def direct_target(sample) -> str:
    row, col = sample.meta["cell"]
    return (f"<think>\nThe {CELL_NAMES[row][col]} part shows a {sample.answer}.\n</think>\n"
            f"<answer>{sample.answer}</answer>")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=160)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/agent_tools"))
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--show", type=int, default=3, help="print this many completions of each setting")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    console = Console()
    timings = {}
    start, load_start = time.time(), os.getloadavg()
    train_cfg = TrainConfig(out_dir=args.out / "agent_sft", policy="connector+llm", lr=args.lr, weight_decay=0.0,
                            warmup_ratio=0.05, schedule="cosine", micro_batch_size=4, grad_accum=2,
                            max_steps=args.steps, precision="fp32", seed=0, report_to=["jsonl"])
    held = generate_zoom_tasks(args.eval, split="heldout")

    t0 = time.time()
    base = with_max_tiles(load_vlm("smol"), 1)
    acc_base, base_texts = direct_accuracy(base, held, think=False, max_new_tokens=16)
    timings["direct_base_s"] = round(time.time() - t0, 1)
    del base

    t0 = time.time()
    tasks = generate_zoom_tasks(args.tasks, split="train")
    rows = [Row(replace(s, messages=[*s.messages, Message("assistant", direct_target(s))]), "zoom", i)
            for i, s in enumerate(tasks)]
    vlm, _ = build_trainable("smol", train_cfg.policy)
    vlm = with_max_tiles(vlm, 1)
    from r1v.processing.processor import Processor

    proc = Processor(vlm.tokenizer, vlm.spec)
    encoded = encode_rows(proc, rows, max_seq_len=4096, bad=BadSamples())
    dataset, loop_cfg, _ = grouped_training_set(encoded, replace(train_cfg, out_dir=args.out / "direct_sft"))
    train(vlm.model, dataset, sft_objective(), loop_cfg, collate_fn=collate_groups(proc))
    acc_direct_sft, direct_texts = direct_accuracy(vlm, held, think=True, max_new_tokens=40)
    timings["direct_sft_s"] = round(time.time() - t0, 1)
    del vlm

    t0 = time.time()
    # same number of optimiser steps; the agent run sees half as many tasks (two model turns per episode)
    cfg = AgentSFTConfig(model="smol", tasks=args.tasks // 2, rollouts_per_task=2, flaw_rate=0.25, max_tiles=1,
                         max_turns=4, eval_tasks=0, train=train_cfg)
    summary = run_agent_sft(cfg, console)
    agent_vlm = with_max_tiles(load_vlm(summary["final"]), 1)
    acc_agent, trajs = agent_accuracy(agent_vlm, held, default_registry(),
                                      max_turns=4, max_new_tokens=256, work_dir=args.out / "eval_episodes")
    timings["agent_sft_s"] = round(time.time() - t0, 1)

    tool_calls = sum(len(t.steps) for t in trajs)
    for name, texts in [("direct, base", base_texts), ("direct, SFT", direct_texts)]:
        for s, t in list(zip(held, texts, strict=True))[:args.show]:
            console.print(f"[bold]{name}[/] gold={s.answer}: {t!r}", markup=True, highlight=False)
    for t in trajs[:args.show]:
        console.print(f"[bold]agent[/] gold={t.sample.answer} final={t.final_answer!r} finish={t.finish}",
                      highlight=False)
        for m in t.turns:
            console.print(f"  {m.role}: {m.content!r}", markup=False, highlight=False)
    details = {"command": " ".join(sys.argv), "wall_s": round(time.time() - start, 1),
               "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "lr": args.lr,
               "eval_items": len(held), "train_tasks": args.tasks, "steps": args.steps, "max_tiles": 1,
               "direct_base_accuracy": acc_base, "direct_sft_accuracy": acc_direct_sft,
               "agent_sft_accuracy": acc_agent, "chance": 0.25,
               "agent_finish": {f: sum(t.finish == f for t in trajs) for f in ("answer", "turn_limit")},
               "agent_tool_calls": tool_calls, "agent_tool_errors": sum(not s.ok for t in trajs for s in t.steps),
               "agent_trajectories": summary["trajectories"], "timings_s": timings,
               "example_base": base_texts[0], "example_direct_sft": direct_texts[0],
               "example_agent": [m.content for m in trajs[0].turns]}
    baseline = max(acc_base, acc_direct_sft)
    result = {"name": "agent_tools", "unit": "held-out zoom accuracy", "ours": acc_agent, "baseline": baseline,
              "ratio": acc_agent / baseline if baseline else float("inf"), "details": details}
    console.print(f"{'setting':<28}{'accuracy':>10}")
    for name, acc in [("direct, base smol", acc_base), ("direct, SFT smol (no tools)", acc_direct_sft),
                      ("agent + code tool, agent-SFT", acc_agent)]:
        console.print(f"{name:<28}{acc:>10.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
