"""Answer extraction from model completions, shared by rewards and benchmark scorers.

Every function here is pure string work (no sympy, no processes), so it is safe to call anywhere.

Rules, in the order the functions apply them:
- `split_think`: reasoning is the text inside `<think>...</think>`; the answer part is the text after the
  LAST `</think>`. A completion that opens `<think>` and never closes it was cut off: its answer part is "".
  A completion with `</think>` but no `<think>` (the R1V3 template pre-fills `<think>` in the prompt) has
  its reasoning = everything before the last `</think>`.
- `last_boxed`: the content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces, or of the
  brace-less form `\\boxed 5`; None when there is none or the last one is unclosed (truncated output).
- `extract_answer`: on the answer part: the last `<answer>...</answer>` (its `\\boxed{}` content when it has
  one), else the last `\\boxed{}`, else the last "Answer: X" / "the answer is X" line.
- `extract_choice`: a multiple-choice letter from a boxed letter, "Answer: B", "(B)", a bare letter, or the
  text of exactly one option (the last one mentioned when several are).
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_ANSWER_LINE_RES = [
    re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE),
]


def split_think(text: str) -> tuple[str | None, str]:
    """Split a completion into (reasoning, answer part); see the module docstring for the rule."""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        before = text[:close]
        opened = before.find(THINK_OPEN)
        think = before[opened + len(THINK_OPEN):] if opened >= 0 else before
        return think.strip(), text[close + len(THINK_CLOSE):]
    opened = text.find(THINK_OPEN)
    if opened >= 0:
        return text[opened + len(THINK_OPEN):].strip(), ""
    return None, text


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the `{...}` group opening at `text[start]`, and the index after it; None if unclosed."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # escaped brace: \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`/`\\fbox{...}` (balanced braces) or `\\boxed X`; None if absent or unclosed."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        got = _braced(rest, len(rest) - len(stripped))
        return got[0].strip() if got else None
    if rest[:1].isspace():  # "\boxed 5": up to the next whitespace or `$`
        token = re.match(r"[^\s$]+", stripped)
        return token.group(0) if token else None
    return None


def _clean_line_answer(ans: str) -> str:
    for _ in range(2):  # "**17**." -> "17"
        ans = ans.strip().rstrip(".。").strip()
        ans = re.sub(r"^\*+|\*+$", "", ans).strip()  # markdown bold
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    return ans


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (see the module docstring), or None when there is none."""
    _, part = split_think(text)
    if not part.strip():
        return None
    tags = _ANSWER_TAG_RE.findall(part)
    if tags:
        inner = tags[-1]
        boxed = last_boxed(inner)
        ans = boxed if boxed is not None else _clean_line_answer(inner)
        return ans or None
    boxed = last_boxed(part)
    if boxed is not None:
        return boxed or None
    for line in reversed(part.strip().splitlines()):
        for regex in _ANSWER_LINE_RES:
            found = regex.findall(line)
            if found:
                ans = _clean_line_answer(found[-1])
                if ans:
                    return ans
    return None


def _strip_latex_wrappers(s: str) -> str:
    """`\\text{(B)}` -> `(B)`, `$B$` -> `B`, `**B**` -> `B`."""
    s = s.strip()
    for _ in range(3):
        m = re.fullmatch(r"\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}", s, re.DOTALL)
        if m:
            s = m.group(1).strip()
        s = s.strip("$* ").strip()
    return s


def _letter_of(s: str, valid: str) -> str | None:
    """A letter when `s` is just a letter: `B`, `(B)`, `B.`, `B)`, `[B]`, `B: text`, `B. text`."""
    s = _strip_latex_wrappers(s)
    m = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?\.?", s)
    if not m:
        m = re.match(r"[\(\[]?([A-Z])(?:[\)\]]|[.:：])\s", s)
    if m:
        letter = m.group(1).upper()
        if letter in valid:
            return letter
    return None


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", _strip_latex_wrappers(s)).strip().lower().rstrip(".")


def _match_option_text(s: str, choices: list[str], valid: str) -> str | None:
    """The letter whose option text is mentioned in `s` (exact match first, then the last mentioned)."""
    norm = _norm_text(s)
    if not norm:
        return None
    texts = [_norm_text(c) for c in choices]
    exact = [i for i, t in enumerate(texts) if t and t == norm]
    if len(exact) == 1:
        return valid[exact[0]]
    best, best_key = None, (-1, -1)
    for i, t in enumerate(texts):
        hits = [m.start() for m in re.finditer(r"(?<!\w)" + re.escape(t) + r"(?!\w)", norm)] if t else []
        pos = hits[-1] if hits else -1  # whole-word mention only: option "r" is not in "answer"
        # the option mentioned last wins; at the same end ("13" vs "3") the longer text wins
        key = (pos + len(t), len(t))
        if pos >= 0 and key > best_key:
            best, best_key = i, key
    return valid[best] if best is not None else None


def extract_choice(text: str, choices: list[str] | None = None,
                   letters: str = DEFAULT_LETTERS) -> str | None:
    """A multiple-choice letter from a completion, or None.

    Order: boxed letter (or boxed option text), `<answer>` letter, the last "Answer: B" / "answer is (B)",
    a reply that is only a letter, the last "(B)", then option text (needs `choices`).
    Valid letters are `letters[:len(choices)]` when choices are given, else all of `letters`.
    """
    valid = letters[:len(choices)] if choices else letters
    _, part = split_think(text)
    if not part.strip():
        return None
    boxed = last_boxed(part)
    if boxed is not None:
        got = _letter_of(boxed, valid)
        if got is None and choices:
            got = _match_option_text(boxed, choices, valid) if _norm_text(boxed) else None
        if got:
            return got
    tags = _ANSWER_TAG_RE.findall(part)
    if tags:
        got = _letter_of(tags[-1], valid)
        if got:
            return got
    letter_group = f"[{re.escape(valid)}]"
    answer_re = re.compile(
        r"(?i:answer)\s*(?:(?i:is)|:|：)\s*(?:(?i:option)\s*)?[\*\$\s]*(?:\\text\{)?[\(\[]?("
        + letter_group + r")[\)\]]?(?![A-Za-z])")
    found = answer_re.findall(part)
    if found:
        return found[-1]
    got = _letter_of(part, valid)
    if got:
        return got
    paren = [m.group(1) for m in re.finditer(r"\((" + letter_group + r")\)", part)]
    if paren:
        return paren[-1]
    if choices:
        return _match_option_text(part, choices, valid)
    return None
