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

On N processes (`torchrun --nproc_per_node N $(which r1v) eval ...`) the items are split into contiguous
shards, one per process; each appends to `run_<k>.part-<rank>.jsonl`, then process 0 merges the parts into
`run_<k>.jsonl` in item order and alone scores and writes the report. Item i of run k samples from its own
random stream (`r1v.rollout.streams`, keyed by seed, run and i), so the report is the same on 1 process and
on N, and a run resumed on another number of processes continues from every finished item.
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
from rich.progress import Progress

from r1v.atomic import atomic_write_text
from r1v.data.schema import Sample
from r1v.errors import ConfigError, DataError, ImageError


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
    engine: str = "transformers"
    """'transformers' (our decode loop) or 'vllm' (docs/vllm.md; text-only benchmarks on vLLM's CPU build)."""

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
        if self.engine not in ("transformers", "vllm"):
            raise ConfigError(f"engine must be 'transformers' or 'vllm', got {self.engine!r}")
        if self.engine == "vllm" and self.quantize is not None:
            raise ConfigError("--quantize is for --engine transformers; vLLM runs a quantised checkpoint folder")


# ------------------------------------------------------------------------------------- output files


def part_files(path: Path) -> list[Path]:
    """The per-process part files of run file `path` (`run_1.part-0.jsonl`, ...), in rank order."""
    parts = path.parent.glob(f"{path.stem}.part-*{path.suffix}")
    return sorted(parts, key=lambda p: int(p.stem.rsplit("-", 1)[1]) if p.stem.rsplit("-", 1)[1].isdigit() else -1)


def read_run(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records of a run by id: the merged file and every process's part file."""
    done = read_done(path)
    for part in part_files(path):
        done.update(read_done(part))
    return done


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records of a run file by id. A torn last line (a crash mid-write) or a damaged line (not
    UTF-8, not JSON) is dropped and the file rewritten without it, so that item is generated again."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    good_lines = []
    lines = path.read_bytes().splitlines()
    for raw in lines:
        try:
            line = raw.decode("utf-8")
            rec = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and "id" in rec:
            done[str(rec["id"])] = rec
            good_lines.append(line)
    if len(good_lines) != len(lines):
        atomic_write_text(path, "".join(x + "\n" for x in good_lines))
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
    from r1v.progress import progress_bar

    return progress_bar(console)


def generate_run(engine, samples: list[Sample], path: Path, cfg: EvalConfig, run: int,
                 progress: Progress | None = None, *, done: dict[str, dict[str, Any]] | None = None,
                 first_index: int = 0) -> list[dict[str, Any]]:
    """Generate every sample not yet done (`done`, default: the records in `path`), appending batch by batch
    to `path`; returns the records of `samples` in order. `samples[j]` is item `first_index + j` of the
    benchmark, which keys its random stream."""
    from r1v.rollout.engine import SamplingParams
    from r1v.rollout.streams import stream_key

    done = dict(read_done(path) if done is None else done)
    todo = [(first_index + j, s) for j, s in enumerate(samples) if s.id not in done]
    task = progress.add_task(f"run {run + 1}/{cfg.runs}", total=len(samples), completed=len(samples) - len(todo)) \
        if progress else None
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            repetition_penalty=cfg.repetition_penalty, max_think_tokens=cfg.max_think_tokens,
                            think=cfg.think)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        batch = [s for _, s in chunk]
        groups = engine.generate(batch, params, seeds=[stream_key(cfg.seed, run, i) for i, _ in chunk])
        records = [output_record(s, g[0]) for s, g in zip(batch, groups, strict=True)]
        append_records(path, records)
        for rec in records:
            done[rec["id"]] = rec
        if progress is not None and task is not None:
            progress.advance(task, len(batch))
    return [done[s.id] for s in samples if s.id in done]


