"""The transformers rollout engine: sampling processors, thinking budget, streaming, log-probs."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_scaled

from r1v.data.schema import Sample
from r1v.rollout.engine import (
    THINK_CLOSE,
    RepetitionPenalty,
    SamplingParams,
    TemperatureTopKTopP,
    ThinkBudget,
    TransformersEngine,
    split_completion,
)

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def test_repetition_penalty_is_per_row() -> None:
    scores = torch.tensor([[2.0, -2.0, 1.0], [2.0, -2.0, 1.0]])
    ids = torch.tensor([[0, 1], [0, 1]])
    out = RepetitionPenalty(torch.tensor([2.0, 1.0]))(ids, scores.clone())
    assert out[0].tolist() == [1.0, -4.0, 1.0]
    assert out[1].tolist() == [2.0, -2.0, 1.0]


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = TemperatureTopKTopP(1.0, 0, 0.75)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    out = TemperatureTopKTopP(1.0, 0, 0.1)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    assert torch.isfinite(out[0]).tolist() == [True, False, False, False]
    out = TemperatureTopKTopP(1.0, 2, 1.0)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    assert torch.isfinite(out[0]).sum() == 2


def test_think_budget_forces_the_close_sequence_then_lets_go() -> None:
    close = [7, 8]
    proc = ThinkBudget(close, budget=2, prompt_len=1, batch=1)
    seq = [0]
    for _ in range(6):
        scores = proc(torch.tensor([seq]), torch.zeros(1, 10))
        seq.append(int(scores.argmax()) if torch.isinf(scores).any() else 3)
    assert seq[1:5] == [3, 3, 7, 8]
    assert seq[5:] == [3, 3]  # free again after the thought is closed


def test_split_completion() -> None:
    assert split_completion("a b</think> 42", True) == ("a b", "42")
    assert split_completion("<think>x</think>y", False) == ("x", "y")
    assert split_completion("still thinking", True) == ("still thinking", "")
    assert split_completion("just 5", False) == (None, "just 5")


@pytest.fixture(scope="module")
def tiny():
    from r1v.model.build import build_preset

    torch.manual_seed(0)
    return build_preset("tiny")


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    img = Image.new("RGB", (90, 60), "white")
    img.paste((255, 0, 0), (10, 10, 40, 40))
    return img


def test_greedy_generation_is_deterministic_and_batched(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    samples = [Sample.from_question("a", "What is here?", images=[image]),
               Sample.from_question("b", "Count.", images=[image, image])]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, n=3)
    groups = engine.generate(samples, params)
    assert [len(g) for g in groups] == [3, 3]
    for g in groups:
        assert len({tuple(c.token_ids) for c in g}) == 1  # greedy: identical within the group
        assert all(len(c.token_ids) <= 6 for c in g)
    again = engine.generate(samples[:1], SamplingParams(max_new_tokens=6, temperature=0.0))
    assert again[0][0].token_ids == groups[0][0].token_ids  # batching does not change the result


def test_sampling_is_reproducible_with_a_seed(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    s = [Sample.from_question("a", "Describe.", images=[image])]
    p = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, n=4, seed=3)
    a = engine.generate(s, p)
    b = engine.generate(s, p)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]


def test_think_budget_closes_the_thought(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    s = [Sample.from_question("a", "Think.", images=[image])]
    [[c]] = engine.generate(s, SamplingParams(max_new_tokens=12, temperature=0.0, max_think_tokens=3,
                                              repetition_penalty=1.0))
    n_close = len(engine.close_ids)
    assert c.text.count(THINK_CLOSE) >= 1
    assert c.num_think_tokens <= 3
    assert len(c.token_ids) == 12 or c.finish_reason == "stop"
    assert c.token_ids[3:3 + n_close] == engine.close_ids or c.num_think_tokens < 3


def test_streaming_matches_the_final_text(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    parts: list[tuple[str, str]] = []
    s = [Sample.from_question("a", "Stream.", images=[image])]
    [[c]] = engine.generate(s, SamplingParams(max_new_tokens=10, temperature=0.0, max_think_tokens=4),
                            on_text=lambda kind, d: parts.append((kind, d)))
    think = "".join(d for k, d in parts if k == "think")
    answer = "".join(d for k, d in parts if k == "answer")
    assert think.strip() == (c.think or "")
    assert answer.strip() == c.answer


def test_logprobs_match_a_teacher_forced_pass(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    s = [Sample.from_question("a", "Hi.", images=[image])]
    [[c]] = engine.generate(s, SamplingParams(max_new_tokens=5, temperature=0.0, repetition_penalty=1.0,
                                              return_logprobs=True))
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    assert all(lp <= 1e-6 for lp in c.logprobs)
    # greedy without penalty: every chosen token is the argmax, so its log-prob is the row maximum
    batch = engine.processor.encode_batch_prompts(s)
    ids = torch.cat([batch["input_ids"], torch.tensor([c.token_ids[:-1]])], dim=1)
    logits = tiny.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        pixel_values=batch["pixel_values"]).logits[0, batch["input_ids"].shape[1] - 1:]
    best = torch.log_softmax(logits.float(), -1).max(-1).values
    assert_close_scaled(torch.tensor(c.logprobs), best)


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError):
        SamplingParams(top_p=0).validate()
    with pytest.raises(ValueError):
        SamplingParams(n=0).validate()


def test_image_placeholder_tokens_are_never_sampled(tiny, image) -> None:
    from r1v.rollout.engine import SuppressTokens

    engine = TransformersEngine(tiny)
    assert len(engine.banned_ids) == 3
    scores = torch.zeros(2, tiny.model.config.text_config.vocab_size)
    out = SuppressTokens(engine.banned_ids)(None, scores)
    assert torch.isinf(out[:, engine.banned_ids]).all() and torch.isfinite(out).sum() == 2 * (scores.shape[1] - 3)
    s = [Sample.from_question("a", "Say anything.", images=[image])]
    for backend in ("static", "hf"):
        eng = TransformersEngine(tiny, backend=backend)
        groups = eng.generate(s, SamplingParams(max_new_tokens=16, temperature=1.5, top_p=1.0, n=6, seed=0))
        assert not any(t in engine.banned_ids for c in groups[0] for t in c.token_ids)


def _top_p_by_full_sort(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    vals, order = torch.sort(probs, descending=True, dim=-1)
    kept = (vals.cumsum(-1) - vals) <= top_p
    return torch.zeros_like(kept).scatter_(1, order, kept)


def test_top_p_on_candidates_equals_the_full_sort(monkeypatch) -> None:
    import r1v.rollout.engine as eng

    monkeypatch.setattr(eng, "TOP_P_CANDIDATES", (4, 32))  # small candidate sets: every branch runs
    torch.manual_seed(7)
    scale = torch.tensor([[0.1], [1.0], [4.0], [10.0], [0.5], [2.0]])  # flat ... peaked rows
    probs = (torch.randn(6, 300) * scale).softmax(-1)
    for top_p in (0.05, 0.5, 0.9, 0.95, 0.999):
        got = eng.top_p_keep(probs, top_p)
        assert torch.equal(got, _top_p_by_full_sort(probs, top_p)), top_p
        assert (got.sum(-1) >= 1).all()
    ties = torch.full((1, 300), 1 / 300)  # which tied tokens are kept is arbitrary; how many is not
    assert int(eng.top_p_keep(ties, 0.5).sum()) == int(_top_p_by_full_sort(ties, 0.5).sum())
    wide = eng.top_p_keep(probs[:1], 0.95)  # the flat row needs the full sort
    assert int(wide.sum()) > 32
