"""`r1v score`: score existing model outputs with a benchmark's official rule and print/save the report.

Benchmarks and what `--outputs` / `--gold` are:
- mmmu: the official per-subject folder (`<model>/<Subject>/output.json`, records with id, question_type,
  answer, all_choices, index2ans, response) or one JSON/JSONL of such records. `--gold answer_dict_val.json`
  (optional) makes the 900 ids expected and takes the gold answers from it.
- mathvista: `output_*.json` ({pid: record} with response and optionally extraction; gold from the record's
  own answer/choices/answer_type/precision/metadata). `--gold testmini.json` (optional) supplies missing gold
  fields and makes every pid expected.
- mathverse, k12, math500, aime24: JSON/JSONL of {id, response} (MathVerse may use `sample_index`, MATH-500
  `unique_id`); `--gold` is the benchmark file (testmini json, k12.json, test.jsonl). Without `--gold`
  each record must carry its own `answer`.
Every report names the rule, lists bad input (`problems`) and which items a judge decided.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1v.atomic import atomic_write_text
from r1v.errors import ConfigError, DataError
from r1v.eval.judge import Judge
from r1v.eval.scorers.base import ScoreReport

BENCHMARKS = ("mmmu", "mathvista", "mathverse", "k12", "math500", "aime24")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read gold file: {e}", source=str(path)) from e


def _mmmu(outputs: Path, gold: Path | None, judge: Judge | None, workers: int | None) -> ScoreReport:
    from r1v.eval.scorers.mmmu import load_mmmu_outputs, score_mmmu

    records, problems = load_mmmu_outputs(outputs)
    gold_dict = _read_json(gold) if gold else None
    if gold_dict is not None and not isinstance(gold_dict, dict):
        raise DataError("expected {id: {question_type, ground_truth}} (answer_dict_val.json)", source=str(gold))
    return score_mmmu(records, problems, gold=gold_dict)


def _mathvista(outputs: Path, gold: Path | None, judge: Judge | None, workers: int | None) -> ScoreReport:
    from r1v.eval.scorers.mathvista import load_mathvista_outputs, score_mathvista

    records, problems = load_mathvista_outputs(outputs)
    gold_dict = _read_json(gold) if gold else None
    if isinstance(gold_dict, list):
        gold_dict = {str(p.get("pid")): p for p in gold_dict if isinstance(p, dict)}
    if gold_dict is not None and not isinstance(gold_dict, dict):
        raise DataError("expected {pid: problem} (testmini.json)", source=str(gold))
    return score_mathvista(records, problems, gold=gold_dict, judge=judge)


def _answers(name: str) -> Callable[[Path, Path | None, Judge | None, int | None], ScoreReport]:
    def run(outputs: Path, gold: Path | None, judge: Judge | None, workers: int | None) -> ScoreReport:
        from r1v.eval.scorers import math as m
        from r1v.eval.scorers.mathverse import score_mathverse

        records, problems = m.read_outputs(outputs)
        fn = {"mathverse": score_mathverse, "k12": m.score_k12, "math500": m.score_math500,
              "aime24": m.score_aime24}[name]
        return fn(records, problems, gold_path=gold, judge=judge, workers=workers)
    return run


_SCORERS = {"mmmu": _mmmu, "mathvista": _mathvista, **{n: _answers(n) for n in BENCHMARKS[2:]}}


def score_outputs(benchmark: str, outputs: Path, *, gold: Path | None = None, judge_url: str | None = None,
                  judge_model: str | None = None, judge_cache: Path | None = None,
                  workers: int | None = None) -> ScoreReport:
    """Score `outputs` of `benchmark`; a judge is used only when both its URL and model are given."""
    name = benchmark.lower().replace("-", "").replace("_", "")
    if name == "mmk12":
        name = "k12"
    if name not in _SCORERS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    outputs = Path(outputs)
    if not outputs.exists():
        raise DataError("outputs not found", source=str(outputs))
    if gold is not None and not Path(gold).is_file():
        raise DataError("gold file not found", source=str(gold))
    if bool(judge_url) != bool(judge_model):
        raise ConfigError("give both --judge-url and --judge-model to use a judge")
    judge = Judge(judge_url, judge_model, cache_dir=judge_cache) if judge_url and judge_model else None
    if judge is not None and name == "mmmu":
        raise ConfigError("the MMMU official rule needs no judge; drop --judge-url/--judge-model")
    report = _SCORERS[name](outputs, gold, judge, workers)
    _require_scored(report, name, outputs)
    return report


def _require_scored(report: ScoreReport, name: str, outputs: Path) -> None:
    """A report in which no item could be scored is an error, not a 0% result.

    It happens when the outputs belong to another benchmark (MMMU outputs scored as MathVista), when no id
    matches the gold file, or when every record is unusable; the first problem says which.
    """
    scored = sum(r.rule not in ("missing", "unknown") for r in report.items.values())
    if scored:
        return
    first = f"; first: {report.problems[0]}" if report.problems else ""
    raise DataError(f"no item could be scored as {name} ({len(report.items)} item(s), {len(report.problems)} "
                    f"problem(s){first}); are these outputs of another benchmark, or is --gold another split?",
                    source=str(outputs))


def official_records(benchmark: str, records: list[dict[str, Any]]) -> Any:
    """Generated records (`r1v eval` run files: id, response, answer, meta) in the benchmark's official
    output format, so they are scored by exactly the code that scores other models' outputs."""
    name = benchmark.lower().replace("-", "").replace("_", "")
    if name == "mmmu":
        return [{"id": r["id"], "question_type": r["meta"].get("question_type", "multiple-choice"),
                 "answer": r["answer"], "all_choices": r["meta"].get("all_choices", []),
                 "index2ans": r["meta"].get("index2ans", {}), "response": r["response"]} for r in records]
    if name == "mathvista":
        out = {}
        for r in records:
            m = r["meta"]
            out[r["id"]] = {"pid": r["id"], "response": r["response"], "answer": r["answer"],
                            "choices": m.get("choices"), "question_type": m.get("question_type"),
                            "answer_type": m.get("answer_type"), "precision": m.get("precision"),
                            "metadata": m.get("metadata", {})}
        return out
    flat_keys = ("question_type", "subject", "level", "problem_version", "category")
    return [{"id": r["id"], "response": r["response"], "answer": r["answer"],
             **{k: r["meta"][k] for k in flat_keys if k in r["meta"]}} for r in records]


