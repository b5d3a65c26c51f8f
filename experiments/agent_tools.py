"""Does the zoom tool help? The smol model on the held-out zoom task, without and with tools.

    nice -n 10 .venv/bin/python experiments/agent_tools.py --json runs/bench/agent_tools.json

Measured side by side in one run, every image at one 112 px tile (`max_tiles=1`):
- direct (base): smol answers the question directly (no thinking), scored by the first shape word it writes;
- direct (SFT): smol fine-tuned with the same steps and tasks on direct answers
  (`<think>The ... part shows a star.</think><answer>star</answer>`), no tools;
- agent (SFT): smol after `agent-sft` on filtered expert trajectories (crop+zoom with the sandboxed `code`
  tool, then answer), running the agent loop with the code tool.
Both SFT runs get the same optimiser steps, batch, learning rate, loss (`--loss`, token-level by default) and
the same `--perception` shape-naming crops at zoom scale (`look_tasks`), each in its own protocol's form: plain
questions for the direct model (`perception_samples`), the answer turn after the crop's observation for the
agent (`observation_perception_samples`), so the only difference is the tool. `ours` = agent (SFT) accuracy,
`baseline` = the better of the two direct accuracies, ratio = ours/baseline. Reported with n, chance (0.25),
Wilson 95% intervals and a paired bootstrap interval of agent - direct; tool calls, first-turn tool calls and
tool errors; and perception on held-out crops in each model's own form (direct SFT: the zoomed crop as a plain
question; agent SFT: its answer turn after the expert's crop observation).
`--json PATH` also writes PATH with suffix .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from r1v.agent.tools import default_registry
from r1v.data.schema import Message, Row
from r1v.data.stage_data import BadSamples, encode_rows
from r1v.data.tool_tasks import CELL_NAMES, crop_box, generate_zoom_tasks, perception_samples
from r1v.model.build import load_vlm
from r1v.model.trainable import build_trainable
from r1v.recipes.agent_sft import (
    AgentSFTConfig,
    agent_accuracy,
    answer_matches,
    expert_trajectories,
    turn_mean_objective,
    with_max_tiles,
)
from r1v.recipes.agent_sft import run as run_agent_sft
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set

SHAPE_WORD = re.compile(r"\b(circle|square|triangle|star)s?\b", re.IGNORECASE)


def first_shape(text: str) -> str | None:
    m = SHAPE_WORD.search(text or "")
    return m.group(1).lower() if m else None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (round((centre - half) / (1 + z * z / n), 3), round((centre + half) / (1 + z * z / n), 3))


def paired_bootstrap(a: list[bool], b: list[bool], reps: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(a) - mean(b) over items resampled together."""
    rng, n = random.Random(seed), len(a)
    diffs = sorted(sum(a[i] - b[i] for i in idx) / n for idx in ([rng.randrange(n) for _ in range(n)]
                                                                  for _ in range(reps)))
    return (round(diffs[int(0.025 * reps)], 3), round(diffs[int(0.975 * reps) - 1], 3))


def held_crops(samples) -> list:
    """Each held-out task's named cell, zoomed as the expert does, asked as a perception question."""
    from r1v.data.schema import Sample
    from r1v.data.tool_tasks import LOOK_QUESTION

    out = []
    for s in samples:
        row, col = s.meta["cell"]
        image = s.images[0].crop(crop_box(s.meta["scene"]["size"], row, col)).resize((224, 224))
        out.append(Sample.from_question(f"{s.id}-crop", LOOK_QUESTION, images=[image], answer=s.answer))
    return out


def direct_correct(vlm, samples, *, think: bool, max_new_tokens: int) -> tuple[list[bool], list[str]]:
    acc, texts = direct_accuracy(vlm, samples, think=think, max_new_tokens=max_new_tokens)
    from r1v.agent.protocol import extract_answer

    return [answer_matches(extract_answer(t) or first_shape(t), s.answer) for t, s in zip(texts, samples,
                                                                                        strict=True)], texts


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


def agent_reading(vlm, samples, work_dir: Path, *, max_new_tokens: int = 40) -> list[bool]:
    """The agent's answer turn after the clean expert's crop of each held-out task (its perception, in its
    own protocol): correct when the answer names the gold shape."""
    from r1v.agent.loop import default_params
    from r1v.agent.protocol import STOP_STRINGS, extract_answer
    from r1v.data.schema import Sample
    from r1v.rollout.engine import TransformersEngine

    trajs = expert_trajectories(samples, default_registry(), rollouts=1, flaw_rate=0.0, seed=0, work_dir=work_dir)
    prompts = []
    for t in trajs:
        last = t.training_samples()[-1]
        prompts.append(Sample(last.id, last.messages[:-1], last.images, last.answer, last.meta))
    engine, params = TransformersEngine(vlm), replace(default_params(max_new_tokens), stop=STOP_STRINGS)
    vlm.model.eval()
    texts = []
    for i in range(0, len(prompts), 8):
        texts += [g[0].text for g in engine.generate(prompts[i:i + 8], params)]
    return [answer_matches(extract_answer(x) or first_shape(x), s.answer) for x, s in zip(texts, samples, strict=True)]


