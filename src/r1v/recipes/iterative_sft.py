"""Iterative SFT (R1V Hybrid Optimization, stage 2, spec 4.2): T rounds over reward-filtered data + errors.

    r1v train iterative-sft --config configs/iterative_sft.yaml
    r1v train iterative-sft --config configs/iterative_sft.yaml model=runs/sft/final data=data/d.jsonl rounds=4

Round t (t = 1..T) fine-tunes M_{t-1} into M_t on

    D_t = { x in D : RM(x) >= tau_t }  U  E_{t-1},     E_{t-1} = { x in D : answer(M_{t-1}(x)) != gold(x) }

with tau = 2, 3, 4, 5 and lr 1e-4 for t = 1, then 2e-5 (R1V's defaults). RM scores (0..5) come from a
data column (`rm_column`, default `rm_score`) or from a pluggable scorer `scorer: file.py:function`
(`function(sample) -> float`). E_{t-1} is found by generating a greedy answer with M_{t-1} for every item
of D, extracting the final answer and verifying it against the gold answer (the rewards' verifiers).

Writes into `train.out_dir`: `round_<t>/` (M_t, an HF folder), `runs/round_<t>/` (checkpoints, metrics),
`data/round_<t>.json` (ids of D_t and E_{t-1}), `accuracy.png` and `summary.json` with the per-round table
(|D_rm|, |E_{t-1}|, |D_t|, lr, accuracy on D, held-out accuracy). With `train.resume: true` finished rounds
are loaded from `round_<t>/` and an interrupted round continues from its last checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v import distributed as dist
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Sample
from r1v.data.sources import atomic_write_text
from r1v.data.stage_data import (
    BadSamplePolicy,
    BadSamples,
    Encoded,
    encode_rows,
    heldout_samples,
    read_stage_data,
)
from r1v.errors import ConfigError, DataError
from r1v.eval.generate import heldout_accuracy, judge
from r1v.model.build import R1V_JSON, load_vlm
from r1v.model.trainable import apply_trainable, build_trainable, save_vlm
from r1v.plugins import load_callable
from r1v.tables import print_table
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set

RM_MAX = 5.0


@dataclass
class IterativeSFTConfig:
    """`r1v train iterative-sft`: rounds, thresholds, learning rates, scorer and generation settings."""

    model: str = "tiny"
    """M_0: a preset or model folder (R1V: the output of stage-1 SFT)."""
    data: str = "synthetic:64"
    """D: a data file (samples end with an assistant turn and carry a gold `answer`) or `synthetic:N`."""
    image_root: Path | None = None
    on_bad_sample: BadSamplePolicy = "error"
    max_seq_len: int = 4096
    group_by_length: bool = True
    rounds: int = 4
    """T, the number of rounds."""
    tau: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0])
    """RM threshold of each round (one per round)."""
    lr_per_round: list[float] = field(default_factory=lambda: [1e-4, 2e-5])
    """Learning rate of round t; the last value repeats for later rounds (R1V: 1e-4, then 2e-5)."""
    rm_column: str = "rm_score"
    """The data column with RM(x) in 0..5 (used when `scorer` is null)."""
    scorer: str | None = None
    """A pluggable RM: `path/file.py:function` or `module:function`, called as function(sample) -> 0..5."""
    include_errors: bool = True
    """Add E_{t-1} (items M_{t-1} answers wrongly) to D_t."""
    judge_last: bool = True
    """Judge M_T on D too, for the table's last "acc on D" (one more generation pass over D; false skips it)."""
    gen_max_new_tokens: int = 256
    """Generation budget when judging M_{t-1} on D (and on eval_data)."""
    gen_batch_size: int = 8
    eval_data: str | None = None
    """Optional held-out samples with gold answers, judged after every round."""
    eval_limit: int = 32
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/iterative_sft")))
    """Shared optimisation settings; `lr` is replaced by `lr_per_round` in every round, and `connector_lr`
    (when set) is round 1's connector lr, scaled with `lr_per_round` so the two groups keep their ratio."""

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be >= 1, got {self.rounds}")
        if len(self.tau) != self.rounds:
            raise ConfigError(f"tau: needs one threshold per round ({self.rounds}), got {self.tau}")
        if not self.lr_per_round or any(lr <= 0 for lr in self.lr_per_round):
            raise ConfigError(f"lr_per_round: needs positive learning rates, got {self.lr_per_round}")
        if self.gen_max_new_tokens < 1 or self.gen_batch_size < 1 or self.eval_limit < 1:
            raise ConfigError("gen_max_new_tokens, gen_batch_size and eval_limit: must be >= 1")
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len: must be >= 8, got {self.max_seq_len}")
        self.train.validate()

    def lr(self, t: int) -> float:
        """The learning rate of round t (1-based)."""
        return self.lr_per_round[min(t, len(self.lr_per_round)) - 1]

    def connector_lr(self, t: int) -> float | None:
        """The connector's own learning rate in round t: `train.connector_lr` times lr(t) / lr(1)."""
        if self.train.connector_lr is None:
            return None
        return self.train.connector_lr * self.lr(t) / self.lr(1)


