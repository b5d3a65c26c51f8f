"""Answer-verification scorers on the real gold files: MATH-500, AIME24, K12, MathVerse."""

from __future__ import annotations

import json
from pathlib import Path

from r1v.eval.scorers.math import read_outputs, score_aime24, score_k12, score_math500
from r1v.eval.scorers.mathverse import score_mathverse


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math500_boxed_gold_scores_right(shared_data, tmp_path):
    gold_path = shared_data / "math500" / "test.jsonl"
    gold = [json.loads(line) for line in gold_path.read_text().splitlines()][:12]
    rows = [{"id": g["unique_id"], "response": f"<think>work</think>The answer is $\\boxed{{{g['answer']}}}$."}
            for g in gold[:10]]
    rows[0]["response"] = "<think>never closed"  # truncated: no answer part
    rows[1]["response"] = "\\boxed{-12345}"  # wrong
    records, problems = read_outputs(_write(tmp_path / "o.jsonl", rows))
    report = score_math500(records, problems, gold_path=gold_path, workers=1)
    assert report.total == 500
    assert report.correct == 8
    assert report.items[gold[0]["unique_id"]].how == "no_answer"
    assert sum(p.kind == "missing_item" for p in report.problems) == 490
    assert "Precalculus" in report.categories()["subject"]


def test_aime_zero_padded(shared_data, tmp_path):
    gold_path = shared_data / "aime24" / "test.jsonl"
    rows = [{"id": 67, "response": "so \\boxed{25}"}, {"id": 75, "response": "\\boxed{073}"},
            {"id": 60, "response": "\\boxed{205}"}]
    records, problems = read_outputs(_write(tmp_path / "a.jsonl", rows))
    report = score_aime24(records, problems, gold_path=gold_path, workers=1)
    assert report.total == 30
    assert report.items["67"].correct and report.items["75"].correct and not report.items["60"].correct


def test_k12_answer_tag_and_gold_in_outputs(shared_data, tmp_path):
    k12 = json.loads((shared_data / "k12" / "k12.json").read_text())[:3]
    rows = [{"id": k12[0]["id"], "answer": k12[0]["answer"], "response": f"<answer>{k12[0]['answer']}</answer>"},
            {"id": k12[1]["id"], "answer": k12[1]["answer"], "response": "I give up"},
            {"id": k12[2]["id"], "response": "\\boxed{1}"}]  # no gold anywhere
    records, problems = read_outputs(_write(tmp_path / "k.jsonl", rows))
    report = score_k12(records, problems, workers=1)
    assert report.items[k12[0]["id"]].correct
    assert not report.items[k12[1]["id"]].correct
    assert report.items[k12[2]["id"]].rule == "missing"
    assert [p.kind for p in report.problems] == ["missing_field"]


def test_mathverse_choice_and_free_form(shared_data, tmp_path):
    gold_path = shared_data / "mathverse" / "testmini_text_only.json"
    data = json.loads(gold_path.read_text())
    mc = next(d for d in data if d["question_type"] == "multi-choice")
    ff = next(d for d in data if d["question_type"] == "free-form")
    third = data[2]
    wrong = "A" if third["answer"] != "A" else "B"
    rows = [{"sample_index": mc["sample_index"], "response": f"Answer: {mc['answer']}"},
            {"sample_index": ff["sample_index"], "response": f"\\boxed{{{ff['answer']}}}"},
            {"sample_index": third["sample_index"], "extraction": wrong if third["question_type"] == "multi-choice"
             else "-99999"}]
    records, problems = read_outputs(_write(tmp_path / "v.jsonl", rows))
    report = score_mathverse(records, problems, gold_path=gold_path, workers=1)
    assert report.total == 788
    assert report.items[mc["sample_index"]].correct and report.items[mc["sample_index"]].how == "choice"
    assert report.items[ff["sample_index"]].correct
    assert not report.items[third["sample_index"]].correct
    assert set(report.categories()) >= {"problem_version", "question_type", "subject"}
