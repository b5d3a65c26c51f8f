"""Hallucination rate: a concrete, checkable definition (R1V2 reports a rate without defining one).

Scope. Only completions for samples whose ground-truth scene is known are scored: r1v's rendered tasks
(`r1v.data.synthetic`, `meta["scene"]`). Everything else is counted as `unscored`, never guessed.

Claims. The whole completion (thinking and answer) is lower-cased and scanned with simple patterns over
the scene's closed vocabulary (colours, shape kinds, bar labels, number words 0..20):
- object claims: `quantity [colour] kind` where quantity is a number, a number word or "a"/"an"
  (e.g. "3 red circles", "a blue star", "two squares", "5 shapes"). Mentions without a quantity ("the
  green stars", "circles"), mentions inside a question sentence ("is there a red square?") and mentions
  preceded within three words by a negation ("no", "not", "zero", "without", "none", "n't", "never")
  assert nothing and are skipped.
- value claims: "bar B is 7", "the bar for B has a value of 7", "B = 7", "the value of B is 7";
  and for drawn numbers "the number is 42", "the number written/shown/drawn ... is 42".

A completion hallucinates when at least one of these holds:
- `object`: it asserts a shape that is not in the scene: a colour+kind pair (or a kind, when no colour is
  named) with zero instances. Colours and kinds outside the scene's vocabulary are not claims.
- `count`: it asserts more instances than exist ("4 red circles" when there are 3; "7 shapes" when there
  are 6). Under-counting is an omission and is left to accuracy, not counted as hallucination.
- `value`: it gives a bar label a value different from the chart's, names a bar label that is not in the
  chart with a value, or reads a drawn number that differs from the one drawn.
- `unanswerable`: on an unanswerable question (`meta["unanswerable"]`, gold "0"/"none") its final answer
  (last `\\boxed{}`, else `<answer>...</answer>`, else "Answer: ..." line, else the last number) is a
  positive number or any answer other than none/0/no/zero/nothing. A completion with no final answer is
  not a positive assertion.

Rate = hallucinating completions / completions scored. The report also counts completions per kind
(a completion may show several kinds), and the unanswerable subset's own rate.

Limits, stated honestly: patterns miss paraphrases ("a trio of circles") and may mis-read partial counts
("2 red circles in the top row" when 3 exist is fine; "4 red circles on the left" when 3 exist in total is
flagged, correctly). The patterns are the definition: the same text always gets the same verdict.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from r1v.data.schema import Sample
from r1v.data.synthetic import COLOURS, SHAPES

DEFINITION = ("share of completions on rendered tasks (known scenes) that assert an absent shape, more "
              "instances than exist, a wrong bar/number value, or a positive answer to an unanswerable "
              "question (r1v.eval.hallucination)")
KINDS = ("object", "count", "value", "unanswerable")

NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NEGATIONS = {"no", "not", "zero", "without", "none", "never", "nor", "n't", "isn't", "aren't", "absent"}
NONE_ANSWERS = {"0", "none", "no", "zero", "nothing", "n/a", "na", "null", "not present", "there is none",
                "no such bar", "not in the image", "does not exist", "unanswerable", "cannot be determined"}
GENERIC = ("shape", "object")

_QTY = r"(?P<qty>\d+|" + "|".join(NUMBER_WORDS) + r"|an?)"
_COL = r"(?P<col>" + "|".join(COLOURS) + r")"
_KIND = r"(?P<kind>" + "|".join(SHAPES + GENERIC) + r")(?P<pl>e?s)?\b"
OBJECT_RE = re.compile(r"\b(?:" + _QTY + r"\s+)?(?:" + _COL + r"\s+)?" + _KIND)
_NUM = r"(?P<val>-?\d+(?:\.\d+)?|" + "|".join(NUMBER_WORDS) + r")\b"
_LAB = r"(?P<lab>[a-h])"
BAR_RES = [
    re.compile(r"\bbar\s+(?:for\s+|labell?ed\s+|of\s+)?" + _LAB + r"\b[^.\n\d]{0,30}?\b(?:is|=|:|has|shows|reaches|"
               r"equals|of|at|value)\b[^.\n\d]{0,20}?" + _NUM),
    re.compile(r"\b" + _LAB + r"\s*(?:=|:)\s*" + _NUM),
    re.compile(r"\bvalue\s+(?:of|for)\s+(?:bar\s+)?" + _LAB + r"\s+(?:is|=)\s+" + _NUM),
    re.compile(r"\b" + _LAB + r"\s+bar\s+(?:is|has|shows|reaches|=)[^.\n\d]{0,20}?" + _NUM),
]
NUMBER_RES = [
    re.compile(r"\bnumber\s+(?:\w+\s+){0,5}?(?:is|reads|=|:)\s+(?:the\s+number\s+)?" + _NUM),
    re.compile(r"\b(?:shows|reads|says|displays)\s+(?:the\s+number\s+)?" + _NUM),
]
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.I)


@dataclass
class Claim:
    """One contradicted claim found in a completion."""

    kind: str  # object | count | value | unanswerable
    text: str  # the matched text
    detail: str  # what the scene says instead


def _num(token: str) -> float | None:
    token = token.strip().lower()
    if token in NUMBER_WORDS:
        return float(NUMBER_WORDS[token])
    try:
        return float(token)
    except ValueError:
        return None


def _negated(text: str, start: int) -> bool:
    before = re.findall(r"[a-z']+|\d+", text[max(0, start - 40):start])
    return any(w in NEGATIONS or w.endswith("n't") for w in before[-3:])


def _in_question(text: str, end: int) -> bool:
    """Whether the sentence holding position `end` ends with a question mark."""
    m = re.search(r"[.!?\n]", text[end:])
    return bool(m) and m.group(0) == "?"


def final_answer(completion: str) -> str | None:
    """The completion's final answer: last `\\boxed{}`, else `<answer>`, else an "Answer:" line, else the
    last number after any `</think>`; None when there is none."""
    text = completion.rsplit("</think>", 1)[-1]
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    tag = _ANSWER_TAG.findall(text)
    if tag:
        return tag[-1].strip()
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip().rstrip(".")
    nums = re.findall(r"-?\d+(?:\.\d+)?", text)
    return nums[-1] if nums else None


def _is_none_answer(answer: str) -> bool:
    a = re.sub(r"\\text\{([^}]*)\}", r"\1", answer).strip().strip("$.").lower()
    if a in NONE_ANSWERS:
        return True
    value = _num(a)
    if value is not None:
        return value == 0
    return any(a.startswith(n + " ") for n in ("no", "none", "zero", "0")) or "no such" in a


def _object_claims(text: str, scene: dict[str, Any]) -> list[Claim]:
    shapes = [o for o in scene["objects"] if o["kind"] in SHAPES]
    pairs = Counter((o["colour"], o["kind"]) for o in shapes)
    kinds = Counter(o["kind"] for o in shapes)
    colours = Counter(o["colour"] for o in shapes)
    out = []
    for m in OBJECT_RE.finditer(text):
        qty, col, kind = m.group("qty"), m.group("col"), m.group("kind")
        if _negated(text, m.start()):
            continue
        if qty is None or _in_question(text, m.end()):
            continue  # "the green stars", "circles", "is there a red square?" assert nothing
        n = _num(qty) if qty not in ("a", "an") else None
        if n == 0:
            continue
        if kind in GENERIC:
            have = colours[col] if col else len(shapes)
        else:
            have = pairs[(col, kind)] if col else kinds[kind]
        what = f"{col + ' ' if col else ''}{kind}"
        if have == 0 and (kind not in GENERIC or col):
            out.append(Claim("object", m.group(0), f"no {what} in the scene"))
        elif n is not None and n > have:
            out.append(Claim("count", m.group(0), f"{have} {what}(s) in the scene"))
    return out


def _value_claims(text: str, scene: dict[str, Any]) -> list[Claim]:
    objects = scene["objects"]
    out = []
    bars = {o["label"].lower(): o["value"] for o in objects if o["kind"] == "bar"}
    if bars:
        seen: set[tuple[int, int]] = set()
        for rx in BAR_RES:
            for m in rx.finditer(text):
                if (m.start(), m.end()) in seen:
                    continue
                seen.add((m.start(), m.end()))
                lab, val = m.group("lab"), _num(m.group("val"))
                if val is None:
                    continue
                if lab not in bars:
                    if val != 0:
                        out.append(Claim("value", m.group(0), f"no bar {lab.upper()} in the chart"))
                elif val != bars[lab]:
                    out.append(Claim("value", m.group(0), f"bar {lab.upper()} is {bars[lab]}"))
    drawn = [o["value"] for o in objects if o["kind"] == "number"]
    if drawn:
        for rx in NUMBER_RES:
            for m in rx.finditer(text):
                val = _num(m.group("val"))
                if val is not None and val not in drawn:
                    out.append(Claim("value", m.group(0), f"the number drawn is {drawn[0]}"))
    return out


def find_hallucinations(sample: Sample, completion: str) -> list[Claim] | None:
    """Contradicted claims of `completion` about `sample`'s scene; None when the sample has no known scene."""
    scene = sample.meta.get("scene")
    if not isinstance(scene, dict) or "objects" not in scene:
        return None
    text = completion.lower().replace("\u2019", "'")
    claims = _object_claims(text, scene) + _value_claims(text, scene)
    if sample.meta.get("unanswerable"):
        ans = final_answer(completion)
        if ans is not None and not _is_none_answer(ans):
            claims.append(Claim("unanswerable", ans, "the question asks about something not in the image"))
    return claims


