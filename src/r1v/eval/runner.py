"""`r1v eval`: generate answers for a benchmark with a model, score them with the benchmark's own rule.

    r1v eval --model smol --benchmark k12 --data ../shared/data/k12 --runs 5 --out runs/eval/k12

Flow: load the benchmark's local files as Samples -> wrap each question in the evaluation prompt (R1V's
boxed-answer prompt, spec 4.4, or the benchmark's own) -> batched generation with thinking -> one output file
per run (`run_<k>.jsonl`, appended batch by batch, so a crash keeps every finished item and a rerun continues
where it stopped) -> the benchmark's official output format (`run_<k>.official.json`) -> the same scorer as
`r1v score` (so any run can be re-scored with `r1v score --outputs run_<k>.official.json`) -> pass@1
averaged over runs with a 95% confidence interval, thinking-length statistics, the share of outputs cut off by
the length limit, the hallucination rate (see `r1v.eval.hallucination`) -> report.json, report.md, PNG plots.

Generation defaults are for reasoning models: 4096 new tokens (not 128, which cuts reasoning off) and
Skywork's sampling (temperature 0.6, top_p 0.95, repetition penalty 1.05).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from r1v.data.schema import Sample
from r1v.errors import ConfigError, DataError


@dataclass
class EvalConfig:
    """Settings of one `r1v eval` run."""

    model: str
    benchmark: str
    data: Path
    out: Path = Path("runs/eval")
    runs: int = 1
    prompt: Literal["r1v", "benchmark"] = "r1v"
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 4096
    max_think_tokens: int | None = None
    max_tiles: int | None = None
    """Cap the tiles per image (None: the model's own setting; VLMEvalKit caps InternVL at 12)."""
    think: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    seed: int = 0
    judge_url: str | None = None
    judge_model: str | None = None
    quantize: str | None = None
    """Quantise the LLM's weights on load: 'int8' or 'int4' (`r1v.model.quantize`); None: as saved."""

    def validate(self) -> None:
        if self.runs < 1:
            raise ConfigError("runs must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit must be >= 1")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError("max_tiles must be >= 1")
        if self.quantize not in (None, "int8", "int4"):
            raise ConfigError(f"quantize must be 'int8' or 'int4', got {self.quantize!r}")


# ------------------------------------------------------------------------------------- output files


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records of a run file by id. A torn last line (a crash mid-write) is ignored and rewritten."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    good_lines = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            done[str(rec["id"])] = rec
            good_lines.append(line)
    if len(good_lines) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in good_lines), encoding="utf-8")
        os.replace(tmp, path)
    return done


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append finished records and fsync, so they survive a crash of the process."""
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def output_record(sample: Sample, completion) -> dict[str, Any]:
    """One item in the generic output format: id, response, gold, benchmark fields, generation stats."""
    response = completion.text
    return {
        "id": sample.id,
        "response": response,
        "answer": sample.answer,
        "meta": _jsonable(sample.meta),
        "num_think_tokens": completion.num_think_tokens,
        "num_tokens": len(completion.token_ids),
        "finish_reason": completion.finish_reason,
    }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {k: _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


# ------------------------------------------------------------------------------------------ statistics


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% interval (Student t over runs; 0 with a single run)."""
    if not values:
        return 0.0, 0.0
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    crit = t.get(len(values), 1.96)
    return m, crit * statistics.stdev(values) / math.sqrt(len(values))


def binomial_ci95(p: float, n: int) -> float:
    """Half-width of the normal-approximation interval of an accuracy over n items."""
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0


