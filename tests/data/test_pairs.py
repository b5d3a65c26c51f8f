"""The MPO pair builder: best chosen x worst rejected per prompt, margin-checked; rule constraints."""

from __future__ import annotations

from collections import Counter

from r1v.data.pairs import build_pairs
from r1v.data.schema import Sample


def test_pairs_follow_the_rule_constraints_and_margin() -> None:
    s = Sample.from_question("q", "What?", answer="4")
    texts = ["good", "best", "wrong", "worst"]
    v = [{"correct": True, "well_formed": True, "hallucinated": False}, {"correct": True, "well_formed": True,
                                                                           "hallucinated": None},
         {"correct": False, "well_formed": True, "hallucinated": False},
         {"correct": True, "well_formed": True, "hallucinated": True}]
    counts: Counter[str] = Counter()
    pairs = build_pairs([s], [texts], [v], [[1.0, 2.0, 0.5, -1.0]], margin_threshold=0.0, pairs_per_prompt=2,
                        counts=counts)
    assert [(p.chosen, p.rejected) for p in pairs] == [("best", "worst"), ("good", "wrong")]
    pairs = build_pairs([s], [texts], [v], [[1.0, 2.0, 0.5, -1.0]], margin_threshold=2.5, pairs_per_prompt=2,
                        counts=counts)
    assert [(p.chosen, p.rejected) for p in pairs] == [("best", "worst")] and counts["below_margin"] == 1
    build_pairs([s], [["a", "b"]], [[v[2], v[3]]], [[0.0, 0.0]], margin_threshold=0.0, pairs_per_prompt=1,
                counts=counts)
    assert counts["no_good"] == 1
