"""R1V efficient multimodal transfer (spec 4.1): align the connector on a substitute LLM, then swap.

    r1v train align --config configs/align.yaml
    r1v train align --config configs/align.yaml vision=ckpt/InternViT-6B substitute_llm=ckpt/Qwen2.5-32B-Instruct \
        reasoning_llm=ckpt/DeepSeek-R1-Distill-Qwen-32B data=data/align.jsonl

1. Assemble M' = vision -> fresh connector -> substitute LLM (an instruct model of the same architecture as
   the reasoning LLM) and train ONLY the connector (the policy is fixed to `connector`) on `data`.
2. Swap: M = the same vision tower and trained connector -> reasoning LLM, with no training at all
   (`r1v.model.build.swap_llm`; refused when the hidden sizes or tokenizers do not fit).
3. Report greedy held-out accuracy of M' before and after alignment and of M after the swap (R1V: M' 64.0
   MMMU, M 60.2), as a table and in `summary.json`.

Writes into `train.out_dir`: `aligned/` (M'), `final/` (M, the input of `r1v train sft`), `checkpoints/`,
`metrics.jsonl` and `summary.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.stage_data import BadSamplePolicy, BadSamples, encode_rows, heldout_samples, read_stage_data
from r1v.errors import ConfigError
from r1v.eval.generate import heldout_accuracy
from r1v.model.build import assemble, swap_llm
from r1v.model.trainable import apply_trainable, export_fn, save_vlm
from r1v.tables import print_table
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set


@dataclass
class AlignConfig:
    """`r1v train align`: the parts to join, the alignment data and the optimisation."""

    vision: str = "tiny"
    """Vision tower: a preset name or a vision/VLM checkpoint folder."""
    substitute_llm: str = "tiny"
    """The LLM the connector is trained against (R1V: Qwen2.5-32B-Instruct)."""
    reasoning_llm: str = "tiny"
    """The LLM swapped in afterwards with no training (R1V: DeepSeek-R1-Distill-Qwen-32B)."""
    template: str | None = None
    """Chat template of both models (default: guessed from the tokenizer)."""
    data: str = "synthetic:64"
    """Alignment data (file or `synthetic:N`), samples ending with an assistant turn."""
    eval_data: str | None = "synthetic-heldout:16"
    """Held-out samples with gold answers for the before/after-swap accuracy (null: no evaluation)."""
    eval_limit: int = 32
    eval_max_new_tokens: int = 128
    image_root: Path | None = None
    on_bad_sample: BadSamplePolicy = "error"
    max_seq_len: int = 4096
    group_by_length: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4, out_dir=Path("runs/align")))
    """R1V's MLP initialisation: lr 2e-4 (first pass), weight decay 0.05, warmup 0.03, 1 epoch."""

    def validate(self) -> None:
        if self.train.policy != "connector":
            raise ConfigError(f"train.policy: align trains only the connector; got {self.train.policy!r} "
                              "(use `r1v train sft` to train other parts)")
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len: must be >= 8, got {self.max_seq_len}")
        if self.eval_limit < 1 or self.eval_max_new_tokens < 1:
            raise ConfigError("eval_limit and eval_max_new_tokens: must be >= 1")
        self.train.validate()


CONFIG = AlignConfig


def run(cfg: AlignConfig, console: Console | None = None) -> dict:
    """Align, swap, evaluate; returns the summary written to `train.out_dir/summary.json`."""
    from r1v.processing.processor import Processor

    console = console or Console()
    out = cfg.train.out_dir
    bad = BadSamples(cfg.on_bad_sample)
    rows = read_stage_data(cfg.data, image_root=cfg.image_root, bad=bad)
    substitute = assemble(cfg.vision, cfg.substitute_llm, template=cfg.template, name="aligned")
    params = apply_trainable(substitute, "connector")
    processor = Processor(substitute.tokenizer, substitute.spec)
    encoded = encode_rows(processor, rows, max_seq_len=cfg.max_seq_len, bad=bad)
    dataset, loop_cfg, batch_stats = grouped_training_set(encoded, cfg.train, group_by_length=cfg.group_by_length)

    eval_samples = heldout_samples(cfg.eval_data, image_root=cfg.image_root, limit=cfg.eval_limit)

    def accuracy(vlm) -> float | None:
        return heldout_accuracy(vlm, eval_samples, max_new_tokens=cfg.eval_max_new_tokens)

    untrained = accuracy(substitute)
    console.print(f"align: training the connector ({params['trainable']:,} of {params['total']:,} parameters) "
                  f"against {cfg.substitute_llm} on {len(encoded)} samples ({len(bad.items)} skipped)")
    result = train(substitute.model, dataset, sft_objective(), loop_cfg, collate_fn=collate_groups(processor),
                   export_fn=export_fn(substitute))
    aligned_dir = save_vlm(substitute, out / "aligned")
    aligned = accuracy(substitute)

    swapped = swap_llm(substitute, cfg.reasoning_llm, template=cfg.template)
    swapped.name = "swapped"
    swapped.model.to(next(substitute.model.parameters()).device)  # the new LLM loads on CPU; keep one device
    final = save_vlm(swapped, out / "final")
    after_swap = accuracy(swapped)

    table = [("assembled (substitute LLM, fresh connector)", cfg.substitute_llm, untrained),
             ("aligned (connector trained)", cfg.substitute_llm, aligned),
             ("swapped (reasoning LLM, no training)", cfg.reasoning_llm, after_swap)]
    summary = {
        "stage": "align", "aligned": str(aligned_dir), "final": str(final),
        "parts": {"vision": cfg.vision, "substitute_llm": cfg.substitute_llm, "reasoning_llm": cfg.reasoning_llm},
        "samples": {"read": len(rows), "used": len(encoded), **batch_stats}, "bad_samples": bad.summary(),
        "params": params, "steps": result.state.step, "last_metrics": result.last_metrics,
        "eval": {"data": cfg.eval_data, "n": len(eval_samples), "accuracy_untrained": untrained,
                 "accuracy_aligned": aligned, "accuracy_swapped": after_swap},
        "config": to_dict(cfg),
    }
    write_summary(out, summary)
    print_table(console, f"align -> swap ({len(eval_samples)} held-out samples)", ["model", "LLM", "accuracy"],
                [(m, llm, "-" if acc is None else acc) for m, llm, acc in table])
    return summary
