"""AL-CoTD stage: keep / revise / drop with scripted engines, DRLC P per sample, bad-input policies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from r1v.config import load_config
from r1v.data.sources import read_jsonl, write_jsonl
from r1v.data.stage_data import prompt_only
from r1v.data.synthetic import generate_tasks
from r1v.errors import ConfigError, DataError
from r1v.eval.teacher import EndpointTeacher
from r1v.recipes import distill
from r1v.rollout.engine import Completion, split_completion

REPO = Path(__file__).resolve().parents[2]


def completion(text: str, finish: str = "stop") -> Completion:
    think, answer = split_completion(text, False)
    return Completion(text=text, token_ids=[], finish_reason=finish, think=think, answer=answer,  # type: ignore[arg-type]
                      num_think_tokens=len((think or "").split()), prompt_tokens=0)


class ScriptedEngine:
    """A fake engine: `reply(sample, j) -> text`; records every call (samples, params)."""

    tokenizer = None

    def __init__(self, reply) -> None:
        self.reply, self.calls = reply, []

    def generate(self, samples, params, seeds=None):
        self.calls.append((list(samples), params))
        return [[completion(self.reply(s, j)) for j in range(params.n)] for s in samples]


def index_of(sample) -> int:
    return int(sample.id.rsplit("-", 1)[1])


@pytest.fixture
def dataset(tmp_path) -> Path:
    samples = generate_tasks(6, seed=1, families=("count", "arith"), image_size=64)
    return write_jsonl(samples, tmp_path / "in" / "tasks.jsonl")


def make_cfg(data: Path, out: Path, **over) -> distill.DistillConfig:
    items = [f"data={data}", f"out={out}", "generation.batch_size=4", *[f"{k}={v}" for k, v in over.items()]]
    return load_config(distill.DistillConfig, REPO / "configs" / "distill.yaml", items)


def student_reply(s, j) -> str:
    i = index_of(s)
    if i == 4:  # right answer but no chain: must be revised, not kept
        return f"\\boxed{{{s.answer}}}"
    if i % 2 == 0:
        return f"<think>I count the shapes for item {i}.</think> The answer is \\boxed{{{s.answer}}}."
    return f"<think>Looks like {int(s.answer) + 1}.</think> \\boxed{{{int(s.answer) + 1}}}"


def teacher_reply(s, j) -> str:
    assert "The correct answer is" in s.question  # answer-conditioned
    i = index_of(s)
    if i == 1 or (i == 4 and j == 1):  # item 4: the second attempt verifies
        return f"<think>Given the answer, I recount carefully ({i}).</think> \\boxed{{{s.answer}}}"
    return "<think>still unsure</think> \\boxed{-1}"


def test_keep_revise_drop_and_penalty_per_sample(dataset, tmp_path) -> None:
    student, teacher = ScriptedEngine(student_reply), ScriptedEngine(teacher_reply)
    summary = distill.run_with(make_cfg(dataset, tmp_path / "out"), student, teacher=teacher)
    assert (summary["kept"], summary["revised"], summary["dropped"]) == (2, 2, 2)  # kept 0,2; revised 1,4; dropped 3,5
    rows = read_jsonl(tmp_path / "out" / "data.jsonl")
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert {index_of(r): r.meta["source"] for r in rows} == {0: "kept", 2: "kept", 1: "revised", 4: "revised"}
    assert sorted(index_of(r) for r in dropped) == [3, 5]
    assert all(r.meta["source"] == "dropped" and r.target is None for r in dropped)
    for r in rows:
        turn = r.target
        assert turn.startswith("<think>\n") and "\n</think>\n\n" in turn and f"\\boxed{{{r.answer}}}" in turn
        assert "The correct answer is" not in r.question  # the hint never leaks into the data
        assert len(r.images) == 1 and Path(r.images[0]).is_file()
    assert "recount carefully (4)" in next(r for r in rows if index_of(r) == 4).target

    # P from the written raw scores, computed independently of r1v.algos.length
    allrows = sorted(rows + dropped, key=index_of)
    raw = {k: [r.meta["scores"][k] for r in allrows] for k in ("sv", "st", "si")}
    norm = {k: [(x - min(v)) / (max(v) - min(v)) if max(v) > min(v) else 0.5 for x in v] for k, v in raw.items()}
    cfg = make_cfg(dataset, tmp_path / "x")
    a, b, g = cfg.drlc.alpha, cfg.drlc.beta, cfg.drlc.gamma
    expect = [min(2.0, math.exp(a * (1 - (v + b * t + g * i) / (1 + b + g))))
              for v, t, i in zip(norm["sv"], norm["st"], norm["si"], strict=True)]
    got = [r.meta["drlc_penalty"] for r in allrows]
    assert got == pytest.approx(expect, abs=1e-6)
    assert len(set(round(p, 4) for p in got)) > 1  # the scores do differ between samples
    for r in allrows:
        assert r.meta["scores"]["sv_norm"] == pytest.approx(norm["sv"][allrows.index(r)])

    # the spy saw exactly these penalties, per sample and in batches of 4
    seen = {index_of(s): p for samples, params in student.calls
            for s, p in zip(samples, params.repetition_penalty, strict=True)}
    assert [len(c[0]) for c in student.calls] == [4, 2]
    assert seen == pytest.approx({index_of(r): r.meta["drlc_penalty"] for r in allrows}, abs=1e-6)
    assert all(c[1].n == 1 and c[1].max_think_tokens == cfg.generation.max_think_tokens for c in student.calls)
    # the teacher saw only the wrong ones, with their own P and n = attempts
    t_seen = {index_of(s): p for samples, params in teacher.calls
              for s, p in zip(samples, params.repetition_penalty, strict=True)}
    assert sorted(t_seen) == [1, 3, 4, 5]
    assert t_seen == pytest.approx({i: seen[i] for i in t_seen})
    assert all(c[1].n == cfg.teacher.attempts for c in teacher.calls)

    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["kept"] == 2 and saved["bad_samples"]["skipped"] == 0 and saved["written"] == 4


def test_no_teacher_drops_the_wrong_ones(dataset, tmp_path) -> None:
    summary = distill.run_with(make_cfg(dataset, tmp_path / "o", **{"teacher.kind": "none"}),
                               ScriptedEngine(student_reply))
    assert (summary["kept"], summary["revised"], summary["dropped"]) == (2, 0, 4)


def _bad_file(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    lines = [
        json.dumps({"id": "good", "question": "How many red squares are shown?", "image": "ok.png", "answer": "1"}),
        '{"id": "bad json", "question": ',
        json.dumps({"id": "noimg", "question": "Count them.", "image": "missing.png", "answer": "2"}),
        json.dumps({"id": "long", "question": "word " * 400, "answer": "3"}),
        json.dumps({"id": "nogold", "question": "What is 1+1?"}),
        json.dumps({"id": "corrupt", "question": "Count.", "image": "broken.png", "answer": "4"}),
        json.dumps({"id": "good2", "question": "What is 2+2?", "answer": "4"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_error_policy_names_file_and_line(tmp_path) -> None:
    path = _bad_file(tmp_path)
    cfg = make_cfg(path, tmp_path / "out", max_prompt_tokens=100)
    with pytest.raises(DataError, match=r"mixed\.jsonl, record 2: malformed JSON"):
        distill.run_with(cfg, ScriptedEngine(student_reply))


def test_bad_input_skip_policy_counts_every_item(tmp_path) -> None:
    path = _bad_file(tmp_path)
    cfg = make_cfg(path, tmp_path / "out", max_prompt_tokens=100, on_bad_sample="skip", **{"teacher.kind": "none"})
    student = ScriptedEngine(lambda s, j: f"<think>so</think> \\boxed{{{s.answer}}}")
    summary = distill.run_with(cfg, student)
    bad = summary["bad_samples"]
    assert bad["by_reason"] == {"malformed": 1, "image": 2, "too_long": 1, "no_answer": 1}
    assert bad["skipped"] == 5 and summary["prompts"] == 2 and summary["kept"] == 2
    text = "\n".join(bad["examples"])
    for line, field in [(2, "malformed"), (3, "missing.png"), (4, "max_prompt_tokens"), (5, "answer"),
                        (6, "broken.png")]:
        assert f"mixed.jsonl, record {line}" in text and field in text
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["bad_samples"]["skipped"] == 5


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="teacher.url"):
        load_config(distill.DistillConfig, None, ["teacher.kind=endpoint"])
    with pytest.raises(ConfigError, match="judge_url"):
        load_config(distill.DistillConfig, None, ["scorers.text=judge"])
    with pytest.raises(ConfigError, match="on_bad_sample"):
        load_config(distill.DistillConfig, None, ["on_bad_sample=ignore"])


def test_endpoint_teacher_parses_replies() -> None:
    class FakeJudge:
        def __init__(self):
            self.prompts = []

        def ask(self, prompt):
            self.prompts.append(prompt)
            return "<think>because 2 and 2</think> \\boxed{4}" if len(self.prompts) == 1 else "It is 4. Answer: 4"

    judge = FakeJudge()
    s = distill.with_hint(prompt_only(generate_tasks(1, families=("count",), image_size=64)[0]))
    from r1v.rollout.engine import SamplingParams
    group = EndpointTeacher(judge).generate([s], SamplingParams(n=2))[0]
    assert group[0].think == "because 2 and 2" and group[0].answer.strip() == "\\boxed{4}"
    assert group[1].think == "It is 4. Answer: 4" and group[1].answer == "\\boxed{4}"
    assert "<image>" not in judge.prompts[0] and "The correct answer is" in judge.prompts[0]
    assert judge.prompts[1].endswith("(attempt 2)")


def test_real_tiny_model_end_to_end(tmp_path) -> None:
    pytest.importorskip("r1v.processing.processor")
    cfg = load_config(distill.DistillConfig, REPO / "configs" / "distill.yaml",
                      ["data=synthetic:4", f"out={tmp_path}", "generation.max_new_tokens=12",
                       "generation.max_think_tokens=6", "teacher.max_new_tokens=12", "teacher.attempts=1"])
    summary = distill.run(cfg)
    assert summary["kept"] + summary["revised"] + summary["dropped"] == 4
    assert 1.0 <= summary["penalty"]["min"] <= summary["penalty"]["max"] <= 2.0
