"""Shared-prompt training forwards: same logits and gradients as whole rows, each prompt run once."""

from __future__ import annotations

import pytest
import torch

from r1v.algos.prefix import completion_logits_shared
from r1v.data.schema import Sample
from r1v.model.build import build_preset
from r1v.processing.processor import Processor
from r1v.recipes.common import apply_trainable
from r1v.recipes.grpo import RolloutItem, collate, completion_logits


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    v = build_preset("tiny")
    apply_trainable(v, "full")
    return v


def _batch(vlm):
    proc = Processor(vlm.tokenizer, vlm.spec)
    a = Sample.from_question("a", "What is two plus two, please?")
    b = Sample.from_question("b", "Hi.")  # shorter: left padding in the prompt block
    comps = [[5, 6, 7, 8], [9, 10], [11], [12, 13, 14], [15, 16, 17, 18], [19]]
    items = [RolloutItem(s, c, truncated=False) for s, c in zip([a, a, a, b, b, b], comps, strict=True)]
    return collate(proc, items, [1.0, -1.0, 0.5, 0.2, -0.3, 0.1], think=False, pad_id=0, mask_truncated=False)


def _whole(model, batch):
    width = batch["completion_ids"].shape[1]
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=False, logits_to_keep=width + 1).logits[:, :-1]


def _grads(model, logits, batch):
    from r1v.algos.losses import selective_log_softmax

    model.zero_grad(set_to_none=True)
    w = torch.linspace(-1, 1, logits.shape[0])[:, None]
    (selective_log_softmax(logits, batch["completion_ids"]) * batch["completion_mask"] * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prompt_logits_and_grads_equal_whole_rows(vlm) -> None:
    model = vlm.model.train()
    batch = _batch(vlm)
    seen: list[int] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(next(kw[k] for k in ("inputs_embeds", "input_ids") if kw.get(k) is not None
                                               ).shape[0]), with_kwargs=True)
    try:
        shared = completion_logits(model, batch)
    finally:
        hook.remove()
    assert seen == [2, 6]  # the 2 distinct prompts once, then the completions of all 6 rows
    whole = _whole(model, batch)
    m = batch["completion_mask"].bool()
    torch.testing.assert_close(shared[m], whole[m], rtol=1e-4, atol=1e-4)
    g_shared, g_whole = _grads(model, shared, batch), _grads(model, _whole(model, batch), batch)
    assert g_shared.keys() == g_whole.keys() and len(g_shared) > 10
    for name in g_whole:
        torch.testing.assert_close(g_shared[name], g_whole[name], rtol=1e-3, atol=1e-5, msg=name)


def test_shared_prompt_falls_back_when_nothing_is_shared(vlm) -> None:
    b = _batch(vlm)
    rows = torch.tensor([0, 3])
    out = completion_logits_shared(vlm.model, b["input_ids"][rows], b["attention_mask"][rows],
                                   b["position_ids"][rows], b["prompt_len"])
    assert out is None
    vlm.model.model.language_model.gradient_checkpointing = True
    try:
        assert completion_logits_shared(vlm.model, b["input_ids"], b["attention_mask"], b["position_ids"],
                                        b["prompt_len"]) is None
    finally:
        vlm.model.model.language_model.gradient_checkpointing = False
