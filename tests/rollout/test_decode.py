"""The fast decode loop: same tokens as transformers' generate, cache/mask mechanics, the step processors."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_scaled

from r1v.data.schema import Sample
from r1v.rollout.decode import KVCache, decode
from r1v.rollout.engine import RepetitionPenalty, SamplingParams, ThinkBudget, TransformersEngine

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


@pytest.fixture(scope="module")
def tiny():
    from r1v.model.build import build_preset

    torch.manual_seed(0)
    return build_preset("tiny")


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    img = Image.new("RGB", (90, 60), "white")
    img.paste((0, 0, 255), (20, 5, 60, 50))
    return img


def _ids(groups) -> list[list[int]]:
    return [c.token_ids for g in groups for c in g]


def test_kv_cache_writes_in_place_and_returns_the_written_prefix() -> None:
    cache = KVCache(layers=2, batch=1, kv_heads=1, head_dim=2, max_len=5, dtype=torch.float32,
                    device=torch.device("cpu"))
    k, v = cache.update(torch.ones(1, 1, 3, 2), torch.full((1, 1, 3, 2), 2.0), 1)
    assert k.shape == (1, 1, 3, 2) and cache.get_seq_length() == 0
    cache.advance(3)
    k, v = cache.update(torch.full((1, 1, 1, 2), 5.0), torch.full((1, 1, 1, 2), 6.0), 1)
    assert k[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 5.0]
    assert v[0, 0, :, 0].tolist() == [2.0, 2.0, 2.0, 6.0]
    assert cache.keys[1].data_ptr() == k.data_ptr()  # a view of the pre-allocated buffer
    assert cache.keys[0].abs().sum() == 0


def test_vectorised_think_budget_equals_the_row_loop() -> None:
    close = [7, 8]
    torch.manual_seed(2)
    a = ThinkBudget(close, budget=3, prompt_len=2, batch=3)
    b = ThinkBudget(close, budget=3, prompt_len=2, batch=3)
    seq = torch.zeros(3, 2, dtype=torch.long)
    gen = torch.zeros(3, 10, dtype=torch.long)
    for t in range(10):
        raw = torch.randn(3, 10)
        raw[1, 7] = 100.0 if t == 1 else raw[1, 7]  # row 1 starts closing on its own...
        raw[1, 8] = 100.0 if t == 2 else raw[1, 8]  # ...and finishes the close sequence itself
        sa = a(seq, raw.clone())
        sb = b.step(gen, t, raw.clone())
        assert torch.equal(sa, sb)
        nxt = sa.argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
        gen[:, t] = nxt
    assert gen[0, 3:5].tolist() == close and gen[1, 1:3].tolist() == close
    assert gen[1, 3:5].tolist() != close  # closed by itself: never forced


def test_greedy_equals_hf_generate_on_tiny(tiny, image) -> None:
    ours, hf = TransformersEngine(tiny), TransformersEngine(tiny, backend="hf")
    samples = [Sample.from_question("a", "What is here?", images=[image]),
               Sample.from_question("b", "Count the shapes please, slowly.", images=[image, image]),
               Sample.from_question("c", "Hi.")]
    p = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0)
    assert _ids(ours.generate(samples, p)) == _ids(hf.generate(samples, p))
    # with the penalty (no left padding: one prompt, several rows) and a thinking budget
    p = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.3, n=2, max_think_tokens=5)
    got = ours.generate(samples[:1], p)
    assert _ids(got) == _ids(hf.generate(samples[:1], p))
    assert got[0][0].token_ids[5:5 + len(ours.close_ids)] == ours.close_ids or got[0][0].num_think_tokens < 5


@pytest.mark.slow
def test_greedy_equals_hf_generate_on_smollm2_text() -> None:
    from r1v.errors import AssetError
    from r1v.model.build import build_preset

    try:
        vlm = build_preset("smol")
    except AssetError as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")
    ours, hf = TransformersEngine(vlm), TransformersEngine(vlm, backend="hf")
    samples = [Sample.from_question("a", "What is the capital of France?"),
               Sample.from_question("b", "List three colours of the rainbow, one per line.")]
    p = SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0, think=False)
    a, b = ours.generate(samples, p), hf.generate(samples, p)
    assert _ids(a) == _ids(b)
    assert any(len(t) > 3 for t in _ids(a))  # real text, not an immediate stop
    p = SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.05, think=False, n=2)
    assert _ids(ours.generate(samples[1:], p)) == _ids(hf.generate(samples[1:], p))


def test_sampling_is_seeded_and_min_new_tokens_holds(tiny, image) -> None:
    engine = TransformersEngine(tiny)
    s = [Sample.from_question("a", "Describe.", images=[image])]
    p = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=1.0, top_p=0.9, n=4, seed=5)
    a, b = engine.generate(s, p), engine.generate(s, p)
    assert _ids(a) == _ids(b)
    assert all(len(t) == 10 for t in _ids(a))
    c = engine.generate(s, SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, n=4, seed=6))
    assert _ids(c) != _ids(a)


def test_stop_strings_end_a_row(tiny) -> None:
    engine = TransformersEngine(tiny)
    s = [Sample.from_question("a", "Go.")]
    base = engine.generate(s, SamplingParams(max_new_tokens=12, temperature=0.0, think=False))[0][0]
    if len(base.token_ids) < 6:
        pytest.skip("the tiny model stopped too early to pick a stop string")
    stop = engine.tokenizer.decode(base.token_ids[3:5])
    [[c]] = engine.generate(s, SamplingParams(max_new_tokens=12, temperature=0.0, think=False, stop=[stop]))
    assert c.finish_reason == "stop" and stop in c.text
    assert len(c.token_ids) <= 5


def test_decode_stops_when_all_rows_finish(tiny) -> None:
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    first = decode(tiny.model, ids, mask, max_new_tokens=4, stop_ids=[0], pad_id=0, sample=False)
    tok = int(first.tokens[0, 0])
    out = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[tok], pad_id=0, sample=False,
                 return_logprobs=True)
    assert out.lengths[0] == 1
    assert out.tokens.shape[1] == int(out.lengths.max())  # loop ended once every row was done
    assert out.logprobs is not None and (out.logprobs[0, 1:] == 0).all()


def test_repeated_prompts_are_prefilled_once_with_the_same_result(tiny) -> None:
    ids = torch.tensor([[0, 5, 6, 7], [9, 8, 7, 6], [0, 5, 6, 7], [9, 8, 7, 6], [0, 5, 6, 7]])
    mask = (ids != 0).long()
    seen: list[int] = []
    hook = tiny.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = decode(tiny.model, ids, mask, max_new_tokens=6, stop_ids=[], pad_id=0, sample=False,
                     return_logprobs=True)
    finally:
        hook.remove()
    assert seen[0] == 2 and set(seen[1:]) == {5}  # prefill on the 2 distinct prompts, steps on all rows
    alone = decode(tiny.model, ids[:2], mask[:2], max_new_tokens=6, stop_ids=[], pad_id=0, sample=False,
                   return_logprobs=True)
    assert torch.equal(out.tokens, alone.tokens[[0, 1, 0, 1, 0]])
    assert_close_scaled(out.logprobs, alone.logprobs[[0, 1, 0, 1, 0]])


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny, monkeypatch) -> None:
    import r1v.rollout.decode as dec

    ids = torch.tensor([[0, 5, 6, 7], [9, 8, 7, 6], [3, 4, 5, 6], [0, 0, 7, 2]])
    mask = (ids != 0).long()
    free = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[], pad_id=0, sample=False)
    stop = int(free.tokens[1, 1])  # row 1 stops at step 2 at the latest; the others when they write it
    monkeypatch.setattr(dec, "COMPACT_AT", 0.0)  # never compact: the reference run
    full = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[stop], pad_id=0, sample=False,
                  return_logprobs=True)
    monkeypatch.setattr(dec, "COMPACT_AT", 0.99)  # compact as soon as one row finishes
    seen: list[int] = []
    hook = tiny.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[stop], pad_id=0, sample=False,
                     return_logprobs=True)
    finally:
        hook.remove()
    assert min(seen) < 4  # finished rows were dropped from the step forwards
    assert torch.equal(out.tokens, full.tokens) and torch.equal(out.lengths, full.lengths)
    assert_close_scaled(out.logprobs, full.logprobs)


def test_seen_ids_penalty_equals_a_pass_over_the_vocabulary() -> None:
    torch.manual_seed(3)
    scores = torch.randn(3, 20)
    seen = torch.randint(0, 20, (3, 9))  # repeats on purpose: each id must be penalised once
    penalty = torch.tensor([1.3, 1.0, 0.5])
    proc = RepetitionPenalty(penalty)
    present = torch.zeros(3, 20, dtype=torch.bool).scatter_(1, seen, True)
    p = penalty.unsqueeze(1)
    want = torch.where(present, torch.where(scores < 0, scores * p, scores / p), scores)
    assert torch.equal(proc.apply_seen(seen, scores.clone()), want)
    assert torch.equal(proc(seen, scores.clone()), want)


def test_inverse_cdf_sampling_follows_the_softmax() -> None:
    from r1v.rollout.decode import sample_rows

    torch.manual_seed(4)
    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]]))  # -inf entries
    draws = torch.stack([sample_rows(logits.clone()) for _ in range(4000)])  # [N, 2]
    freq = torch.bincount(draws[:, 0], minlength=4).float() / len(draws)
    assert freq[1] == 0 and (draws[:, 1] == 3).all()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.0, 0.3, 0.2]), atol=0.03, rtol=0)


def test_sampling_with_the_penalty_over_seen_ids_matches_the_history_form(tiny) -> None:
    ids = torch.tensor([[0, 5, 6, 7], [9, 8, 7, 6]])
    mask = (ids != 0).long()
    proc = RepetitionPenalty(torch.tensor([1.5, 2.0]))

    def history(st, s):  # HF's form over the real prompt ids + the ids generated so far
        out = s.clone()
        for r in range(len(ids)):
            past = torch.cat([ids[r][mask[r].bool()], st.tokens[r, :st.step]])
            out[r:r + 1] = RepetitionPenalty(proc.penalty[r:r + 1])(past[None], s[r:r + 1])
        return out

    outs = []
    for kw, fn in [({"track_seen": True}, lambda st, s: proc.apply_seen(st.seen, s)), ({}, history)]:
        torch.manual_seed(11)
        outs.append(decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[], pad_id=0, sample=True,
                           transforms=[fn], **kw).tokens)
    assert torch.equal(outs[0], outs[1])


def test_packed_and_plain_decode_agree(tiny) -> None:
    ids = torch.tensor([[0, 5, 6, 7], [9, 8, 7, 6], [3, 4, 5, 6]])
    mask = (ids != 0).long()
    a = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[], pad_id=0, sample=False,
               return_logprobs=True, pack_weights=True)
    b = decode(tiny.model, ids, mask, max_new_tokens=8, stop_ids=[], pad_id=0, sample=False,
               return_logprobs=True, pack_weights=False)
    assert torch.equal(a.tokens, b.tokens)
    assert_close_scaled(a.logprobs, b.logprobs)
