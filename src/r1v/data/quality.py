"""AL-CoTD's sample scorers (R1V section 4.3): QDAM's vision and text scores and VTIA's integration score.

Every sample gets three raw scores in [0, 1]; `r1v.algos.length` min-max normalises them over the
dataset and turns them into the DRLC repetition penalty P.

- vision score S_v (QDAM) = mean(clarity, necessity)
  - clarity, measured from pixels (the paper's only non-LLM property): mean over the sample's images of
    `0.5 * sharpness + 0.5 * resolution`, where sharpness = `1 - exp(-var(Laplacian(grey)) / blur_ref)`
    (variance of the 4-neighbour Laplacian of the 0..255 luma image, the classic blur detector: sharp
    edges give a large variance, blur a small one; `blur_ref` = 100 is the customary blur threshold) and
    resolution = `min(1, sqrt(width * height) / tile_size)` (an image smaller than one tile is upsampled,
    so it carries less detail). A sample without images has clarity 0.
  - necessity: does the question refer to its image? Distinct deictic/reference words ("this",
    "shown", "figure", "diagram", "image", ...) count 1 each, visual nouns (colours, shapes, bars, lines,
    ...) 0.5 per mention: `1 - exp(-hits / 1.5)`.
- text score S_t (QDAM) = mean(quality, difficulty, reasoning demand)
  - quality: mean of a length score (1 for 6..60 words, ramping down outside) and five well-formedness
    checks (starts with a capital or digit, ends with ? . or :, mostly letters, no runs of 4+ identical
    characters, balanced brackets).
  - difficulty: domain terms (1 each, distinct), numbers (0.5 each, at most 6 counted), operators and
    LaTeX commands (1 each): `1 - exp(-raw / 3)`.
  - reasoning demand: multi-hop markers ("then", "if", "how many more", "total", "remaining", ...;
    1 each) plus 0.5 per extra clause (commas, semicolons, "and", "which", "that"): `1 - exp(-raw / 2)`.
- integration score S_I (VTIA): `sigmoid(high - low)` over language patterns. High: causal questions
  (why, how - but not "how many/much" - explain, cause, because; 1 each), presupposition triggers
  (again, still, since, given that, already, another, ...; 0.5 each), spatial relations between objects
  (left of, between, behind, largest, ...; 0.75 each), co-occurring domain terms (0.5 per distinct term
  beyond the first). Low: direct identification openers ("what is the", "what colour", "where is the",
  "identify", "is there", ...; 1 each) and weak text-image dependence (no reference to the image: 1).

All heuristics are deterministic functions of the question text and pixels. Each property can instead
come from an LLM judge (`JudgeScorer`): an OpenAI-compatible endpoint asked for a 0..10 rating, the
reply parsed robustly (`parse_score`); a judge that fails or replies without a number falls back to the
heuristic and the fallback is counted (reported in the run summary, never silent). Clarity is always
measured from pixels, as in the paper.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from r1v.data.schema import Sample

ScorerKind = Literal["heuristic", "judge"]
TextFn = Callable[[str], float]

BLUR_REF = 100.0

_DEICTIC = ("this", "these", "those", "shown", "show", "shows", "pictured", "depicted", "image", "images",
            "picture", "figure", "fig", "diagram", "graph", "chart", "plot", "photo", "table", "map",
            "illustration", "illustrated", "below", "above", "visible", "drawn", "displayed", "see")
_VISUAL_NOUNS = ("circle", "square", "triangle", "star", "rectangle", "polygon", "shape", "object", "bar",
                 "line", "curve", "angle", "point", "segment", "arrow", "label", "axis", "colour", "color",
                 "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "gray",
                 "number", "digit", "block", "ball", "cube", "cylinder", "sphere")
_DOMAIN_TERMS = ("area", "perimeter", "radius", "diameter", "circumference", "angle", "triangle", "hypotenuse",
                 "probability", "equation", "function", "derivative", "integral", "limit", "velocity",
                 "acceleration", "force", "mass", "energy", "density", "pressure", "ratio", "percent",
                 "percentage", "average", "mean", "median", "sum", "product", "difference", "quotient",
                 "volume", "slope", "theorem", "prime", "factor", "fraction", "exponent", "logarithm",
                 "matrix", "vector", "molecule", "reaction", "voltage", "current", "resistance", "parallel",
                 "perpendicular", "congruent", "similar", "tangent", "sine", "cosine", "polynomial",
                 "coordinate", "degree", "degrees", "speed", "distance", "frequency", "wavelength")
_OPERATOR_RE = re.compile(r"[+\-*/=^<>√×÷≤≥≠]|\\[a-zA-Z]+")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_MULTI_HOP = ("then", "if", "after", "before", "how many more", "how many fewer", "more than", "less than",
              "total", "altogether", "remaining", "left over", "each", "both", "difference", "compare",
              "therefore", "given", "suppose", "assume", "which of the following", "so that", "when",
              "while", "times as", "in all", "combined")
_CLAUSE_RE = re.compile(r",|;|\band\b|\bwhich\b|\bthat\b")
_CAUSAL_RE = re.compile(r"\bwhy\b|\bhow\b(?!\s+(?:many|much)\b)|\bexplain\b|\bcause[sd]?\b|\bbecause\b"
                        r"|\blead(?:s)? to\b|\bresult(?:s)? in\b|\beffect\b")
_PRESUPPOSITION = ("again", "still", "stop", "stopped", "continue", "continues", "since", "given that",
                   "already", "remain", "remains", "the fact that", "another", "other", "even", "anymore")
_SPATIAL = ("left of", "right of", "above", "below", "between", "next to", "behind", "in front of", "beside",
            "under", "over", "inside", "outside", "adjacent", "opposite", "closest", "nearest", "farthest",
            "larger than", "smaller than", "largest", "smallest", "taller", "shorter", "on top of")
_DIRECT_ID_RE = re.compile(r"^\s*(?:what|where)\s+(?:is|are)\s+the\b|^\s*what\s+(?:colou?r|shape|kind|type)\b"
                           r"|^\s*what\s+is\s+(?:this|that|it)\b|^\s*which\s+object\b|\bidentify\b|\bname\s+the\b"
                           r"|^\s*(?:is|are)\s+there\b", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _phrase_hits(text: str, phrases: tuple[str, ...]) -> list[str]:
    """The distinct phrases (whole words, plural 's' allowed) that occur in `text`."""
    low = text.lower()
    return [p for p in phrases if re.search(rf"\b{re.escape(p)}s?\b", low)]


def question_text(sample: Sample) -> str:
    """The sample's question without `<image>` placeholders."""
    return sample.question.replace("<image>", " ").strip()


