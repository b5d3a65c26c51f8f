"""Preference pairs, beside the other records: reading pair files, filtering, and building pairs from judged
completions (the MPO pair builder).

- `read_pairs(spec)`: a pairs file (.jsonl/.json/.parquet; records `{"question"|"messages", "image"?,
  "answer"?, "chosen", "rejected", "chosen_score"?, "rejected_score"?}`) or `synthetic:N`, keeping file and
  record for error messages; bad records go through the `on_bad_sample` policy. `pair_record` writes one.
- `filter_pairs`: drop ties and pairs whose known score margin is below the threshold.
- `build_pairs`: from judged, scored completions per prompt, pair the best chosen with the worst rejected
  candidates (`r1v.eval.generate.generate_pairs` samples and judges them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from r1v.data.demo_tasks import think_target
from r1v.data.schema import PreferencePair, Sample
from r1v.data.sources import iter_records, record_to_sample, sample_to_record
from r1v.data.stage_data import SYNTHETIC_RE, BadSamples
from r1v.errors import DataError

# ---------------------------------------------------------------------------------------------- pairs

@dataclass
class PairRow:
    """A preference pair and where it came from (file and record), for error messages."""

    pair: PreferencePair
    source: str
    record: int | str


def _score(rec: dict, key: str, source: str, where: int | str) -> float | None:
    value = rec.pop(key, None)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{key} must be a number, got {value!r}", source=source, record=where, field=key) from None


def record_to_pair(rec: Any, *, source: str, record: int | str, image_root: Path) -> PreferencePair:
    """One pairs-file record -> `PreferencePair` (the prompt as any `record_to_sample` shape)."""
    if not isinstance(rec, dict):
        raise DataError(f"record must be a JSON object, got {type(rec).__name__}", source=source, record=record)
    rec = dict(rec)
    texts = {}
    for key in ("chosen", "rejected"):
        value = rec.pop(key, None)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"a preference pair needs a non-empty string {key!r}", source=source, record=record,
                            field=key)
        texts[key] = value
    scores = {k: _score(rec, k, source, record) for k in ("chosen_score", "rejected_score")}
    sample = record_to_sample(rec, source=source, record=record, image_root=image_root)
    sample = replace(sample, messages=sample.prompt_messages())
    return PreferencePair(sample, texts["chosen"], texts["rejected"], scores["chosen_score"], scores["rejected_score"])


def pair_record(pair: PreferencePair, base: Path | None = None, image_dir: Path | None = None) -> dict[str, Any]:
    """A `PreferencePair` as a pairs-file record (what `read_pairs` reads back); in-memory images go to
    `image_dir`."""
    rec = sample_to_record(pair.sample, base=base, image_dir=image_dir)
    rec.update(chosen=pair.chosen, rejected=pair.rejected, chosen_score=pair.chosen_score,
               rejected_score=pair.rejected_score)
    return rec


def _wrong_answer(answer: str) -> str:
    try:
        return str(int(answer) + 1)
    except ValueError:
        return "none" if answer != "none" else "red"


def synthetic_pairs(n: int, seed: int = 0) -> list[PairRow]:
    """`n` rendered tasks, chosen = a short correct `<think>` chain, rejected = the same reasoning reaching a
    wrong answer (micro runs and tests)."""
    from r1v.data.benchmarks import with_prompt
    from r1v.data.synthetic import generate_tasks

    rows = []
    for i, task in enumerate(generate_tasks(n, seed=seed, split="train", image_size=112)):
        s = with_prompt(task, "r1v")
        chosen = think_target(task)
        rejected = think_target(replace(task, answer=_wrong_answer(str(task.answer))))
        rows.append(PairRow(PreferencePair(s, chosen, rejected, 1.0, 0.0), "synthetic:pairs", i))
    return rows


def read_pairs(spec: str | Path, *, image_root: Path | None = None, bad: BadSamples | None = None) -> list[PairRow]:
    """Pairs from a .jsonl/.json/.parquet file or `synthetic:N`; bad records go through `bad`."""
    bad = bad or BadSamples()
    m = SYNTHETIC_RE.match(str(spec))
    if m:
        return synthetic_pairs(int(m.group(2)))
    path = Path(spec)
    root = Path(image_root) if image_root is not None else path.parent
    rows = []
    for where, rec in iter_records(path):
        if isinstance(rec, DataError):
            bad.handle(rec, "malformed")
            continue
        try:
            rows.append(PairRow(record_to_pair(rec, source=str(path), record=where, image_root=root), str(path), where))
        except DataError as e:
            bad.handle(e, "image" if e.field in ("image", "images") else "malformed")
    return rows


def filter_pairs(rows: Sequence[PairRow], margin_threshold: float, counts: Counter[str], *,
                 drop_score_ties: bool = False) -> list[PairRow]:
    """Drop ties (identical texts; equal known scores when `drop_score_ties`) and pairs whose known score
    margin is below the threshold."""
    kept = []
    for r in rows:
        p = r.pair
        known = p.chosen_score is not None and p.rejected_score is not None
        if p.chosen.strip() == p.rejected.strip() or (drop_score_ties and known and p.chosen_score == p.rejected_score):
            counts["tie"] += 1
        elif known and p.chosen_score - p.rejected_score < margin_threshold:
            counts["below_margin"] += 1
        else:
            kept.append(r)
    return kept


def build_pairs(samples: Sequence[Sample], groups: Sequence[Sequence[str]], verdicts: Sequence[Sequence[dict]],
                scores: Sequence[Sequence[float]], *, margin_threshold: float, pairs_per_prompt: int,
                counts: Counter[str]) -> list[PreferencePair]:
    """Best chosen candidates x worst rejected candidates per prompt, margin-checked: a candidate is chosen when
    correct, well-formed and not hallucinated, rejected otherwise; pairs are formed best-chosen first against
    worst-rejected first while `score(chosen) - score(rejected) >= margin_threshold`."""
    pairs = []
    for s, texts, vs, sc in zip(samples, groups, verdicts, scores, strict=True):
        good = [i for i, v in enumerate(vs) if v["correct"] and v["well_formed"] and not v["hallucinated"]]
        bad = [i for i, v in enumerate(vs) if not v["correct"] or not v["well_formed"] or v["hallucinated"]]
        if not good or not bad:
            counts["no_good" if not good else "no_bad"] += 1
            continue
        good.sort(key=lambda i: -sc[i])
        bad.sort(key=lambda i: sc[i])
        made = 0
        for gi, bi in zip(good, bad, strict=False):
            if made >= pairs_per_prompt:
                break
            if texts[gi].strip() == texts[bi].strip():
                counts["tie"] += 1
                continue
            if sc[gi] - sc[bi] < margin_threshold:
                counts["below_margin"] += 1
                break  # later candidates have smaller margins
            pairs.append(PreferencePair(s, texts[gi], texts[bi], sc[gi], sc[bi]))
            made += 1
        counts["pairs"] += made
    return pairs
