"""The agent output protocol: parsing actions, malformed calls, formatting observations."""

from r1v.agent.protocol import (
    PlanStep,
    cut_after_action,
    extract_answer,
    format_observation,
    format_plan,
    format_tool_call,
    parse_turn,
)


def test_tool_call_parsed_with_think():
    text = '<think>\nzoom in\n</think>\n<tool_call>{"name": "code", "arguments": {"code": "print(1)"}}</tool_call>'
    t = parse_turn(text)
    assert t.kind == "tool_call" and t.think == "zoom in"
    assert t.call.name == "code" and t.call.arguments == {"code": "print(1)"}


def test_code_block_is_a_code_call_and_fence_is_stripped():
    t = parse_turn("<think>x</think><code>\n```python\nprint(2)\n```\n</code>")
    assert t.kind == "tool_call" and t.call.name == "code" and t.call.arguments["code"] == "print(2)"


def test_answer_and_first_action_wins():
    t = parse_turn("<think>it is a star</think><answer> star </answer><tool_call>{}</tool_call>")
    assert t.kind == "answer" and t.answer == "star"
    assert extract_answer("a <answer>1</answer> b <answer>2</answer>") == "2"


def test_action_words_inside_the_thought_are_ignored():
    t = parse_turn("<think>I could write <answer>x</answer> but first</think><answer>y</answer>")
    assert t.answer == "y"


def test_malformed_calls_explain_the_problem():
    cases = {
        "<tool_call>{not json}</tool_call>": "not valid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': "no \"name\"",
        '<tool_call>{"name": "code", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "code"': "never closed",
        "just some text": "no action found",
        "<code>  </code>": "empty",
        "<plan>[]</plan>": "non-empty JSON array",
        '<plan>[{"description": "a"}]</plan>': "tool_name",
    }
    for text, needle in cases.items():
        t = parse_turn(text)
        assert t.kind == "malformed", text
        assert needle in t.error, (text, t.error)


def test_double_encoded_arguments_are_accepted():
    t = parse_turn('<tool_call>{"name": "text_search", "arguments": "{\\"query\\": \\"cats\\"}"}</tool_call>')
    assert t.call.arguments == {"query": "cats"}


def test_plan_roundtrip():
    steps = [PlanStep("find the person", "image_search", {"image_index": 0}),
             PlanStep("look up [Person from Step 1]", "text_search", {"query": "[Person from Step 1] birth year"})]
    t = parse_turn("<think>plan</think>" + format_plan(steps))
    assert t.kind == "plan" and t.plan == steps


def test_cut_after_action_and_format():
    call = format_tool_call("code", {"code": "x"})
    assert cut_after_action("<think>a</think>" + call + "trailing junk") == "<think>a</think>" + call
    assert cut_after_action("no action") == "no action"
    obs = format_observation("saw <image> text", 2)
    assert obs.count("<image>") == 2  # the literal tag in the tool text is escaped
    assert obs.startswith("<observation>") and obs.endswith("</observation>")