def _saturate(raw: float, scale: float) -> float:
    return 1.0 - math.exp(-max(raw, 0.0) / scale)


# ------------------------------------------------------------------------------------------ pixels


def grey_array(image: Any) -> np.ndarray:
    """An image reference -> float64 `[H, W]` luma in 0..255 (ITU-R 601 weights)."""
    from r1v.processing.images import load_image

    rgb = np.asarray(load_image(image), dtype=np.float64)  # [H, W, 3]
    return rgb @ np.array([0.299, 0.587, 0.114])


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian `[[0,1,0],[1,-4,1],[0,1,0]]` over the interior pixels."""
    if grey.ndim != 2 or min(grey.shape) < 3:
        return 0.0
    lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1])
    return float(lap.var())


def sharpness(grey: np.ndarray, blur_ref: float = BLUR_REF) -> float:
    """`1 - exp(-laplacian_variance / blur_ref)` in [0, 1): 0 for a flat or very blurred image."""
    return _saturate(laplacian_variance(grey), blur_ref)


def resolution_score(width: int, height: int, tile_size: int = 448) -> float:
    """`min(1, sqrt(width * height) / tile_size)`: 1 for images at least one tile in size."""
    return min(1.0, math.sqrt(max(width, 0) * max(height, 0)) / tile_size)


def clarity(image: Any, tile_size: int = 448, blur_ref: float = BLUR_REF) -> float:
    """`0.5 * sharpness + 0.5 * resolution` of one image (raises `ImageError` for a bad image)."""
    g = grey_array(image)
    return 0.5 * sharpness(g, blur_ref) + 0.5 * resolution_score(g.shape[1], g.shape[0], tile_size)


# ------------------------------------------------------------------------------------------ text heuristics


def necessity(question: str) -> float:
    """How much the question points at its image: deictic words + visual nouns, saturating in [0, 1)."""
    words = _words(question)
    deictic = len(set(words) & set(_DEICTIC))
    counts = Counter(w[:-1] if w.endswith("s") and w[:-1] in _VISUAL_NOUNS else w for w in words)
    visual = sum(counts[n] for n in _VISUAL_NOUNS)
    return _saturate(deictic + 0.5 * visual, 1.5)


def question_quality(question: str) -> float:
    """Length in a sensible range plus five well-formedness checks, averaged, in [0, 1]."""
    q = question.strip()
    if not q:
        return 0.0
    n = len(q.split())
    length = n / 6 if n < 6 else (60 / n if n > 60 else 1.0)
    visible = [c for c in q if not c.isspace()]
    letters = sum(c.isalpha() for c in visible) / len(visible)
    balanced = all(q.count(a) == q.count(b) for a, b in ("()", "[]", "{}"))
    checks = [q[0].isupper() or q[0].isdigit() or q[0] in "$\\(", q[-1] in "?.:", letters >= 0.6,
              re.search(r"(.)\1{3,}", q) is None, balanced]
    return (length + sum(checks)) / (1 + len(checks))


def difficulty(question: str) -> float:
    """Domain terms, numbers and operators, saturating in [0, 1)."""
    terms = len(_phrase_hits(question, _DOMAIN_TERMS))
    numbers = min(len(_NUMBER_RE.findall(question)), 6)
    operators = len(_OPERATOR_RE.findall(question.replace("?", "")))
    return _saturate(terms + 0.5 * numbers + operators, 3.0)


def reasoning_demand(question: str) -> float:
    """Multi-hop markers plus extra clauses, saturating in [0, 1)."""
    markers = len(_phrase_hits(question, _MULTI_HOP))
    clauses = len(_CLAUSE_RE.findall(question.lower()))
    return _saturate(markers + 0.5 * clauses, 2.0)


def integration(question: str) -> float:
    """VTIA: `sigmoid(high - low)` over the language patterns listed in the module docstring."""
    low_q = question.lower()
    high = (1.0 * len(set(_CAUSAL_RE.findall(low_q)))
            + 0.5 * len(_phrase_hits(question, _PRESUPPOSITION))
            + 0.75 * len(_phrase_hits(question, _SPATIAL))
            + 0.5 * max(len(_phrase_hits(question, _DOMAIN_TERMS)) - 1, 0))
    low = 1.0 * len(_DIRECT_ID_RE.findall(question)) + (1.0 if necessity(question) == 0.0 else 0.0)
    return 1.0 / (1.0 + math.exp(-(high - low)))


def text_score(question: str) -> float:
    """QDAM S_t = mean(quality, difficulty, reasoning demand)."""
    return (question_quality(question) + difficulty(question) + reasoning_demand(question)) / 3.0


# ------------------------------------------------------------------------------------------ LLM judge

JUDGE_PROMPTS = {
    "necessity": "Rate from 0 to 10 how much answering the question below requires looking at the image that "
                 "comes with it (0: answerable from the text alone; 10: impossible without the image).",
    "text": "Rate from 0 to 10 the question below as a reasoning exercise: well-formed and coherent, needing "
            "domain knowledge, and needing several reasoning steps (0: trivial or garbled; 10: excellent, hard, "
            "multi-step).",
    "integration": "Rate from 0 to 10 how tightly the question below binds its text to the image: causal or "
                   "explanatory questions, relations between several objects and domain terms score high; "
                   "direct identification ('what is the ...', 'where is the ...') scores low.",
}
_JUDGE_TAIL = "\nReply with the number only.\n\nQuestion:\n{question}\n"
_SCORE_KEY_RE = re.compile(r"(?:score|rating)\"?\s*[:=]\s*\"?(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_FRACTION_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_ANY_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(reply: str | None, scale: float = 10.0) -> float | None:
    """A judge reply -> a score in [0, 1], or None when it holds no usable number.

    Understood, in this order: `score: 7` / `"rating": 7` (JSON too), `7/10` / `7 out of 10` (any
    denominator), else the first number. Values outside [0, scale] (or the fraction's own range) are
    rejected, not clipped, so a reply such as "2024" is never read as a score.
    """
    if reply is None:
        return None
    text = reply.replace("**", " ")
    m = _SCORE_KEY_RE.search(text)
    if m:
        value, top = float(m.group(1)), scale
    elif (f := _FRACTION_RE.search(text)) is not None and float(f.group(2)) > 0:
        value, top = float(f.group(1)), float(f.group(2))
    elif (n := _ANY_NUMBER_RE.search(text)) is not None:
        value, top = float(n.group(0)), scale
    else:
        return None
    if not 0.0 <= value <= top:
        return None
    return value / top


class JudgeScorer:
    """One property rated by an LLM judge (`r1v.eval.judge.Judge`): `scorer(question) -> [0, 1] | None`."""

    def __init__(self, judge: Any, prop: str, scale: float = 10.0) -> None:
        if prop not in JUDGE_PROMPTS:
            raise ValueError(f"unknown judge property {prop!r}; known: {', '.join(JUDGE_PROMPTS)}")
        self.judge, self.prop, self.scale = judge, prop, scale

    def __call__(self, question: str) -> float | None:
        reply = self.judge.ask(JUDGE_PROMPTS[self.prop] + _JUDGE_TAIL.format(question=question))
        return parse_score(reply, self.scale)


# ------------------------------------------------------------------------------------------ all three


@dataclass
class SampleScores:
    """Raw scores of one sample and the parts they were made from."""

    sv: float
    st: float
    si: float
    parts: dict[str, float] = field(default_factory=dict)


class Scorers:
    """S_v, S_t, S_I for a sample, each from the heuristics or a judge (with counted fallbacks).

    `Scorers(vision="judge", judge=Judge(url, model))` asks the judge for necessity (clarity stays
    pixel-based), `text="judge"` for S_t, `integration="judge"` for S_I.
    """

    def __init__(self, vision: ScorerKind = "heuristic", text: ScorerKind = "heuristic",
                 integration: ScorerKind = "heuristic", *, judge: Any = None, tile_size: int = 448,
                 blur_ref: float = BLUR_REF) -> None:
        kinds = {"vision": vision, "text": text, "integration": integration}
        if judge is None and "judge" in kinds.values():
            raise ValueError(f"scorers {[k for k, v in kinds.items() if v == 'judge']} use a judge but none given")
        self.kinds = kinds
        self.tile_size, self.blur_ref = tile_size, blur_ref
        self.judged: dict[str, JudgeScorer | None] = {
            "necessity": JudgeScorer(judge, "necessity") if vision == "judge" else None,
            "text": JudgeScorer(judge, "text") if text == "judge" else None,
            "integration": JudgeScorer(judge, "integration") if integration == "judge" else None,
        }
        self.fallbacks: Counter[str] = Counter()  # judge failures answered by the heuristic

    def _judge_or(self, prop: str, question: str, heuristic: TextFn) -> float:
        scorer = self.judged[prop]
        if scorer is not None:
            value = scorer(question)
            if value is not None:
                return value
            self.fallbacks[prop] += 1
        return heuristic(question)

    def score(self, sample: Sample) -> SampleScores:
        """Raw S_v, S_t, S_I of `sample`; loads its images (an unusable image raises `ImageError`)."""
        q = question_text(sample)
        clar = [clarity(img, self.tile_size, self.blur_ref) for img in sample.images]
        parts = {"clarity": sum(clar) / len(clar) if clar else 0.0,
                 "necessity": self._judge_or("necessity", q, necessity)}
        if self.judged["text"] is None:
            parts.update(quality=question_quality(q), difficulty=difficulty(q), reasoning=reasoning_demand(q))
            st = (parts["quality"] + parts["difficulty"] + parts["reasoning"]) / 3.0
        else:
            st = self._judge_or("text", q, text_score)
        si = self._judge_or("integration", q, integration)
        sv = (parts["clarity"] + parts["necessity"]) / 2.0
        return SampleScores(sv=sv, st=st, si=si, parts={k: round(v, 6) for k, v in parts.items()})
