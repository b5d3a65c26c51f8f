"""R1V3 cold-start rejection sampling: every filter, dedupe, per-prompt cap, counts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1v.config import load_config
from r1v.data.sources import read_jsonl, write_jsonl
from r1v.data.synthetic import generate_tasks
from r1v.errors import ConfigError, DataError
from r1v.recipes import rejection_sample as rs
from r1v.rollout.engine import Completion, split_completion

REPO = Path(__file__).resolve().parents[2]
FILLER = " ".join(f"w{i}" for i in range(50))


def completion(text: str, finish: str = "stop") -> Completion:
    think, answer = split_completion(text, False)
    return Completion(text=text, token_ids=[], finish_reason=finish, think=think, answer=answer,  # type: ignore[arg-type]
                      num_think_tokens=len((think or "").split()), prompt_tokens=0)


def script(gold: str) -> list[Completion]:
    """Ten completions per prompt, each built to fail exactly one filter (or pass)."""
    box = f"\\boxed{{{gold}}}"
    return [
        completion(f"<think>count the shapes one by one</think> {box}"),          # kept
        completion(f"<think>Count the shapes,  ONE by one!</think>  {box}"),      # duplicate
        completion(f"<think>a guess here</think> \\boxed{{{int(gold) + 7}}}"),    # wrong
        completion(f"<think>{'a b c ' * 10}</think> {box}"),                      # repetitive
        completion(f"<think>{FILLER}</think> {box}"),                             # too_long (> 40)
        completion(f"</think> {box}"),                                            # no_think
        completion(f"<think>a different careful approach</think> {box}"),        # kept
        completion(f"<think>yet another correct route</think> {box}"),           # over_cap
        completion(f"<think>cut off early but boxed</think> {box}", "length"),    # truncated
        completion(f"<think>short</think> {box}"),                                # too_short (< 2)
    ]


class ScriptedTeacher:
    tokenizer = None

    def __init__(self) -> None:
        self.calls = []

    def generate(self, samples, params, seeds=None):
        self.calls.append((list(samples), params))
        assert params.n == 10
        return [script(s.answer) for s in samples]


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_jsonl(generate_tasks(3, seed=2, families=("count",), image_size=64), tmp_path / "t.jsonl")


def make_cfg(data: Path, out: Path, *extra: str) -> rs.RejectionSampleConfig:
    return load_config(rs.RejectionSampleConfig, REPO / "configs" / "rejection_sample.yaml",
                       [f"data={data}", f"out={out}", "samples_per_prompt=10", "keep_per_prompt=2",
                        "filters.min_think_tokens=2", "filters.max_think_tokens=40", "generation.batch_size=2",
                        *extra])


def test_filters_dedupe_cap_and_counts(dataset, tmp_path) -> None:
    teacher = ScriptedTeacher()
    summary = rs.run_with(make_cfg(dataset, tmp_path / "out"), teacher)
    assert summary["prompts"] == 3 and summary["generated"] == 30 and summary["kept"] == 6
    assert summary["filtered"] == {k: 3 for k in rs.FILTERS}
    assert summary["kept"] + sum(summary["filtered"].values()) == summary["generated"]
    assert summary["prompts_with_kept"] == 3 and summary["yield"] == pytest.approx(0.2)
    assert [len(c[0]) for c in teacher.calls] == [2, 1]
    assert all(c[1].repetition_penalty == [1.05] * len(c[0]) for c in teacher.calls)
    rows = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert len(rows) == 6
    by_prompt: dict[str, list] = {}
    for r in rows:
        by_prompt.setdefault(r.meta["source_id"], []).append(r)
    for sid, kept in by_prompt.items():
        assert [r.id for r in kept] == [f"{sid}#r0", f"{sid}#r1"]
        assert [r.meta["sample_index"] for r in kept] == [0, 6]
        assert "count the shapes one by one" in kept[0].target
        assert kept[0].target.startswith("<think>\n") and f"\\boxed{{{kept[0].answer}}}" in kept[0].target
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kept"] == 6


def test_relaxed_filters_keep_more(dataset, tmp_path) -> None:
    cfg = make_cfg(dataset, tmp_path / "o", "keep_per_prompt=10", "filters.max_repeat_ratio=1.0",
                   "filters.drop_truncated=false", "filters.min_think_tokens=0", "filters.max_think_tokens=100")
    summary = rs.run_with(cfg, ScriptedTeacher())
    # only wrong, no_think and the duplicate remain rejected
    assert summary["filtered"]["wrong"] == 3 and summary["filtered"]["no_think"] == 3
    assert summary["filtered"]["duplicate"] == 3 and summary["kept"] == 21


def test_normalise_text() -> None:
    assert rs.normalise_text("<think>A,  b!</think>\n\\boxed{3}") == rs.normalise_text("a b \\boxed{3}")
    assert rs.normalise_text("a b") != rs.normalise_text("a c")


def test_bad_input_policy(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "What is 1+1?", "answer": "2"}) + "\n"
                    + json.dumps({"id": "b", "question": "Count.", "image": "gone.png", "answer": "1"}) + "\n")
    teacher = ScriptedTeacher()
    with pytest.raises(DataError, match=r"d\.jsonl, record 2.*gone\.png"):
        rs.run_with(make_cfg(path, tmp_path / "o"), teacher)
    summary = rs.run_with(make_cfg(path, tmp_path / "o", "on_bad_sample=skip"), teacher)
    assert summary["bad_samples"]["by_reason"] == {"image": 1} and summary["prompts"] == 1 and summary["kept"] == 2


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_config(rs.RejectionSampleConfig, None, ["teacher.kind=none"])
    with pytest.raises(ConfigError, match="min_think_tokens"):
        load_config(rs.RejectionSampleConfig, None, ["filters.min_think_tokens=10", "filters.max_think_tokens=5"])


def test_real_tiny_teacher_end_to_end(tmp_path) -> None:
    pytest.importorskip("r1v.processing.processor")
    cfg = load_config(rs.RejectionSampleConfig, REPO / "configs" / "rejection_sample.yaml",
                      ["data=synthetic:3", f"out={tmp_path}", "samples_per_prompt=2",
                       "generation.max_new_tokens=12", "generation.max_think_tokens=6"])
    summary = rs.run(cfg)
    assert summary["generated"] == 6
    assert summary["kept"] + sum(summary["filtered"].values()) == 6