CONFIG = IterativeSFTConfig


def difficulty_score(sample: Sample) -> float:
    """A stand-in RM for rendered tasks: difficulty 1, 2, 3 -> 3, 4, 5 (a `scorer` for micro runs)."""
    return float(sample.meta.get("difficulty", 1)) + 2.0


def round_data(scores: Sequence[float], tau: float, errors: set[int]) -> tuple[list[int], set[int]]:
    """(sorted indices of D_t = {i : scores[i] >= tau} U errors, the indices of D_rm)."""
    d_rm = {i for i, s in enumerate(scores) if s >= tau}
    return sorted(d_rm | errors), d_rm


def rm_scores(encoded: list[Encoded], scorer: Callable[[Sample], Any] | None, column: str,
              bad: BadSamples) -> tuple[list[Encoded], list[float]]:
    """RM(x) for every item (0..5); an item without a usable score is bad input (error or skip)."""
    keep, scores = [], []
    for e in encoded:
        s = e.row.sample
        raw = scorer(s) if scorer is not None else s.meta.get(column)
        where = {"source": e.row.source, "record": e.row.record, "field": column if scorer is None else "scorer"}
        try:
            value = float(raw)
        except (TypeError, ValueError):
            bad.handle(DataError(f"sample {s.id!r}: RM score {raw!r} is not a number", **where), "rm_score")
            continue
        if not 0.0 <= value <= RM_MAX or math.isnan(value):
            bad.handle(DataError(f"sample {s.id!r}: RM score {value} outside 0..{RM_MAX:g}", **where), "rm_score")
            continue
        keep.append(e)
        scores.append(value)
    return keep, scores


def plot_rounds(rounds: list[dict], path: Path) -> Path:
    """Accuracy on D and held-out accuracy per round as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [r["round"] for r in rounds]
    for key, label in (("train_accuracy", "accuracy on D"), ("heldout_accuracy", "held-out accuracy")):
        ys = [r.get(key) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xlabel("round (0 = M_0)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(xs)
    ax.legend()
    ax.set_title("iterative SFT")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_round(vlm: Any, folder: Path) -> None:
    """The round's model folder, written by the main process while the others wait."""
    if dist.world_info()[0] == 0:
        save_vlm(vlm, folder)
    dist.barrier()