def direct_target(sample) -> str:
    row, col = sample.meta["cell"]
    return (f"<think>\nThe {CELL_NAMES[row][col]} part shows a {sample.answer}.\n</think>\n"
            f"<answer>{sample.answer}</answer>")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=160)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval", type=int, default=40)
    ap.add_argument("--perception", type=int, default=64, help="shape-naming samples mixed into both SFT runs")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/agent_tools"))
    ap.add_argument("--lr", type=float, default=1e-4, help="peak lr of the LLM")
    ap.add_argument("--connector-lr", type=float, default=2e-3, help="peak lr of the connector")
    ap.add_argument("--loss", choices=["token", "turn"], default="token",
                    help="token: token-level SFT; turn: every assistant turn weighs the same (both arms)")
    ap.add_argument("--perception-form", choices=["observation", "plain", "both"], default="both",
                    help="form of the agent arm's perception samples (the direct arm always uses plain crops)")
    ap.add_argument("--show", type=int, default=3, help="print this many completions of each setting")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    console = Console()
    timings = {}
    start, load_start = time.time(), os.getloadavg()
    train_cfg = TrainConfig(out_dir=args.out / "agent_sft", policy="connector+llm", lr=args.lr,
                            connector_lr=args.connector_lr, weight_decay=0.0,
                            warmup_ratio=0.05, schedule="cosine", micro_batch_size=4, grad_accum=2,
                            max_steps=args.steps, precision="fp32", seed=0, report_to=["jsonl"])
    held = generate_zoom_tasks(args.eval, split="heldout")
    crops = held_crops(held)
    looks = perception_samples(args.perception)

    t0 = time.time()
    base = with_max_tiles(load_vlm("smol"), 1)
    base_ok, base_texts = direct_correct(base, held, think=False, max_new_tokens=16)
    timings["direct_base_s"] = round(time.time() - t0, 1)
    del base

    t0 = time.time()
    tasks = generate_zoom_tasks(args.tasks, split="train")
    rows = [Row(replace(s, messages=[*s.messages, Message("assistant", direct_target(s))]), "zoom", i)
            for i, s in enumerate(tasks)] + [Row(s, "perception", s.id) for s in looks]
    vlm, _ = build_trainable("smol", train_cfg.policy)
    vlm = with_max_tiles(vlm, 1)
    from r1v.processing.processor import Processor

    proc = Processor(vlm.tokenizer, vlm.spec)
    encoded = encode_rows(proc, rows, max_seq_len=4096, bad=BadSamples())
    dataset, loop_cfg, _ = grouped_training_set(encoded, replace(train_cfg, out_dir=args.out / "direct_sft"))
    objective = turn_mean_objective() if args.loss == "turn" else sft_objective()
    train(vlm.model, dataset, objective, loop_cfg, collate_fn=collate_groups(proc))
    direct_ok, direct_texts = direct_correct(vlm, held, think=True, max_new_tokens=40)
    direct_look = direct_correct(vlm, crops, think=True, max_new_tokens=40)[0]
    timings["direct_sft_s"] = round(time.time() - t0, 1)
    del vlm

    t0 = time.time()
    # same number of optimiser steps; the agent run sees half as many tasks (two model turns per episode)
    cfg = AgentSFTConfig(model="smol", tasks=args.tasks // 2, rollouts_per_task=2, flaw_rate=0.25, max_tiles=1,
                         max_turns=4, eval_tasks=0, perception=args.perception, perception_form=args.perception_form,
                         turn_mean_loss=args.loss == "turn", train=train_cfg)
    summary = run_agent_sft(cfg, console)
    agent_vlm = with_max_tiles(load_vlm(summary["final"]), 1)
    _, trajs = agent_accuracy(agent_vlm, held, default_registry(),
                              max_turns=4, max_new_tokens=256, work_dir=args.out / "eval_episodes")
    agent_ok = [answer_matches(t.final_answer, t.sample.answer) for t in trajs]
    agent_look = agent_reading(agent_vlm, held, args.out / "reading_episodes")
    timings["agent_sft_s"] = round(time.time() - t0, 1)

    for name, texts in [("direct, base", base_texts), ("direct, SFT", direct_texts)]:
        for s, t in list(zip(held, texts, strict=True))[:args.show]:
            console.print(f"[bold]{name}[/] gold={s.answer}: {t!r}", markup=True, highlight=False)
    for t in trajs[:args.show]:
        console.print(f"[bold]agent[/] gold={t.sample.answer} final={t.final_answer!r} finish={t.finish}",
                      highlight=False)
        for m in t.turns:
            console.print(f"  {m.role}: {m.content!r}", markup=False, highlight=False)
    n = len(held)
    settings = {"direct, base smol": base_ok, "direct, SFT smol (no tools)": direct_ok,
                "agent + code tool, agent-SFT": agent_ok}
    acc = {k: sum(v) / n for k, v in settings.items()}
    rows_out = {k: {"correct": sum(v), "n": n, "accuracy": acc[k], "wilson95": wilson(sum(v), n)}
                for k, v in settings.items()}
    best_direct = max(("direct, base smol", "direct, SFT smol (no tools)"), key=lambda k: acc[k])
    details = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "wall_s": round(time.time() - start, 1),
               "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "lr": args.lr,
               "connector_lr": args.connector_lr,
               "eval_items": n, "train_tasks": args.tasks, "steps": args.steps, "perception": args.perception,
               "loss": args.loss, "perception_form": {"direct SFT": "plain", "agent SFT": args.perception_form},
               "max_tiles": 1, "chance": 0.25, "settings": rows_out,
               "agent_minus_best_direct": round(acc["agent + code tool, agent-SFT"] - acc[best_direct], 3),
               "agent_minus_best_direct_bootstrap95": paired_bootstrap(agent_ok, settings[best_direct]),
               "crop_naming_accuracy": {"direct SFT": sum(direct_look) / n, "agent SFT": sum(agent_look) / n},
               "crop_naming_note": "direct SFT: zoomed crop as a plain question; agent SFT: answer turn after the "
                                   "expert's crop observation",
               "agent_finish": {f: sum(t.finish == f for t in trajs) for f in ("answer", "turn_limit")},
               "agent_tool_calls": sum(bool(s.name) for t in trajs for s in t.steps),
               "agent_first_turn_tool_calls": sum(any(s.turn == 0 and s.name for s in t.steps) for t in trajs),
               "agent_tool_errors": sum(bool(s.name) and not s.ok for t in trajs for s in t.steps),
               "agent_malformed_turns": sum(not s.name for t in trajs for s in t.steps),
               "agent_predictions": {k: sum(t.final_answer == k for t in trajs)
                                     for k in ("circle", "square", "triangle", "star")},
               "agent_trajectories": summary["trajectories"], "timings_s": timings,
               "example_base": base_texts[0], "example_direct_sft": direct_texts[0],
               "example_agent": [m.content for m in trajs[0].turns]}
    baseline = acc[best_direct]
    ours = acc["agent + code tool, agent-SFT"]
    result = {"name": "agent_tools", "unit": "held-out zoom accuracy", "ours": ours, "baseline": baseline,
              "ratio": ours / baseline if baseline else float("inf"), "details": details}
    lines = ["| setting | correct / n | accuracy | Wilson 95% |", "|---|---|---|---|"]
    for k, r in rows_out.items():
        lines.append(f"| {k} | {r['correct']} / {n} | {r['accuracy']:.3f} | {r['wilson95'][0]:.3f}-{r['wilson95'][1]:.3f} |")
    console.print(f"{'setting':<30}{'correct/n':>10}{'accuracy':>10}  Wilson 95%")
    for k, r in rows_out.items():
        console.print(f"{k:<30}{r['correct']:>5}/{n:<4}{r['accuracy']:>10.3f}  {r['wilson95']}")
    console.print(f"agent - best direct ({best_direct}): {details['agent_minus_best_direct']:+.3f}, paired bootstrap "
                  f"95% {details['agent_minus_best_direct_bootstrap95']}; chance 0.25; crop naming "
                  f"{details['crop_naming_accuracy']}; wall {details['wall_s']} s")
    console.print(f"agent tool calls {details['agent_tool_calls']} (first turn: {details['agent_first_turn_tool_calls']}"
                  f"/{n}), tool errors {details['agent_tool_errors']}, malformed turns {details['agent_malformed_turns']}, "
                  f"predictions {details['agent_predictions']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        md = ["# agent_tools: does the zoom tool help? (held-out zoom task)", "", *lines, "",
              f"- agent - best direct ({best_direct}): {details['agent_minus_best_direct']:+.3f}, paired bootstrap 95% "
              f"{details['agent_minus_best_direct_bootstrap95']}; chance 0.25",
              f"- crop naming accuracy (held-out zoomed crops): {details['crop_naming_accuracy']}",
              f"- agent predictions: {details['agent_predictions']}; finish {details['agent_finish']}",
              f"- agent tool calls {details['agent_tool_calls']} ({details['agent_first_turn_tool_calls']} episodes "
              f"called in their first turn), tool errors {details['agent_tool_errors']}, malformed turns "
              f"{details['agent_malformed_turns']}",
              f"- command: `{details['command']}`",
              f"- wall {details['wall_s']} s; loadavg start {load_start}, end {details['loadavg_end']}",
              f"- train tasks {args.tasks}, steps {args.steps} (batch 8), perception {args.perception}, lr {args.lr}, "
              f"loss {args.loss}"]
        args.json.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
