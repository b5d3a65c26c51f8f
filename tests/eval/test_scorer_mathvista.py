"""MathVista scorer: official normalisation; reproduces every stored true_false and the official totals."""

from __future__ import annotations

import json

import pytest

from r1v.eval.scorers.mathvista import (
    levenshtein,
    load_mathvista_outputs,
    normalize_extraction,
    rule_extract,
    score_mathvista,
)


def test_normalisation_by_answer_type():
    choices = ["3", "6", "9", "12"]
    assert normalize_extraction("(B) 6", choices, "multi_choice", "text", None) == ("6", False)
    assert normalize_extraction("C", choices, "multi_choice", "text", None) == ("9", False)
    assert normalize_extraction("13", choices, "multi_choice", "text", None) == ("3", True)  # edit distance
    assert normalize_extraction("1.5", None, "free_form", "integer", None) == ("1", False)  # truncation
    assert normalize_extraction("abc", None, "free_form", "integer", None) == (None, False)
    assert normalize_extraction("0.0115", None, "free_form", "float", 1) == ("0.0", False)
    assert normalize_extraction("1.456", None, "free_form", "float", 2.0) == ("1.46", False)  # HF float precision
    assert normalize_extraction([2007, 2008], None, "free_form", "list", None) == ("[2007, 2008]", False)
    assert levenshtein("kitten", "sitting") == 3


def test_rule_extract():
    assert rule_extract("", ["a"], "multi_choice", "text") == ("", "empty")
    assert rule_extract("7", None, "free_form", "integer") == ("7", "shortcut")
    assert rule_extract('The answer is "12".', None, "free_form", "integer") == ("12", "quick_extract")
    assert rule_extract("<think>hmm 3</think>So \\boxed{4}", None, "free_form", "integer") == ("4", "rule_answer")
    assert rule_extract("I think it is 3 or maybe 5", None, "free_form", "integer") == ("5", "last_number")
    assert rule_extract("Answer: (B)", ["x", "y"], "multi_choice", "text") == ("B", "rule_choice")


@pytest.mark.parametrize("model,total", [("gpt4", 261), ("bard", 348), ("random_guess", 179)])
def test_official_outputs_reproduced(shared_data, model, total):
    folder = shared_data / "mathvista" / "official_outputs"
    raw = json.loads((folder / f"output_{model}.json").read_text())
    official = json.loads((folder / f"scores_{model}.json").read_text())
    records, problems = load_mathvista_outputs(folder / f"output_{model}.json")
    report = score_mathvista(records, problems)
    assert report.problems == []
    assert {pid: r.correct for pid, r in report.items.items()} == {pid: r["true_false"] for pid, r in raw.items()}
    assert (report.correct, report.total) == (total, 1000)
    assert f"{report.accuracy * 100:.1f}" == official["average"]["accuracy"]
    cats = report.categories()
    for key, values in official.items():
        if key == "average":
            continue
        for value, acc in values.items():
            assert (cats[key][value]["correct"], cats[key][value]["total"]) == (acc["correct"], acc["total"]), (key, value)


def test_rule_based_path_and_missing_items(shared_data, tmp_path):
    gold = json.loads((shared_data / "mathvista" / "testmini.json").read_text())
    pids = list(gold)[:4]
    rows = [{"pid": pids[0], "response": f"\\boxed{{{gold[pids[0]]['answer']}}}"},
            {"pid": pids[1], "response": 5},  # wrong type
            "not a record"]
    f = tmp_path / "out.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    records, problems = load_mathvista_outputs(f)
    report = score_mathvista(records, problems, gold={p: gold[p] for p in pids})
    assert report.total == 4 and report.items[pids[0]].correct and report.correct == 1
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["malformed_json", "missing_item", "missing_item", "not_a_record", "wrong_type"]
    assert report.items[pids[1]].rule == "missing"
