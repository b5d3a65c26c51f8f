"""MMMU scorer: the official parse/eval rules and the 325/900 regression anchor on real outputs."""

from __future__ import annotations

import json
import random

from r1v.eval.scorers.mmmu import (
    eval_open,
    load_mmmu_outputs,
    normalize_str,
    parse_multi_choice,
    parse_open,
    score_mmmu,
    subject_of,
)
from r1v.eval.scorers.skywork import skywork_match, skywork_normalize


def _mc(resp: str, n: int = 4) -> tuple[str, str]:
    letters = "ABCDEFGHI"[:n]
    index2ans = {c: f"option {c.lower()} text" for c in letters}
    return parse_multi_choice(resp, list(letters), index2ans, random.Random(0))


def test_multi_choice_parse_order():
    assert _mc("The answer is (B).") == ("B", "bracket")
    assert _mc("(A) is wrong, (C) is right") == ("C", "bracket")  # last bracketed wins
    assert _mc("B") == ("B", "letter")
    assert _mc("I pick option d text because it fits best") == ("D", "text")
    # content match needs more than 5 words; a short reply falls back to the seeded random choice
    assert _mc("option d text")[1] == "random_fallback"
    # the letter test is case-sensitive and needs spaces both sides
    assert _mc("answer:b!")[1] == "random_fallback"


def test_random_fallback_is_seeded_stream():
    choices, index2ans = ["A", "B", "C", "D"], {c: c.lower() * 3 for c in "ABCD"}
    rng, ref = random.Random(42), random.Random(42)
    got = [parse_multi_choice("no idea", choices, index2ans, rng)[0] for _ in range(20)]
    assert got == [ref.choice(choices) for _ in range(20)]
    assert len(set(got)) > 1


def test_open_parse_and_eval():
    assert normalize_str("1,000.456") == [1000.46]
    assert normalize_str("B") == [" b", "b "]
    preds = parse_open("The answer is 1.06")
    assert 1.06 in preds
    assert eval_open("1.06", preds)
    assert eval_open(["24/7", "3.429"], parse_open("so the speed is 3.4286 ft/s"))  # 2-dp number
    assert not eval_open("7", parse_open("therefore it is 8"))
    assert eval_open("tampa", parse_open("The city is Tampa."))


def test_subject_of():
    assert subject_of("validation_Art_Theory_12") == "Art_Theory"
    assert subject_of("nonsense") is None


def test_skywork_rule():
    assert skywork_normalize("$\\text{ B }$") == "b"
    assert skywork_normalize("{\\frac{1}{2}}") == "{1}{2}"  # one outer brace each side, like Skywork's regex
    assert skywork_match("so \\boxed{B}", "B")
    assert skywork_match("x \\boxed{ $\\mathrm{MgS}$ }", ["$MgS$", "MgS"])
    assert not skywork_match("\\boxed{A} then \\boxed{C}", "A")  # the LAST boxed counts
    assert not skywork_match("no box", "A")


def test_qwen_vl_reproduces_official_325(shared_data):
    records, problems = load_mmmu_outputs(shared_data / "mmmu" / "example_outputs" / "qwen_vl")
    report = score_mmmu(records, problems)
    assert (report.correct, report.total) == (325, 900)
    assert round(report.accuracy, 5) == 0.36111
    assert report.notes["random_fallback"] == 48
    assert report.problems == []
    cats = report.categories()
    assert sum(v["total"] for v in cats["subject"].values()) == 900
    assert len(cats["subject"]) == 30 and len(cats["discipline"]) == 6
    assert cats["discipline"]["Art and Design"] == {"correct": 60, "total": 120, "accuracy": 0.5}
    # with the official gold file the same figure (3 golds there are lists)
    gold = json.loads((shared_data / "mmmu" / "answer_dict_val.json").read_text())
    assert score_mmmu(records, problems, gold=gold).correct == 325


def test_bad_records_are_listed_and_scored_missing(shared_data, tmp_path):
    src = json.loads((shared_data / "mmmu" / "example_outputs" / "qwen_vl" / "Art" / "output.json").read_text())
    rows = src[:5]
    rows[1] = dict(rows[1], response=None)  # wrong type
    rows.append(dict(rows[2]))  # duplicate id
    del rows[3]["index2ans"]  # multiple choice without options
    f = tmp_path / "out.json"
    f.write_text(json.dumps(rows))
    records, problems = load_mmmu_outputs(f)
    gold = json.loads((shared_data / "mmmu" / "answer_dict_val.json").read_text())
    gold = {k: v for k, v in gold.items() if subject_of(k) == "Art"}
    report = score_mmmu(records, problems, gold=gold)
    assert report.total == 30
    kinds = {p.id: p.kind for p in report.problems}
    assert kinds[rows[1]["id"]] == "wrong_type"
    assert kinds[rows[2]["id"]] == "duplicate_id"
    assert kinds[rows[3]["id"]] == "wrong_type"
    assert sum(p.kind == "missing_item" for p in report.problems) == 25
    for rid in (rows[1]["id"], rows[2]["id"], rows[3]["id"]):
        assert report.items[rid].rule == "missing" and not report.items[rid].correct
