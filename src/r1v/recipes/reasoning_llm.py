"""The `reasoning-llm` stage: a "reasoning" variant of an LLM by text-only SFT of the whole LLM on `<think>`
step-by-step data (R1V's f_l stands in for DeepSeek-R1-distill at micro scale); writes an LLM folder
(`final/`) that `swap_llm` accepts.

    r1v train reasoning-llm llm=tiny data=text:64 train.max_steps=4

`data`: `text:N` (generated arithmetic, `r1v.data.demo_tasks.text_rows`) or a .jsonl of text-only samples
ending with an assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.demo_tasks import text_rows
from r1v.data.stage_data import BadSamples, encode_rows, read_stage_data
from r1v.errors import ConfigError
from r1v.model.build import load_llm
from r1v.model.vlm import guess_template
from r1v.processing.processor import Processor
from r1v.processing.spec import ProcessingSpec
from r1v.train import TrainConfig, sft_objective, train
from r1v.train.grouping import collate_groups, grouped_training_set


@dataclass
class ReasoningLLMConfig:
    """The built-in `reasoning-llm` step: make a "reasoning" variant of an LLM by text-only SFT on
    `<think>` step-by-step data (R1V's f_l stands in for DeepSeek-R1-distill at micro scale)."""

    llm: str = "tiny"
    """A preset (tiny, smol) or an LLM folder."""
    data: str = "text:64"
    """A .jsonl of text-only samples ending with an assistant turn, or `text:N` (generated arithmetic)."""
    template: str | None = None
    """Chat template (default: the one `assemble` would pick for this LLM)."""
    max_seq_len: int = 512
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, out_dir=Path("runs/reasoning_llm"),
                                                                   policy="full"))
    """`policy` is ignored: the whole LLM trains."""

    def validate(self) -> None:
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len: must be >= 8, got {self.max_seq_len}")
        self.train.validate()


CONFIG = ReasoningLLMConfig


def run(cfg: ReasoningLLMConfig, console: Console | None = None) -> dict:
    """Text-only SFT of the whole LLM; writes an LLM folder (`final/`) `swap_llm` accepts."""
    console = console or Console()
    out = cfg.train.out_dir
    llm, tok = load_llm(cfg.llm)
    template = cfg.template or ("r1v3" if cfg.llm == "tiny" else guess_template(tok))
    if cfg.data.startswith("text:"):
        rows = text_rows(int(cfg.data.split(":")[1]), seed=cfg.train.seed)
    else:
        rows = read_stage_data(cfg.data)
    processor = Processor(tok, ProcessingSpec(template=template))
    bad = BadSamples("error")
    encoded = encode_rows(processor, rows, max_seq_len=cfg.max_seq_len, bad=bad)
    dataset, loop_cfg, stats = grouped_training_set(encoded, cfg.train)
    for p in llm.parameters():
        p.requires_grad_(True)
    console.print(f"reasoning-llm: text-only SFT of {cfg.llm} on {len(encoded)} <think> samples ({template})")
    result = train(llm, dataset, sft_objective(), loop_cfg, collate_fn=collate_groups(processor))
    final = Path(out) / "final"
    llm.eval()
    llm.save_pretrained(final)
    tok.save_pretrained(final)
    summary = {"stage": "reasoning-llm", "llm": cfg.llm, "template": template, "final": str(final),
               "samples": {"used": len(encoded), **stats}, "steps": result.state.step,
               "last_metrics": result.last_metrics, "config": to_dict(cfg)}
    write_summary(Path(out), summary)
    return summary