def score_generated(benchmark: str, records: list[dict[str, Any]], official_path: Path, *,
                    judge_url: str | None = None, judge_model: str | None = None,
                    workers: int | None = None) -> ScoreReport:
    """Write generated records in the official format to `official_path`, then score that file."""
    official_path = Path(official_path)
    atomic_write_text(official_path, json.dumps(official_records(benchmark, records), ensure_ascii=False, indent=1))
    return score_outputs(benchmark, official_path, judge_url=judge_url, judge_model=judge_model, workers=workers)


def write_json(report: ScoreReport, path: Path) -> None:
    """The full report as JSON, written atomically (OutputError when `path` cannot be written)."""
    atomic_write_text(path, json.dumps(report.to_json(), indent=1, ensure_ascii=False))


def render_report(report: ScoreReport, console: Any = None, max_problems: int = 20) -> None:
    """Accuracy, per-category tables, secondary rules, who decided, and the bad-input list (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{report.benchmark}[/bold]  rule: {report.rule}  accuracy: "
                  f"[bold]{report.accuracy * 100:.2f}%[/bold] ({report.correct}/{report.total})")
    for name, acc in report.secondary().items():
        console.print(f"  beside it, {name}: {acc['accuracy'] * 100:.2f}% ({acc['correct']}/{acc['total']})")
    console.print("  decided by: " + ", ".join(f"{k} {v}" for k, v in report.by_rule().items()))
    for key, values in report.categories().items():
        table = Table(title=key, title_justify="left")
        table.add_column(key)
        table.add_column("accuracy", justify="right")
        table.add_column("correct/total", justify="right")
        for value, acc in sorted(values.items(), key=lambda kv: -kv[1]["accuracy"]):
            table.add_row(value, f"{acc['accuracy'] * 100:.2f}%", f"{acc['correct']}/{acc['total']}")
        console.print(table)
    if report.notes:
        console.print("notes: " + json.dumps({k: v for k, v in report.notes.items() if k != "judge"}))
        if "judge" in report.notes:
            j = report.notes["judge"]
            console.print(f"judge {j.get('model')}: asked {len(j.get('asked', []))}, failed {len(j.get('failed', []))}")
    if report.problems:
        console.print(f"[yellow]{len(report.problems)} problem(s) in the input (items scored as missing):[/yellow]")
        for p in report.problems[:max_problems]:
            console.print(f"  {p}", markup=False)
        if len(report.problems) > max_problems:
            console.print(f"  ... {len(report.problems) - max_problems} more (see --json)")
