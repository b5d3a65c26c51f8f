"""Skywork's post-hoc boxed rule (spec §9, Skywork-R1V eval/vlmevalkit/eval_shell/rule_base_mmmu.py).

Skywork re-scores VLMEvalKit results: take the LAST `\\boxed{...}` found by a non-nested, non-greedy
regex (so `\\boxed{\\frac{1}{2}}` yields `\\frac{1`), strip it; the item is correct if it equals the gold
answer, or if both are equal after normalising (drop `$`, every `\\command` and all whitespace, strip one
leading `{` and one trailing `}`, lowercase). Otherwise Skywork falls back to the judge's verdict; here
it is reported beside the official rule as its own number and as "official OR boxed".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_BOXED_NON_NESTED = re.compile(r"\\boxed\{(.*?)\}")


def skywork_normalize(text: str) -> str:
    """`re.sub(r'\\$|\\\\[a-z]+|\\s+', '', s)`, strip one outer `{` / `}`, lowercase."""
    text = re.sub(r"\$|\\[a-z]+|\s+", "", text)
    text = re.sub(r"^\{|\}$", "", text)
    return text.lower()


def skywork_boxed(response: str) -> str | None:
    """The last `\\boxed{...}` content as Skywork's regex finds it, or None."""
    found = _BOXED_NON_NESTED.findall(response)
    return found[-1].strip() if found else None


def skywork_match(response: str, gold: str | Sequence[str]) -> bool:
    """True when the last boxed answer equals the gold (raw or normalised); a gold list accepts any."""
    boxed = skywork_boxed(response)
    if boxed is None:
        return False
    golds = [gold] if isinstance(gold, str) else list(gold)
    for g in golds:
        g = str(g).strip()
        if boxed == g or skywork_normalize(boxed) == skywork_normalize(g):
            return True
    return False
