"""A tiny training run used by the train tests (run as a script or imported).

    python tests/train/tiny_run.py OUT_DIR [--steps 10] [--save-every 2] [--resume] [--sleep 0.0]
        [--micro 2] [--accum 1] [--dropout 0.1] [--precision fp32] [--model torch|qwen2]

A small plain-torch LM (`--model torch`, the default: starts fast) or a random 2-layer Qwen2
(`--model qwen2`), both with dropout so RNG restoring matters, learns random token
sequences whose first few tokens are a masked prompt. Final trainable weights go to OUT_DIR/final.safetensors.
Under `accelerate launch` / torchrun it runs data-parallel.
"""

from __future__ import annotations

import argparse
import time
from collections import namedtuple
from pathlib import Path

import torch

from r1v.train import TrainConfig, sft_objective, train

VOCAB = 97


def tiny_model(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attention_dropout=dropout, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    return Qwen2ForCausalLM(config)


Output = namedtuple("Output", ["logits"])  # a tuple, so DDP can find the output tensors (unused-parameter search)


class TinyLM(torch.nn.Module):
    """A plain-torch causal LM (no transformers import, so subprocesses start fast): each position sees
    itself and the previous token; dropout makes the RNG state matter."""

    def __init__(self, dropout: float = 0.0, seed: int = 0, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = torch.nn.Embedding(VOCAB, width)
        self.mix = torch.nn.Linear(2 * width, width)
        self.norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(2 * width, width))
        self.lm_head = torch.nn.Linear(width, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):  # noqa: ARG002
        x = self.embed_tokens(input_ids)  # [B, T, D]
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        h = self.mix(torch.cat([x, prev], dim=-1))
        h = h + self.mlp(self.norm(h))
        return Output(logits=self.lm_head(h))


def tiny_dataset(n: int = 48, seed: int = 1) -> list[dict]:
    """Variable-length samples: a 3..5-token prompt (label -100) then an answer that is learnable."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(8, 17, (1,), generator=gen))
        ids = torch.randint(3, VOCAB, (length,), generator=gen)
        ids[length // 2:] = (ids[: length - length // 2] * 7) % VOCAB  # second half is a function of the first
        prompt = int(torch.randint(3, 6, (1,), generator=gen))
        labels = ids.clone()
        labels[:prompt] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def collate(items: list[dict]) -> dict:
    """Right padding with pad id 0, labels -100, attention mask."""
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = x["input_ids"], x["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def freeze_embeddings(model: torch.nn.Module) -> None:
    """A stand-in for a trainable-part policy: the input embeddings stay frozen."""
    inner = getattr(model, "model", model)
    inner.embed_tokens.weight.requires_grad_(False)


def run(out: Path, steps: int = 10, save_every: int = 2, resume: bool = False, sleep: float = 0.0, micro: int = 2,
        accum: int = 1, dropout: float = 0.1, precision: str = "fp32", lr: float = 3e-3, model: str = "torch") -> None:
    """One run on one thread (so in-process and subprocess runs do the same float arithmetic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = tiny_model(dropout) if model == "qwen2" else TinyLM(dropout)
        freeze_embeddings(net)
        cfg = TrainConfig(lr=lr, warmup_ratio=0.1, max_steps=steps, save_every=save_every, keep_last=2,
                          micro_batch_size=micro, grad_accum=accum, precision=precision, device="cpu", out_dir=out,
                          resume=resume, report_to=["jsonl"], progress=False, plots=False, seed=5)

        def on_step(state, metrics):
            state.extra["loss_sum"] = state.extra.get("loss_sum", 0.0) + metrics["sft"]
            if sleep:
                time.sleep(sleep)

        result = train(net, tiny_dataset(), sft_objective(), cfg, collate_fn=collate, on_step=on_step)
        from accelerate import PartialState

        if PartialState().is_main_process:
            from safetensors.torch import save_file

            weights = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
            save_file(weights, str(out / "final.safetensors"))
            (out / "final_extra.txt").write_text(repr(result.state.extra["loss_sum"]))
            print(f"done step={result.state.step} loss={result.last_metrics['sft']:.6f}", flush=True)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step (to be killed)")
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--model", choices=["torch", "qwen2"], default="torch")
    args = vars(ap.parse_args())
    run(args.pop("out"), **args)


if __name__ == "__main__":
    main()
