"""Shared-prompt training forwards and the head on real tokens only: same values and gradients as whole
rows with the LM head everywhere."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_scaled
from PIL import Image

from r1v.algos.logprobs import completion_logits, completion_logps
from r1v.algos.losses import logprobs_and_entropy
from r1v.algos.prefix import (
    completion_hidden,
    completion_hidden_shared,
    completion_logits_shared,
    length_buckets,
    split_head,
)
from r1v.data.schema import Sample
from r1v.model.build import build_preset
from r1v.model.trainable import apply_trainable
from r1v.processing.processor import Processor
from r1v.rollout.batch import RolloutItem, training_batch

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    v = build_preset("tiny")
    apply_trainable(v, "full")
    return v


def _batch(vlm, images: bool = False):
    proc = Processor(vlm.tokenizer, vlm.spec)
    img = [Image.new("RGB", (28, 28), "white")] if images else None
    a = Sample.from_question("a", "What is two plus two, please?")
    b = Sample.from_question("b", "Hi.", images=img)  # shorter: left padding in the prompt block
    comps = [[5, 6, 7, 8], [9, 10], [11], [12, 13, 14], [15, 16, 17, 18], [19]]
    items = [RolloutItem(p, c, truncated=False) for p, c in zip([0, 0, 0, 1, 1, 1], comps, strict=True)]
    return training_batch(proc, [[a, b][it.prompt] for it in items], items, [1.0, -1.0, 0.5, 0.2, -0.3, 0.1],
                          think=False, pad_id=0, mask_truncated=False)


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
    assert_close_scaled(shared[m], whole[m])
    g_shared, g_whole = _grads(model, shared, batch), _grads(model, _whole(model, batch), batch)
    assert g_shared.keys() == g_whole.keys() and len(g_shared) > 10
    for name in g_whole:
        assert_close_scaled(g_shared[name], g_whole[name], msg=name)


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


def _whole_stats(model, batch):
    """The reference: whole rows, LM head on every position, then the masked log-probs and entropy."""
    kwargs = {}
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"]
    width = batch["completion_ids"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False, logits_to_keep=width + 1,
                   **kwargs).logits[:, :-1]
    return logprobs_and_entropy(logits, batch["completion_ids"], batch["completion_mask"])


def _stats_and_grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    logp, ent = fn(model, batch)
    w = torch.linspace(-1, 1, logp.shape[0])[:, None]
    (logp * w).sum().backward()
    return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", ["shared", "whole_rows", "images"])
def test_head_on_real_tokens_equals_full_head(vlm, case) -> None:
    model = vlm.model.train()
    batch = _batch(vlm, images=case == "images")
    lm = model.model.language_model
    lm.gradient_checkpointing = case == "whole_rows"  # no shared prompt: whole rows through the backbone
    assert (batch["pixel_values"] is not None) == (case == "images")
    head_rows: list[int] = []
    lm_rows: list[int] = []
    hooks = [model.lm_head.register_forward_hook(lambda mod, args, out: head_rows.append(args[0].shape[0])),
             lm.register_forward_pre_hook(lambda mod, args, kw: lm_rows.append(
                 next(kw[k] for k in ("inputs_embeds", "input_ids") if kw.get(k) is not None).shape[0]),
                 with_kwargs=True)]
    try:
        assert split_head(model) is not None
        logp, ent, grads = _stats_and_grads(model, completion_logps, batch)
    finally:
        for h in hooks:
            h.remove()
        lm.gradient_checkpointing = False
    mask = batch["completion_mask"]
    assert head_rows == [int(mask.sum())]  # one head call, on the 14 real completion tokens only
    assert lm_rows == ([2, 6] if case == "shared" else [6])  # 2 distinct prompts once, or whole rows
    ref_logp, ref_ent, ref_grads = _stats_and_grads(model, _whole_stats, batch)
    assert (logp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all() and not ent.requires_grad
    assert_close_scaled(logp, ref_logp, msg="log-probs")
    assert_close_scaled(ent, ref_ent, msg="entropy")
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in ref_grads:
        assert_close_scaled(grads[name], ref_grads[name], msg=name)


def test_completion_hidden_declines_unknown_models(vlm) -> None:
    class Wrapped(torch.nn.Module):  # e.g. a model that scales its logits: the head cannot be split off
        def __init__(self, inner):
            super().__init__()
            self.model, self.lm_head = inner.model, inner.lm_head

    b = _batch(vlm)
    wrapped = Wrapped(vlm.model)
    assert split_head(wrapped) is None
    assert completion_hidden(wrapped, b["input_ids"], b["attention_mask"], b["position_ids"], b["prompt_len"]) is None
    hidden, head = completion_hidden(vlm.model, b["input_ids"], b["attention_mask"], b["position_ids"],
                                     b["prompt_len"])
    assert hidden.shape == (*b["completion_ids"].shape, vlm.model.config.text_config.hidden_size)
    assert head is vlm.model.lm_head


def test_length_buckets() -> None:
    lengths = [64, 3, 60, 5, 4, 62]
    assert length_buckets(lengths, overhead=16) == [[1, 4, 3], [2, 5, 0]]  # 3 * 5 + 3 * 64 + 2 * 16
    assert length_buckets(lengths, overhead=10_000) == [[1, 4, 3, 2, 5, 0]]  # one call: never split
    assert sorted(r for g in length_buckets(lengths, overhead=0) for r in g) == list(range(6))
    assert length_buckets([], overhead=16) == []


def test_length_groups_equal_the_full_head(vlm) -> None:
    """Rows in groups of their own width (overhead 0: one group per length) give the full path's values
    and gradients; the groups run only as wide as their longest completion."""
    model = vlm.model.train()
    batch = _batch(vlm)
    widths: list[int] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["input_ids"].shape[1] if kw.get("input_ids") is not None
                                            else kw["inputs_embeds"].shape[1]), with_kwargs=True)

    def grouped(model, b):
        hidden = completion_hidden_shared(model, b["input_ids"], b["attention_mask"], b["position_ids"],
                                          b["prompt_len"], bucket_overhead=0)
        from r1v.algos.losses import head_logprobs_and_entropy

        return head_logprobs_and_entropy(hidden, model.lm_head, b["completion_ids"], b["completion_mask"])

    try:
        logp, ent, grads = _stats_and_grads(model, grouped, batch)
    finally:
        hook.remove()
    # the prompt block once, then groups of lengths {2}, {3}, {4} (the rows of length 1 need no call)
    assert widths == [batch["prompt_len"], 1, 2, 3]
    ref_logp, ref_ent, ref_grads = _stats_and_grads(model, _whole_stats, batch)
    assert_close_scaled(logp, ref_logp, msg="log-probs")
    assert_close_scaled(ent, ref_ent, msg="entropy")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close_scaled(grads[name], ref_grads[name], msg=name)


def test_a_cache_without_plain_layers_runs_one_group_on_the_prompt_forward(vlm, monkeypatch) -> None:
    """A cache type the length groups cannot copy runs every row at full width on the prompt forward
    already made (the prompt block runs once), with the full path's values and gradients."""
    from r1v.algos import prefix
    from r1v.algos.losses import head_logprobs_and_entropy

    monkeypatch.setattr(prefix, "_plain_cache", lambda cache: False)
    model = vlm.model.train()
    batch = _batch(vlm)
    widths: list[int] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)

    def one_group(model, b):
        hidden = completion_hidden_shared(model, b["input_ids"], b["attention_mask"], b["position_ids"],
                                          b["prompt_len"], bucket_overhead=0)
        return head_logprobs_and_entropy(hidden, model.lm_head, b["completion_ids"], b["completion_mask"])

    try:
        logp, ent, grads = _stats_and_grads(model, one_group, batch)
    finally:
        hook.remove()
    width = batch["completion_ids"].shape[1]
    assert widths == [batch["prompt_len"], width - 1]
    ref_logp, ref_ent, ref_grads = _stats_and_grads(model, _whole_stats, batch)
    assert_close_scaled(logp, ref_logp, msg="log-probs")
    assert_close_scaled(ent, ref_ent, msg="entropy")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close_scaled(grads[name], ref_grads[name], msg=name)