def length_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Thinking-length statistics and the share of outputs cut off by the length limit."""
    think = sorted(int(r.get("num_think_tokens", 0)) for r in records)
    total = sorted(int(r.get("num_tokens", 0)) for r in records)
    cut = sum(r.get("finish_reason") == "length" for r in records)

    def pct(xs: list[int], q: float) -> float:
        return float(xs[min(len(xs) - 1, int(q * len(xs)))]) if xs else 0.0

    return {
        "think_tokens_mean": statistics.fmean(think) if think else 0.0,
        "think_tokens_median": pct(think, 0.5),
        "think_tokens_p90": pct(think, 0.9),
        "tokens_mean": statistics.fmean(total) if total else 0.0,
        "cut_off": cut,
        "cut_off_share": cut / len(records) if records else 0.0,
        "n": len(records),
    }


# ------------------------------------------------------------------------------------------------ run


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)


def generate_run(engine, samples: list[Sample], path: Path, cfg: EvalConfig, run: int,
                 progress: Progress | None = None) -> list[dict[str, Any]]:
    """Generate every sample not yet in `path`, appending batch by batch; returns all records in order."""
    from r1v.rollout.engine import SamplingParams

    done = read_done(path)
    todo = [s for s in samples if s.id not in done]
    task = progress.add_task(f"run {run + 1}/{cfg.runs}", total=len(samples), completed=len(samples) - len(todo)) \
        if progress else None
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                repetition_penalty=cfg.repetition_penalty, max_think_tokens=cfg.max_think_tokens,
                                think=cfg.think, seed=cfg.seed * 1000 + run * 100_003 + start)
        groups = engine.generate(batch, params)
        records = [output_record(s, g[0]) for s, g in zip(batch, groups, strict=True)]
        append_records(path, records)
        for rec in records:
            done[rec["id"]] = rec
        if progress is not None and task is not None:
            progress.advance(task, len(batch))
    return [done[s.id] for s in samples if s.id in done]


def evaluate(cfg: EvalConfig, *, engine=None, score_fn: Callable | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report dict (also written to `cfg.out/report.json`)."""
    from r1v.data.benchmarks import load_benchmark, with_prompt
    from r1v.eval.hallucination import hallucination_report
    from r1v.eval.report import write_eval_report
    from r1v.eval.score import score_generated

    cfg.validate()
    console = console or Console()
    samples = load_benchmark(cfg.benchmark, cfg.data, limit=cfg.limit)
    if not samples:
        raise DataError("no samples loaded", source=str(cfg.data))
    samples = [with_prompt(s, cfg.prompt) for s in samples]
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(json.dumps(_jsonable(cfg.__dict__), indent=2))
    if engine is None:
        from r1v.model.build import load_vlm
        from r1v.rollout.engine import TransformersEngine

        with console.status(f"loading {cfg.model} ..."):
            vlm = load_vlm(cfg.model, quantize=cfg.quantize)
        if cfg.max_tiles is not None:
            vlm.spec = replace(vlm.spec, max_tiles=cfg.max_tiles, min_tiles=min(vlm.spec.min_tiles, cfg.max_tiles))
        engine = TransformersEngine(vlm)
    score_fn = score_fn or score_generated

    runs: list[dict[str, Any]] = []
    with _progress(console) as progress:
        for run in range(cfg.runs):
            records = generate_run(engine, samples, cfg.out / f"run_{run + 1}.jsonl", cfg, run, progress)
            report = score_fn(cfg.benchmark, records, cfg.out / f"run_{run + 1}.official.json",
                              judge_url=cfg.judge_url, judge_model=cfg.judge_model)
            by_id = {s.id: s for s in samples}
            completions = [r["response"] for r in records]
            hall = hallucination_report([by_id[r["id"]] for r in records], completions)
            runs.append({"run": run + 1, "score": report.to_json(), "lengths": length_stats(records),
                         "think_lengths": [int(r.get("num_think_tokens", 0)) for r in records],
                         "hallucination": hall})
    accs = [r["score"]["accuracy"] for r in runs]
    mean, ci = mean_ci95(accs)
    if len(accs) == 1:
        ci = binomial_ci95(mean, runs[0]["score"]["total"])
    all_records = []
    for run in range(cfg.runs):
        all_records += list(read_done(cfg.out / f"run_{run + 1}.jsonl").values())
    summary = {
        "benchmark": cfg.benchmark, "model": cfg.model, "prompt": cfg.prompt, "rule": runs[0]["score"]["rule"],
        "runs": cfg.runs, "items": len(samples),
        "pass@1": mean, "ci95": ci, "ci_method": "t over runs" if cfg.runs > 1 else "binomial over items",
        "accuracy_per_run": accs,
        "lengths": length_stats(all_records),
        "hallucination": _merge_hallucination([r["hallucination"] for r in runs]),
        "secondary_rules": runs[0]["score"].get("rules", {}),
        "decided_by": runs[0]["score"].get("decided_by", {}),
        "problems": runs[0]["score"].get("problems", []),
        "categories": runs[0]["score"].get("categories", {}),
        "per_run": runs,
        "settings": {"max_new_tokens": cfg.max_new_tokens, "max_think_tokens": cfg.max_think_tokens,
                     "max_tiles": cfg.max_tiles,
                     "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "repetition_penalty": cfg.repetition_penalty, "think": cfg.think, "seed": cfg.seed,
                     "quantize": cfg.quantize},
    }
    write_eval_report(summary, cfg.out)
    return summary


def _merge_hallucination(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the per-run hallucination counts into one rate."""
    if not reports:
        return {}
    scored = sum(int(r.get("scored", 0)) for r in reports)
    bad = sum(int(r.get("hallucinated", 0)) for r in reports)
    out = dict(reports[0])
    out.update({"scored": scored, "hallucinated": bad, "rate": bad / scored if scored else None})
    return out
