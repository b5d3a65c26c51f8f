"""The demo's rendered tasks: worked chains, one-word alignment rows, prepared files, `synthetic:N` rows."""

from __future__ import annotations

import json
from pathlib import Path

from r1v.data.demo_tasks import (
    chain,
    pair_rows,
    rendered_rows,
    short_rows,
    synthetic_rows,
    text_rows,
    write_prepared,
)
from r1v.recipes.pipeline import Prepare


def test_synthetic_rows_end_in_a_boxed_think_chain_or_are_prompts_only() -> None:
    rows = synthetic_rows(6, seed=2)
    assert [r.record for r in rows] == list(range(6)) and {r.source for r in rows} == {"synthetic:train"}
    for r in rows:
        target = r.sample.messages[-1]
        assert target.role == "assistant" and target.content.startswith("<think>\nThe question is: ")
        assert target.content.endswith(f"\\boxed{{{r.sample.answer}}}")
    prompts = synthetic_rows(6, seed=2, split="heldout", with_target=False)
    assert all(r.sample.target is None for r in prompts) and {r.source for r in prompts} == {"synthetic:heldout"}


def test_worked_chains_agree_with_the_gold_answers() -> None:
    rows = rendered_rows(40, seed=3, unanswerable_ratio=0.3)
    for r in rows:
        thought, answer = chain(r.sample), r.sample.answer
        target = r.sample.messages[-1].content
        assert target.endswith(f"\\boxed{{{answer}}}") and thought in target
        if r.sample.meta["family"] == "arith" and not r.sample.meta["unanswerable"]:
            assert thought.endswith(f"= {answer}.")
    for r in text_rows(20, seed=1):
        assert r.sample.messages[-1].content.endswith(f"\\boxed{{{r.sample.answer}}}")
        assert f"= {r.sample.answer}." in r.sample.messages[-1].content


def test_short_answer_alignment_rows_answer_in_one_word_without_thinking() -> None:
    rows = short_rows(40, seed=3)
    chains = {json.dumps(r.sample.meta["scene"], sort_keys=True) for r in rendered_rows(40, seed=3)}
    assert {r.sample.meta["family"] for r in rows} == {"count", "arith", "digit", "bar", "compare"}
    for r in rows:
        question, answer = r.sample.messages[0].content, r.sample.messages[-1].content
        assert answer == r.sample.answer and " " not in answer and "<think>" not in answer
        assert question.startswith("<image>\n")
        assert question.endswith("Answer with its colour." if r.sample.meta["family"] == "compare"
                                 else "Answer with one word.")
    assert chains.isdisjoint(json.dumps(r.sample.meta["scene"], sort_keys=True) for r in rows)  # own stream


def test_prepared_rl_prompts_are_the_train_prompts_or_their_own_stream(tmp_path: Path) -> None:
    def scenes(path: Path) -> list[str]:
        return [json.dumps(json.loads(line)["meta"]["scene"], sort_keys=True) for line in path.read_text().splitlines()]

    kw = dict(train=6, heldout=2, image_size=64, families=["count", "compare"], difficulties=[1])
    same = write_prepared(Prepare(**kw), tmp_path / "same", seed=1)
    assert scenes(same["rl"]) == scenes(same["train"])
    own = write_prepared(Prepare(**kw, rl=5), tmp_path / "own", seed=1)
    rl = [json.loads(line) for line in own["rl"].read_text().splitlines()]
    assert len(rl) == 5 and all(r["answer"] and len(r["messages"]) == 1 for r in rl)  # prompts with gold answers
    assert set(scenes(own["rl"])).isdisjoint(scenes(own["train"]))
    assert all((own["rl"].parent / r["images"][0]).exists() for r in rl)


def test_preference_pairs_reject_a_hallucinated_figure(tmp_path: Path) -> None:
    from r1v.data.pairs import read_pairs

    pairs = pair_rows(24, seed=1, families=["count", "compare"], difficulties=[1], unanswerable_ratio=0.3)
    for p in pairs:
        s = p["sample"]
        assert p["chosen"].endswith(f"\\boxed{{{s.answer}}}") and not p["rejected"].endswith(f"\\boxed{{{s.answer}}}")
        if s.meta.get("unanswerable"):
            assert "I see no" in p["chosen"] and "there are 1." in p["rejected"]  # a number for an absent object
    assert any(p["sample"].meta.get("unanswerable") for p in pairs)
    prep = Prepare(pairs=6, heldout_pairs=3, val=2, families=["count"], difficulties=[1])
    files = write_prepared(prep, tmp_path, seed=0)
    back = read_pairs(files["pairs"])
    assert len(back) == 6 and len(read_pairs(files["heldout_pairs"])) == 3 and back[0].pair.chosen_score == 1.0
    assert Path(back[0].pair.sample.images[0]).exists() and files["val"].exists()
