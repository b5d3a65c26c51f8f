"""Reward model (Skywork-VL Reward, spec section 5): the VLM with a scalar head, Bradley-Terry on pairs.

    r1v train rm --config configs/rm.yaml
    r1v train rm --config configs/rm.yaml model=runs/sft/final data=pairs.jsonl train.max_steps=200

Each pair (a prompt with a chosen and a rejected answer, the same files `r1v train mpo` reads) is scored
twice: score = `Linear(hidden, 1)` on the final hidden state of the last answer token (the end-of-turn
token closing the answer). Loss `-log sigmoid(r_chosen - r_rejected)` averaged over pairs; ties (identical
texts, or equal given scores) are removed first. The vision tower stays frozen: `train.policy` is
`connector+llm` (Skywork-VL Reward: projector + LLM + head) or `connector`; the head always trains.

Writes into `train.out_dir`: `final/` (a reward model folder: `r1v.rewards.reward_model.RewardModel.load`
reads it, and so do GRPO's hybrid reward, MPO pair building and iterative SFT), `checkpoints/` (each
with a loadable `model/`), `metrics.jsonl` and `summary.json` (pair accuracy before/after on the training
pairs and on optional held-out pairs).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from r1v.algos.losses import bradley_terry_loss
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.pairs import PairRow, filter_pairs, read_pairs
from r1v.data.stage_data import BadSamplePolicy, BadSamples
from r1v.errors import ConfigError, DataError, R1VError
from r1v.model.trainable import apply_trainable
from r1v.rewards.reward_model import RewardModel, last_answer_index, with_answer
from r1v.tables import print_table
from r1v.train import LossOutput, Objective, TrainConfig, train

RM_POLICIES = ("connector+llm", "connector")


@dataclass
class RMConfig:
    """`r1v train rm`: pairs, policy (vision always frozen) and training settings."""

    model: str = "tiny"
    """A preset name or a model folder (the reward model's backbone)."""
    data: str = "synthetic:32"
    """A pairs file (.jsonl/.json/.parquet with chosen/rejected columns) or `synthetic:N`."""
    eval_data: str | None = None
    """Optional held-out pairs: pair accuracy before and after training."""
    image_root: Path | None = None
    on_bad_sample: BadSamplePolicy = "error"
    max_seq_len: int = 4096
    seed: int = 0
    """Seed of the head's initialisation."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir=Path("runs/rm"), lr=1e-5, weight_decay=0.0, policy="connector+llm", micro_batch_size=1))

    def validate(self) -> None:
        if self.train.policy not in RM_POLICIES:
            raise ConfigError(f"train.policy: the reward model keeps the vision tower frozen; choose one of "
                              f"{', '.join(RM_POLICIES)}, got {self.train.policy!r}")
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len: must be >= 8, got {self.max_seq_len}")
        self.train.validate()


CONFIG = RMConfig


def encode_rm_pairs(processor, rows: Sequence[PairRow], *, max_seq_len: int, bad: BadSamples) -> list[dict]:
    """Each pair -> {"chosen": encoded, "rejected": encoded} (processor training encodings)."""
    out = []
    for r in rows:
        where = {"source": r.source, "record": r.record}
        try:
            enc = {k: processor.encode_for_training(with_answer(r.pair.sample, getattr(r.pair, k)))
                   for k in ("chosen", "rejected")}
        except R1VError as e:
            bad.handle(DataError(f"cannot encode pair {r.pair.sample.id!r}: {e}", **where), "encode")
            continue
        longest = max(len(e["input_ids"]) for e in enc.values())
        if longest > max_seq_len:
            bad.handle(DataError(f"pair {r.pair.sample.id!r} has {longest} tokens, more than max_seq_len "
                                 f"{max_seq_len}", field="chosen", **where), "too_long")
            continue
        out.append(enc)
    return out


def collate_rm(processor) -> Callable[[list[dict]], dict]:
    """Pairs -> one right-padded batch of 2P rows (chosen rows first) with `score_index`."""
    def collate(items: list[dict]) -> dict:
        rows = [it["chosen"] for it in items] + [it["rejected"] for it in items]
        batch = processor.collate_training(rows)
        batch["score_index"] = last_answer_index(batch["labels"])
        batch["pairs"] = len(items)
        return batch
    return collate


def _scores(net: nn.Module, batch: dict) -> torch.Tensor:
    return net(batch["input_ids"], batch["attention_mask"], batch["score_index"], batch.get("pixel_values"))


def bt_objective() -> Objective:
    """Summed Bradley-Terry loss over a micro-batch's pairs (units = pairs)."""
    def loss(net: nn.Module, batch: dict) -> LossOutput:
        scores = _scores(net, batch)  # [2P]
        p = batch["pairs"]
        value, m = bradley_terry_loss(scores[:p], scores[p:])
        return LossOutput(total=value * p, metrics={"accuracy": m["accuracy"] * p, "margin": m["margin_mean"] * p})
    return Objective(loss=loss, units=lambda b: int(b["pairs"]), name="bt")


@torch.no_grad()
def pair_accuracy(rm: RewardModel, rows: Sequence[PairRow]) -> float:
    """Share of pairs the reward model orders correctly (chosen scored above rejected)."""
    if not rows:
        return math.nan
    samples = [r.pair.sample for r in rows]
    chosen = rm.score(samples, [r.pair.chosen for r in rows])
    rejected = rm.score(samples, [r.pair.rejected for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)


def run(cfg: RMConfig, console: Console | None = None) -> dict:
    """Train the reward model; returns the summary written to `train.out_dir/summary.json`."""
    from r1v.model.build import load_vlm

    console = console or Console()
    out = cfg.train.out_dir
    bad = BadSamples(cfg.on_bad_sample)
    counts: Counter[str] = Counter()
    rows = filter_pairs(read_pairs(cfg.data, image_root=cfg.image_root, bad=bad), -math.inf, counts,
                        drop_score_ties=True)
    held = read_pairs(cfg.eval_data, image_root=cfg.image_root) if cfg.eval_data else []
    vlm = load_vlm(cfg.model)
    params = apply_trainable(vlm, cfg.train.policy)
    rm = RewardModel.from_vlm(vlm, seed=cfg.seed)
    params["trainable"] += sum(p.numel() for p in rm.net.head.parameters())
    items = encode_rm_pairs(rm.processor, rows, max_seq_len=cfg.max_seq_len, bad=bad)
    if len(items) < cfg.train.samples_per_step():
        raise DataError(f"only {len(items)} usable pairs: fewer than one optimiser step of micro_batch_size "
                        f"{cfg.train.micro_batch_size} x grad_accum {cfg.train.grad_accum}", source=cfg.data)
    before = {"train": pair_accuracy(rm, rows), "heldout": pair_accuracy(rm, held) if held else None}
    console.print(f"rm: {len(items)} pairs ({len(bad.items)} bad, {counts.get('tie', 0)} ties removed), trainable "
                  f"{params['trainable']:,} of {params['total'] + rm.net.head.weight.numel() + 1:,} "
                  f"({cfg.train.policy} + head)")

    def export(_model: nn.Module, folder: Path) -> None:
        rm.save(folder)

    result = train(rm.net, items, bt_objective(), cfg.train, collate_fn=collate_rm(rm.processor), export_fn=export)
    rm.net.to("cpu")
    final = rm.save(out / "final")
    after = {"train": pair_accuracy(rm, rows), "heldout": pair_accuracy(rm, held) if held else None}
    summary = {
        "stage": "rm", "model": cfg.model, "final": str(final), "data": cfg.data,
        "pairs": {"read": len(rows) + counts.get("tie", 0), "used": len(items), "ties_removed": counts.get("tie", 0)},
        "bad_samples": bad.summary(), "params": params, "steps": result.state.step,
        "accuracy_before": before, "accuracy_after": after, "last_metrics": result.last_metrics,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None, "config": to_dict(cfg),
    }
    write_summary(out, summary)
    print_table(console, f"rm -> {final}", ["", "value"], [
        ("pairs", len(items)), ("steps", result.state.step), ("last loss", result.last_metrics.get("bt", math.nan)),
        ("train pair accuracy before / after", f"{before['train']:.3f} / {after['train']:.3f}")])
    return summary
