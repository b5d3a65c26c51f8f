"""The training loop on a tiny random Qwen2: exact normalisation across accumulation, frozen parts, learning."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from numerics import assert_close_scaled, assert_same_update, params  # noqa: E402
from tiny_run import collate, freeze_embeddings, tiny_dataset, tiny_model  # noqa: E402

from r1v.config import load_config  # noqa: E402
from r1v.errors import ConfigError  # noqa: E402
from r1v.train import TrainConfig, sft_loss, sft_objective, train  # noqa: E402
from r1v.train.loop import count_label_tokens, epoch_order, step_indices  # noqa: E402

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(lr=3e-3, warmup_ratio=0.0, max_steps=3, device="cpu", out_dir=tmp_path, report_to=["jsonl"],
                progress=False, plots=False, seed=3, keep_last=1)
    base.update(kw)
    return TrainConfig(**base)


def test_sft_loss_is_token_mean_cross_entropy() -> None:
    model = tiny_model()
    batch = collate(tiny_dataset(4))
    out = sft_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=-100, reduction="sum")
    assert_close_scaled(out.total, ref)
    assert count_label_tokens(batch) == int((batch["labels"][:, 1:] != -100).sum()) > 0


def test_sft_loss_runs_the_lm_head_only_at_label_positions() -> None:
    """The head sees exactly the label positions of each row (no prompt or padding rows), and loss and
    gradients equal the plain full-logits cross-entropy."""
    model, ref_model = tiny_model(), tiny_model()
    batch = collate(tiny_dataset(4))
    seen: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    out = sft_loss(model, batch)
    handle.remove()
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(1, n_labels, 97)] and n_labels < batch["labels"][:, 1:].numel()
    out.total.backward()
    logits = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=-100, reduction="sum")
    ref.backward()
    assert_close_scaled(out.total, ref)
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert_close_scaled(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("micro,accum", [(2, 2), (1, 4)])
def test_grad_accumulation_matches_one_big_batch(tmp_path: Path, micro: int, accum: int) -> None:
    """Same global batch (4 samples of different lengths) -> same weights, whatever the split."""
    data = tiny_dataset(16)
    ref_model = tiny_model()
    start = params(ref_model)
    train(ref_model, data, sft_objective(), _cfg(tmp_path / "ref", micro_batch_size=4), collate_fn=collate)
    model = tiny_model()
    res = train(model, data, sft_objective(), _cfg(tmp_path / "acc", micro_batch_size=micro, grad_accum=accum),
                collate_fn=collate)
    assert assert_same_update(params(model), params(ref_model), start) > 1e-3  # trained, the same way
    assert res.state.step == 3 and res.state.samples_seen == 12


def test_frozen_parts_get_no_grads_no_state_and_do_not_move(tmp_path: Path) -> None:
    model = tiny_model()
    freeze_embeddings(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train(model, tiny_dataset(16), sft_objective(), _cfg(tmp_path), collate_fn=collate)
    emb = model.model.embed_tokens.weight
    assert emb.grad is None and torch.equal(emb, before["model.embed_tokens.weight"])
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) == sum(p.requires_grad for p in model.parameters())  # every trainable tensor changed
    assert res.checkpoint is not None and (res.checkpoint / "trainable.safetensors").exists()


def test_loss_goes_down(tmp_path: Path) -> None:
    model = tiny_model()
    res = train(model, tiny_dataset(32), sft_objective(),
                _cfg(tmp_path, max_steps=None, epochs=3, micro_batch_size=8, lr=2e-2, warmup_ratio=0.1),
                collate_fn=collate)
    from r1v.train.metrics import read_metrics

    losses = [r["sft"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 12 and res.state.epoch == 2
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert lrs[1] == pytest.approx(2e-2) and lrs[0] < lrs[1] and lrs[-1] < 1e-3  # warmup (2 steps), cosine to ~0


def test_epoch_order_and_sharding_cover_each_sample_once() -> None:
    cfg = TrainConfig(micro_batch_size=2, grad_accum=3)
    order = epoch_order(24, data_seed=1, epoch=0)
    assert sorted(order) == list(range(24)) and order != epoch_order(24, 1, 1)
    seen = [i for step in range(2) for rank in range(2) for mb in step_indices(order, step, cfg, rank, 2) for i in mb]
    assert sorted(seen) == list(range(24))


def test_config_validation_and_small_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lr"):
        load_config(TrainConfig, None, ["lr=-1"])
    with pytest.raises(ConfigError, match="report_to"):
        load_config(TrainConfig, None, ["report_to=[jsonl,mlflow]"])
    cfg = load_config(TrainConfig, None, ["grad_accum=4", "micro_batch_size=2", "precision=bf16"])
    assert cfg.samples_per_step(8) == 64 and cfg.weight_decay == 0.05 and cfg.warmup_ratio == 0.03
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        train(tiny_model(), tiny_dataset(3), sft_objective(), _cfg(tmp_path, micro_batch_size=4), collate_fn=collate)


def test_bf16_mixed_precision_runs_and_keeps_fp32_master(tmp_path: Path) -> None:
    model = tiny_model()
    res = train(model, tiny_dataset(8), sft_objective(), _cfg(tmp_path, precision="bf16", max_steps=2),
                collate_fn=collate)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(res.last_metrics["sft"])


def test_sft_loss_survives_activation_checkpoint_recompute() -> None:
    """FSDP's activation checkpointing recomputes decoder layers in backward; a KV cache built during the
    forward would then be appended to twice (seen on a GPU with configs/accelerate/fsdp2.yaml)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    from r1v.data.schema import Message, Sample
    from r1v.model.build import build_preset
    from r1v.processing.processor import Processor
    from r1v.train.loop import sft_loss

    vlm = build_preset("tiny")
    apply_activation_checkpointing(vlm.model, check_fn=lambda m: isinstance(m, Qwen2DecoderLayer))
    proc = Processor(vlm.tokenizer, vlm.spec)
    s = Sample("a", [Message("user", "2+2?"), Message("assistant", "<think>\nadd\n</think>\n\\boxed{4}")])
    batch = proc.collate_training([proc.encode_for_training(s)])
    out = sft_loss(vlm.model, batch)
    out.total.backward()
    grads = [p.grad for p in vlm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