def hallucination_report(samples: Sequence[Sample], completions: Sequence[str] | Mapping[str, str],
                         *, with_items: bool = True) -> dict[str, Any]:
    """Score completions (aligned with `samples`, or a mapping id -> completion) for hallucination.

    Returns `{"definition", "rate", "hallucinated", "scored", "unscored", "by_kind": {kind: completions},
    "unanswerable": {"scored", "hallucinated", "rate"}, "by_family": {family: {"scored", "hallucinated"}},
    "items": {id: {"hallucinated", "claims": [...]}}}`; rate is None when nothing was scorable.
    """
    if isinstance(completions, Mapping):
        pairs = [(s, completions[s.id]) for s in samples if s.id in completions]
    else:
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions for {len(samples)} samples")
        pairs = list(zip(samples, completions, strict=True))
    scored = bad = unscored = 0
    by_kind = dict.fromkeys(KINDS, 0)
    un = {"scored": 0, "hallucinated": 0}
    fam: dict[str, dict[str, int]] = {}
    items: dict[str, Any] = {}
    for i, (sample, text) in enumerate(pairs):
        claims = find_hallucinations(sample, text or "")
        if claims is None:
            unscored += 1
            continue
        scored += 1
        hit = bool(claims)
        bad += hit
        for k in {c.kind for c in claims}:
            by_kind[k] += 1
        f = fam.setdefault(str(sample.meta.get("family", "unknown")), {"scored": 0, "hallucinated": 0})
        f["scored"] += 1
        f["hallucinated"] += hit
        if sample.meta.get("unanswerable"):
            un["scored"] += 1
            un["hallucinated"] += hit
        if with_items:
            key = sample.id if sample.id not in items else f"{sample.id}#{i}"
            items[key] = {"hallucinated": hit, "claims": [asdict(c) for c in claims]}
    return {
        "definition": DEFINITION,
        "rate": bad / scored if scored else None,
        "hallucinated": bad,
        "scored": scored,
        "unscored": unscored,
        "by_kind": by_kind,
        "unanswerable": {**un, "rate": un["hallucinated"] / un["scored"] if un["scored"] else None},
        "by_family": fam,
        **({"items": items} if with_items else {}),
    }
