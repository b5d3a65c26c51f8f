"""Hallucination rate on hand-built scenes with hand-written faithful and hallucinating completions."""

from __future__ import annotations

import pytest

from r1v.data.schema import Sample
from r1v.data.synthetic import generate_tasks
from r1v.eval.hallucination import DEFINITION, final_answer, find_hallucinations, hallucination_report


def _shapes(*objs: tuple[str, str], unanswerable: bool = False, answer: str = "2", family: str = "count") -> Sample:
    scene = {"size": 224, "objects": [{"kind": k, "colour": c, "x": 0, "y": 0, "size": 5} for c, k in objs]}
    return Sample.from_question(f"s{len(objs)}{unanswerable}", "How many?", answer=answer, scene=scene,
                                unanswerable=unanswerable, family=family)


SHAPE_SCENE = _shapes(("red", "circle"), ("red", "circle"), ("blue", "square"), ("green", "triangle"))
BARS = Sample.from_question("bars", "Value of B?", answer="7", family="bar", unanswerable=False, scene={
    "size": 224, "axis_max": 10, "objects": [{"kind": "bar", "label": "A", "value": 3, "colour": "red"},
                                             {"kind": "bar", "label": "B", "value": 7, "colour": "red"}]})
DIGIT = Sample.from_question("digit", "What number?", answer="42", family="digit", unanswerable=False,
                             scene={"size": 224, "objects": [{"kind": "number", "value": 42, "colour": "blue",
                                                              "x": 1, "y": 1, "size": 20}]})


@pytest.mark.parametrize("text", [
    "<think>I see 2 red circles, a blue square and one green triangle.</think> \\boxed{2}",
    "There are two red circles. No yellow stars appear. Answer: 2",
    "Is there a purple star? I don't see a purple star. Only 1 red circle on the left, and 4 shapes in total.",
    "The red circles: 2. The green triangle is small.",  # no quantity on 'the' mentions: no claims
])
def test_faithful_shape_completions(text: str) -> None:
    assert find_hallucinations(SHAPE_SCENE, text) == []


@pytest.mark.parametrize("text,kind", [
    ("I count 3 red circles.", "count"),  # over-count
    ("There is a yellow star in the corner.", "object"),  # absent colour+kind
    ("I also see two blue circles.", "object"),  # both words in the vocabulary, pair absent
    ("Altogether there are 7 shapes.", "count"),
    ("There are five triangles.", "count"),
])
def test_hallucinating_shape_completions(text: str, kind: str) -> None:
    claims = find_hallucinations(SHAPE_SCENE, text)
    assert claims and claims[0].kind == kind, claims


def test_bar_and_digit_values() -> None:
    assert find_hallucinations(BARS, "The bar for B is 7 and bar A reaches 3. \\boxed{7}") == []
    (c,) = find_hallucinations(BARS, "The bar for B is 8, so the answer is \\boxed{8}")
    assert c.kind == "value" and "bar B is 7" in c.detail
    (c,) = find_hallucinations(BARS, "Bar D is 5.")
    assert c.kind == "value" and "no bar D" in c.detail
    assert find_hallucinations(DIGIT, "The number written in the image is 42.") == []
    (c,) = find_hallucinations(DIGIT, "The number written in the image is 47.")
    assert c.kind == "value"


def test_unanswerable_questions() -> None:
    un = _shapes(("red", "circle"), unanswerable=True, answer="0")
    assert find_hallucinations(un, "I see no green stars at all. \\boxed{0}") == []
    assert find_hallucinations(un, "There are none. Answer: none") == []
    assert find_hallucinations(un, "I am not sure.") == []  # no final answer: no positive assertion
    kinds = [c.kind for c in find_hallucinations(un, "There are 2 green stars. \\boxed{2}")]
    assert kinds == ["object", "unanswerable"]
    bar_un = Sample.from_question("bu", "Value of F?", answer="none", family="bar", unanswerable=True,
                                  scene=BARS.meta["scene"])
    assert [c.kind for c in find_hallucinations(bar_un, "\\boxed{4}")] == ["unanswerable"]
    assert find_hallucinations(bar_un, "There is no bar F. \\boxed{\\text{none}}") == []


def test_final_answer_extraction() -> None:
    assert final_answer("<think>maybe \\boxed{3}</think> so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert final_answer("<answer> 5 </answer>") == "5"
    assert final_answer("Answer: none.") == "none"
    assert final_answer("<think>there are 3</think> it is 4 then") == "4"
    assert final_answer("no digits here") is None


def test_report_counts_and_rate() -> None:
    plain = Sample.from_question("plain", "2+2?", answer="4")  # no scene: unscored
    un = _shapes(("red", "circle"), unanswerable=True, answer="0")
    samples = [SHAPE_SCENE, BARS, DIGIT, un, plain]
    completions = [
        "I see 2 red circles. \\boxed{2}",  # faithful
        "The bar for B is 9. \\boxed{9}",  # value
        "The number is 42. \\boxed{42}",  # faithful
        "There are 3 green stars. \\boxed{3}",  # object + unanswerable
        "4",
    ]
    r = hallucination_report(samples, completions)
    assert r["scored"] == 4 and r["unscored"] == 1 and r["hallucinated"] == 2
    assert r["rate"] == pytest.approx(0.5)
    assert r["by_kind"] == {"object": 1, "count": 0, "value": 1, "unanswerable": 1}
    assert r["unanswerable"] == {"scored": 1, "hallucinated": 1, "rate": 1.0}
    assert r["by_family"]["bar"] == {"scored": 1, "hallucinated": 1}
    assert r["items"]["bars"]["hallucinated"] and not r["items"]["digit"]["hallucinated"]
    assert r["definition"] == DEFINITION
    by_id = hallucination_report(samples, {"bars": "Bar B is 7."})
    assert by_id["scored"] == 1 and by_id["rate"] == 0.0
    assert hallucination_report([plain], ["x"])["rate"] is None
    with pytest.raises(ValueError, match="2 completions for 1 samples"):
        hallucination_report([plain], ["a", "b"])


def test_gold_answers_of_rendered_tasks_are_not_hallucinations() -> None:
    """A completion stating each task's gold answer and true scene never counts as hallucinating."""
    tasks = generate_tasks(45, seed=4, unanswerable_ratio=0.3)
    texts = []
    for s in tasks:
        objs = s.meta["scene"]["objects"]
        if s.meta["family"] == "bar":
            desc = " ".join(f"The bar for {o['label']} is {o['value']}." for o in objs)
        elif s.meta["family"] == "digit":
            desc = f"The number written in the image is {objs[0]['value']}."
        else:
            desc = " ".join(f"I see a {o['colour']} {o['kind']}." for o in objs)
        texts.append(f"<think>{desc}</think> \\boxed{{{s.answer}}}")
    r = hallucination_report(tasks, texts)
    assert r["scored"] == 45 and r["hallucinated"] == 0, [k for k, v in r["items"].items() if v["hallucinated"]]
