"""Cold-start SFT (R1V Hybrid Optimization, stage 1): supervised fine-tuning on `<think>`-annotated data.

    r1v train sft --config configs/sft.yaml
    r1v train sft --config configs/sft.yaml model=runs/align/final data=data/cot.jsonl train.max_steps=100

The loss is the token cross-entropy on assistant tokens only (the processor's labels mask the prompt and
image tokens; `r1v.train.sft_objective` averages over every label token of an optimiser step). Samples
are encoded once, checked against `max_seq_len`, and grouped into micro-batches of similar length, so
padding costs little. R1V trains only the connector here (`train.policy: connector`); other policies
(`connector+llm`, `full`, `lora`, ...) work the same way.

Writes into `train.out_dir`: `final/` (an HF model folder `load_vlm` reads), `checkpoints/`, `metrics.jsonl`,
`plots/` and `summary.json` (data counts, skipped samples by reason, trainable parameters, last metrics,
optional held-out accuracy before/after).
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
from r1v.model.trainable import build_trainable, export_fn, save_vlm
from r1v.tables import print_table
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set


@dataclass
class SFTConfig:
    """`r1v train sft`: one typed source of truth, validated on load."""

    model: str = "tiny"
    """A preset name (tiny, smol) or a model folder (e.g. the output of `r1v train align`)."""
    data: str = "synthetic:64"
    """Training data: a .jsonl/.json/.parquet file whose samples end with an assistant turn, or
    `synthetic:N` (N rendered tasks with a short `<think>` chain, for micro runs)."""
    image_root: Path | None = None
    """Folder image paths are relative to (default: the data file's folder)."""
    on_bad_sample: BadSamplePolicy = "error"
    """error: stop at the first bad sample (malformed, missing image, over-long); skip: leave it out and count it."""
    max_seq_len: int = 4096
    """Tokens per sample, image tokens included (R1V: 16384)."""
    group_by_length: bool = True
    """Batch samples of similar length together (less padding)."""
    eval_data: str | None = None
    """Optional held-out samples with gold answers; greedy accuracy before and after training."""
    eval_limit: int = 32
    eval_max_new_tokens: int = 128
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir=Path("runs/sft")))

    def validate(self) -> None:
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len: must be >= 8, got {self.max_seq_len}")
        if self.eval_limit < 1 or self.eval_max_new_tokens < 1:
            raise ConfigError("eval_limit and eval_max_new_tokens: must be >= 1")
        self.train.validate()


CONFIG = SFTConfig


def run(cfg: SFTConfig, console: Console | None = None) -> dict:
    """Run the stage; returns the summary written to `train.out_dir/summary.json`."""
    from r1v.processing.processor import Processor

    console = console or Console()
    out = cfg.train.out_dir
    bad = BadSamples(cfg.on_bad_sample)
    rows = read_stage_data(cfg.data, image_root=cfg.image_root, bad=bad)
    vlm, params = build_trainable(cfg.model, cfg.train.policy)
    processor = Processor(vlm.tokenizer, vlm.spec)
    encoded = encode_rows(processor, rows, max_seq_len=cfg.max_seq_len, bad=bad)
    dataset, loop_cfg, batch_stats = grouped_training_set(encoded, cfg.train, group_by_length=cfg.group_by_length)
    console.print(f"sft: {len(encoded)} samples ({len(bad.items)} skipped), {batch_stats['micro_batches']} "
                  f"micro-batches, padding {batch_stats['padding_share']:.1%}, trainable {params['trainable']:,} "
                  f"of {params['total']:,} parameters ({cfg.train.policy})")

    eval_samples = heldout_samples(cfg.eval_data, image_root=cfg.image_root, limit=cfg.eval_limit)
    before = heldout_accuracy(vlm, eval_samples, max_new_tokens=cfg.eval_max_new_tokens)

    result = train(vlm.model, dataset, sft_objective(), loop_cfg, collate_fn=collate_groups(processor),
                   export_fn=export_fn(vlm))
    final = save_vlm(vlm, out / "final")
    after = heldout_accuracy(vlm, eval_samples, max_new_tokens=cfg.eval_max_new_tokens)

    summary = {
        "stage": "sft", "model": cfg.model, "final": str(final), "data": cfg.data,
        "samples": {"read": len(rows), "used": len(encoded), **batch_stats},
        "bad_samples": bad.summary(), "params": params, "steps": result.state.step,
        "last_metrics": result.last_metrics, "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "eval": {"data": cfg.eval_data, "n": len(eval_samples), "accuracy_before": before, "accuracy_after": after},
        "config": to_dict(cfg),
    }
    write_summary(out, summary)
    rows_out = [("samples used / skipped", f"{len(encoded)} / {len(bad.items)}"),
                ("steps", result.state.step), ("last loss", result.last_metrics.get("sft", float("nan")))]
    if eval_samples:
        rows_out += [("held-out accuracy before", before), ("held-out accuracy after", after)]
    print_table(console, f"sft -> {final}", ["", "value"], rows_out)
    return summary
