"""The loop on the tiny InternVL preset through the real processor: the connector policy trains only the connector."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from r1v.data.schema import Message, Sample
from r1v.model.build import build_preset
from r1v.model.parts import apply_policy, part_of
from r1v.processing.processor import Processor
from r1v.train import TrainConfig, sft_objective, train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def _samples(n: int) -> list[Sample]:
    names = list(COLOURS)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        image = Image.new("RGB", (56 + 28 * (i % 3), 56), COLOURS[name])
        out.append(Sample(id=f"s{i}", images=[image], messages=[
            Message("user", "<image>\nWhat colour is the picture?"), Message("assistant", f"It is {name}.")]))
    return out


def test_connector_policy_on_the_tiny_vlm(tmp_path: Path) -> None:
    vlm = build_preset("tiny")
    counts = apply_policy(vlm.model, "connector")
    proc = Processor(vlm.tokenizer, vlm.spec)
    data = [proc.encode_for_training(s) for s in _samples(8)]
    assert all((d["labels"] != -100).any() for d in data)
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, max_steps=4, micro_batch_size=2, grad_accum=2, device="cpu",
                      out_dir=tmp_path, report_to=["jsonl"], progress=False, plots=False, save_every=2)
    res = train(vlm.model, data, sft_objective(), cfg, collate_fn=proc.collate_training)
    assert res.state.step == 4 and torch.isfinite(torch.tensor(res.last_metrics["sft"]))
    changed = {part_of(n) for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"connector"}
    assert all(p.grad is None for n, p in vlm.model.named_parameters() if part_of(n) != "connector")
    from safetensors.torch import load_file

    saved = load_file(str(res.checkpoint / "trainable.safetensors"))
    assert sum(v.numel() for v in saved.values()) == counts["trainable"] == counts["connector"]