def generate_sharded(engine, samples: list[Sample], path: Path, cfg: EvalConfig, run: int,
                     progress: Progress | None = None) -> list[dict[str, Any]] | None:
    """`generate_run` over this process's shard of `samples`; on process 0 the whole run's records in item
    order (merged into `path`, the part files removed), on the others None."""
    from r1v.distributed import barrier, shard_bounds, world_info

    rank, world = world_info()
    if world == 1:
        return generate_run(engine, samples, path, cfg, run, progress, done=read_run(path))
    start, stop = shard_bounds(len(samples), rank, world)
    generate_run(engine, samples[start:stop], path.with_name(f"{path.stem}.part-{rank}{path.suffix}"), cfg, run,
                 progress, done=read_run(path), first_index=start)
    barrier()
    records = None
    if rank == 0:
        done = read_run(path)
        records = [done[s.id] for s in samples if s.id in done]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
        for part in part_files(path):
            part.unlink()
    barrier()
    return records


def check_images(samples: list[Sample]) -> None:
    """Decode every image file the samples refer to, so a damaged figure stops the run before generation
    (naming the item and the image), not hours into it. In-memory images (parquet cells) were opened
    when read and are decoded when used, which keeps memory flat."""
    from r1v.processing.images import load_image

    for s in samples:
        for i, ref in enumerate(s.images):
            if isinstance(ref, (str, Path)):
                try:
                    load_image(ref)
                except ImageError as e:
                    raise ImageError(e.message, source=e.source, record=s.id, field=f"images[{i}]") from None


def evaluate(cfg: EvalConfig, *, engine=None, score_fn: Callable | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report dict (also written to `cfg.out/report.json`)."""
    from r1v.data.benchmarks import load_benchmark, with_prompt
    from r1v.distributed import barrier, ensure_process_group
    from r1v.eval.hallucination import hallucination_report
    from r1v.eval.report import write_eval_report
    from r1v.eval.score import score_generated

    cfg.validate()
    rank, _ = ensure_process_group()
    console = console or Console(quiet=rank != 0)
    samples = load_benchmark(cfg.benchmark, cfg.data, limit=cfg.limit)
    if not samples:
        raise DataError("no samples loaded", source=str(cfg.data))
    check_images(samples)
    samples = [with_prompt(s, cfg.prompt) for s in samples]
    if engine is None:
        from r1v.model.build import load_vlm
        from r1v.rollout.engine import TransformersEngine

        with console.status(f"loading {cfg.model} ..."):
            vlm = load_vlm(cfg.model, quantize=cfg.quantize)
        if cfg.max_tiles is not None:
            vlm.spec = replace(vlm.spec, max_tiles=cfg.max_tiles, min_tiles=min(vlm.spec.min_tiles, cfg.max_tiles))
        if cfg.engine == "vllm":
            from r1v.rollout.vllm import VLLMEngine

            engine = VLLMEngine.from_vlm(vlm, cfg.out / "vllm_model", text_only=not any(s.images for s in samples))
        else:
            engine = TransformersEngine(vlm)
    # the run folder is created only once the data and the model are known to be good
    if rank == 0:
        atomic_write_text(cfg.out / "config.json", json.dumps(_jsonable(cfg.__dict__), indent=2))
    barrier()
    score_fn = score_fn or score_generated

    runs: list[dict[str, Any]] = []
    with _progress(console) as progress:
        for run in range(cfg.runs):
            records = generate_sharded(engine, samples, cfg.out / f"run_{run + 1}.jsonl", cfg, run, progress)
            if records is None:  # not process 0: its shard is merged; process 0 scores and reports
                continue
            report = score_fn(cfg.benchmark, records, cfg.out / f"run_{run + 1}.official.json",
                              judge_url=cfg.judge_url, judge_model=cfg.judge_model)
            by_id = {s.id: s for s in samples}
            completions = [r["response"] for r in records]
            hall = hallucination_report([by_id[r["id"]] for r in records], completions)
            runs.append({"run": run + 1, "score": report.to_json(), "lengths": length_stats(records),
                         "think_lengths": [int(r.get("num_think_tokens", 0)) for r in records],
                         "hallucination": hall})
    if rank != 0:
        return {}
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
                     "quantize": cfg.quantize, "engine": cfg.engine},
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