def run(cfg: IterativeSFTConfig, console: Console | None = None) -> dict:
    """Run T rounds; returns the summary written to `train.out_dir/summary.json`."""
    from r1v.processing.processor import Processor

    console = console or Console()
    out = cfg.train.out_dir
    main = dist.ensure_process_group()[0] == 0  # the judge passes split the items over the processes
    bad = BadSamples(cfg.on_bad_sample)
    rows = read_stage_data(cfg.data, image_root=cfg.image_root, bad=bad)
    vlm, params = build_trainable(cfg.model, cfg.train.policy)
    processor = Processor(vlm.tokenizer, vlm.spec)
    scorer = load_callable(cfg.scorer) if cfg.scorer else None
    encoded, scores = rm_scores(encode_rows(processor, rows, max_seq_len=cfg.max_seq_len, bad=bad), scorer,
                                cfg.rm_column, bad)
    if not encoded:
        raise DataError(f"{cfg.data}: no usable samples ({len(bad.items)} skipped)")
    items = [e.row.sample for e in encoded]
    eval_samples = heldout_samples(cfg.eval_data, image_root=cfg.image_root, limit=cfg.eval_limit)

    def heldout(model_vlm) -> float | None:
        return heldout_accuracy(model_vlm, eval_samples, max_new_tokens=cfg.gen_max_new_tokens,
                                batch_size=cfg.gen_batch_size)

    history: list[dict] = [{"round": 0, "model": cfg.model, "heldout_accuracy": heldout(vlm)}]
    for t in range(1, cfg.rounds + 1):
        judged = judge(vlm, items, max_new_tokens=cfg.gen_max_new_tokens, batch_size=cfg.gen_batch_size)
        history[-1]["train_accuracy"] = judged.accuracy
        errors = judged.wrong if cfg.include_errors else set()
        tau, lr, connector_lr = cfg.tau[t - 1], cfg.lr(t), cfg.connector_lr(t)
        chosen, d_rm = round_data(scores, tau, errors)
        if main:
            atomic_write_text(out / "data" / f"round_{t}.json", json.dumps(
                {"round": t, "tau": tau, "d_t": [items[i].id for i in chosen],
                 "errors": sorted(items[i].id for i in errors)}, indent=1) + "\n")
        record: dict[str, Any] = {"round": t, "tau": tau, "lr": lr, "connector_lr": connector_lr,
                                  "d_rm": len(d_rm), "errors_prev": len(errors), "errors_only": len(errors - d_rm),
                                  "d_t": len(chosen), "steps": 0, "loss": None}
        round_dir = out / f"round_{t}"
        round_cfg = replace(cfg.train, lr=lr, connector_lr=connector_lr, out_dir=out / "runs" / f"round_{t}",
                            seed=cfg.train.seed + t)
        if cfg.train.resume and (round_dir / R1V_JSON).exists():
            vlm = load_vlm(round_dir)
            apply_trainable(vlm, cfg.train.policy)
            record["resumed"] = True
        elif len(chosen) < cfg.train.samples_per_step():
            record["note"] = f"D_t has {len(chosen)} items, fewer than one optimiser step: no training"
            save_round(vlm, round_dir)
        else:
            dataset, loop_cfg, stats = grouped_training_set([encoded[i] for i in chosen], round_cfg,
                                                            group_by_length=cfg.group_by_length)
            result = train(vlm.model, dataset, sft_objective(), loop_cfg, collate_fn=collate_groups(processor))
            record.update(steps=result.state.step, loss=result.last_metrics.get("sft"),
                          padding_share=stats["padding_share"])
            save_round(vlm, round_dir)
        record.update(model=str(round_dir), heldout_accuracy=heldout(vlm))
        history.append(record)
        console.print(f"iterative-sft round {t}/{cfg.rounds}: tau {tau:g}, |D_rm| {len(d_rm)}, "
                      f"|E_{t - 1}| {len(errors)}, |D_t| {len(chosen)}, lr {lr:g}, steps {record['steps']}")
    if cfg.judge_last:
        history[-1]["train_accuracy"] = judge(vlm, items, max_new_tokens=cfg.gen_max_new_tokens,
                                              batch_size=cfg.gen_batch_size).accuracy

    plot = plot_rounds(history, out / "accuracy.png") if main else out / "accuracy.png"
    summary = {"stage": "iterative-sft", "model": cfg.model, "final": history[-1]["model"],
               "samples": {"read": len(rows), "used": len(encoded)}, "bad_samples": bad.summary(),
               "params": params, "rounds": history, "plot": str(plot), "config": to_dict(cfg)}
    if main:
        write_summary(out, summary)

    def cell(v: Any) -> Any:
        return "-" if v is None else v

    print_table(console, "iterative SFT: accuracy per round",
                ["round", "tau", "|D_rm|", "|E_t-1|", "|D_t|", "lr", "steps", "acc on D", "held-out acc"],
                [(r["round"], cell(r.get("tau")), cell(r.get("d_rm")), cell(r.get("errors_prev")), cell(r.get("d_t")),
                  cell(r.get("lr")), cell(r.get("steps")), cell(r.get("train_accuracy")), cell(r.get("heldout_accuracy")))
                 for r in history])
    return summary
