"""The pipeline's evaluation and report: one row per evaluated model, shaped like R1V's Table 2.

`evaluate_model` runs greedy generation on the held-out set and measures accuracy (overall, per task
family, on unanswerable items), the mean number of thinking tokens and the hallucination rate
(`r1v.eval.hallucination`, rendered tasks only). `write_report` writes `report.json`, `report.md`,
`report.html` and `plots/` (accuracy by stage; GRPO reward and effective-sample ratio per step), and
states plainly which steps helped and which did not.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v.config import to_dict
from r1v.data.schema import Sample
from r1v.data.sources import atomic_write_text
from r1v.data.stage_data import read_stage_data
from r1v.progress import progress_bar
from r1v.tables import print_wide_table


def held_out(settings: Any, data_dir: Path) -> list[Sample]:
    """The evaluation samples (`{data}` in the spec means the pipeline's data folder)."""
    if not settings.data:
        return []
    spec = settings.data.replace("{data}", str(data_dir))
    return [r.sample for r in read_stage_data(spec, limit=settings.limit, with_target=False)]


def evaluate_model(folder: str, samples: Sequence[Sample], settings: Any, console: Console | None = None,
                   pass_k: int = 0) -> dict:
    """Greedy answers of the model in `folder` on `samples`: accuracy (overall, by family, unanswerable),
    per-item correctness (`correct`, for paired intervals), mean thinking tokens, hallucination rate and a
    few example completions; with `pass_k` > 0 also pass@1 and pass@k of k answers sampled at temperature 1
    (what RL starting from this model can sharpen)."""
    from r1v.eval.generate import correct_many, generate, greedy
    from r1v.eval.hallucination import hallucination_report
    from r1v.model.build import load_vlm

    vlm = load_vlm(folder)
    what = f"evaluating {Path(folder).parent.name}/{Path(folder).name} on the held-out set"
    groups = generate(vlm, samples, greedy(settings.max_new_tokens), batch_size=settings.batch_size,
                      progress=what if console is not None else None, console=console)
    completions = [g[0] for g in groups]
    correct = correct_many([c.answer for c in completions], samples)
    by_family: dict[str, list[bool]] = {}
    for s, ok in zip(samples, correct, strict=True):
        key = "unanswerable" if s.meta.get("unanswerable") else str(s.meta.get("family", "other"))
        by_family.setdefault(key, []).append(ok)
    hall = hallucination_report(samples, [c.text for c in completions], with_items=False)
    sampled = (sample_pass_at_k(vlm, samples[:getattr(settings, "pass_k_limit", len(samples))], settings, pass_k,
                                console) if pass_k > 0 else {})
    return {**sampled, "correct": correct, "accuracy": sum(correct) / len(correct) if correct else None,
            "accuracy_by_family": {k: sum(v) / len(v) for k, v in sorted(by_family.items())},
            "n": len(samples), "think_tokens_mean": sum(c.num_think_tokens for c in completions) / len(completions),
            "hallucination_rate": hall["rate"], "hallucination_scored": hall["scored"],
            "truncated_share": sum(c.finish_reason == "length" for c in completions) / len(completions),
            "examples": [{"id": s.id, "answer_gold": s.answer, "completion": c.text[:400], "correct": ok}
                         for s, c, ok in list(zip(samples, completions, correct, strict=True))[:3]]}


def sample_pass_at_k(vlm: Any, samples: Sequence[Sample], settings: Any, k: int,
                     console: Console | None = None) -> dict:
    """k answers per sample at temperature 1 (seeded per item): {"k", "pass_at_1", "pass_at_k",
    "mixed_share"} (the last: share of items with some but not all k right, the groups GRPO learns from)."""
    from r1v.eval.generate import correct_many
    from r1v.eval.stats import pass_at_k
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    engine = TransformersEngine(vlm)

    params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=1.0, top_p=1.0,
                            repetition_penalty=1.0, n=k)
    rights: list[int] = []
    with progress_bar(console, enabled=console is not None, transient=True) as bar:
        task = bar.add_task(f"sampling {k} answers per held-out item (pass@{k})", total=len(samples))
        for start in range(0, len(samples), settings.batch_size):
            chunk = list(samples[start:start + settings.batch_size])
            groups = engine.generate(chunk, params, seeds=[start + i for i in range(len(chunk))])
            for s, g in zip(chunk, groups, strict=True):
                rights.append(sum(correct_many([c.answer for c in g], [s] * len(g))))
            bar.update(task, completed=len(rights))
    n = len(rights)
    return {"k": k, "pass_n": n, "pass_at_1": sum(pass_at_k(k, c, 1) for c in rights) / n,
            "pass_at_k": sum(pass_at_k(k, c, k) for c in rights) / n,
            "mixed_share": sum(0 < c < k for c in rights) / n}


# ---------------------------------------------------------------------------------------------- verdicts

def baseline(rows: list[dict], i: int) -> dict | None:
    """The row that row i is compared with: the one its `versus` names, else the row before it."""
    want = rows[i].get("versus")
    if want:
        return next((r for r in rows[:i] if r["name"] == want), None)
    return rows[i - 1] if i else None


def change(prev: dict, cur: dict) -> dict | None:
    """The paired-bootstrap change in accuracy from `prev` to `cur` (same items), or None without items."""
    from r1v.eval.stats import paired_bootstrap

    a, b = prev.get("correct"), cur.get("correct")
    if not a or not b or len(a) != len(b):
        return None
    return paired_bootstrap(a, b)


def _change_words(d: dict) -> str:
    ci = f"{d['delta']:+.3f}, 95% CI [{d['low']:+.3f}, {d['high']:+.3f}], n={d['n']}"
    if d["low"] == d["high"] == 0:
        return f"did not change held-out accuracy on any item ({ci})"
    if d["low"] > 0:
        return f"helped beyond the noise ({ci})"
    if d["high"] < 0:
        return f"did NOT help: worse beyond the noise ({ci})"
    return f"did NOT help beyond the noise ({ci})"


def rl_diagnosis(row: dict) -> str | None:
    """Why an RL row moved or not: its effective-sample ratio with and without the buffer."""
    with_b, without = row.get("effective_ratio"), row.get("effective_ratio_without")
    if with_b is None:
        return None
    text = f"{row['name']}: effective-sample ratio {with_b:.2f} with the buffer"
    if without is not None:
        text += f" vs {without:.2f} from the rollouts alone"
    if not with_b:
        text += "; every group had zero reward variance, so no sample had an advantage to learn from"
    elif without is not None and without < 0.4:
        text += "; most groups were all right or all wrong (zero variance)"
    return text + "."

def verdicts(rows: list[dict]) -> list[str]:
    """Plain sentences: did each step raise held-out accuracy over the row before it, and the final row
    over the first and over stage-1 SFT?"""
    out = []
    scored = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    for i, cur in enumerate(scored):
        prev = baseline(scored, i)
        if prev is None:
            continue
        d = cur["accuracy"] - prev["accuracy"]
        ch = change(prev, cur)
        if ch is not None:
            word = _change_words(ch)
        else:
            word = "helped" if d > 0 else ("did not change held-out accuracy" if d == 0 else "did NOT help")
        out.append(f"{cur['name']}: {word} ({prev['accuracy']:.3f} -> {cur['accuracy']:.3f}, {d:+.3f} vs "
                   f"{prev['name']}).")
        if "pass_at_k" in prev and cur.get("stage") == "grpo":
            out.append(f"{prev['name']} (what {cur['name']} is compared with): pass@1 {prev['pass_at_1']:.3f}, "
                       f"pass@{prev['k']} {prev['pass_at_k']:.3f} at temperature 1 (first {prev.get('pass_n', '?')} items); "
                       f"{prev['mixed_share']:.2f} of the "
                       f"items had some but not all of {prev['k']} answers right (the groups RL learns from).")
        diagnosis = rl_diagnosis(cur)
        if diagnosis:
            out.append(diagnosis)
    if len(scored) >= 2:
        first, last = scored[0], scored[-1]
        out.append(f"Overall: {last['name']} {last['accuracy']:.3f} vs {first['name']} {first['accuracy']:.3f} "
                   f"({'above' if last['accuracy'] > first['accuracy'] else 'NOT above'}).")
        sft = next((r for r in scored if r["stage"] == "sft"), None)
        if sft is not None and sft is not last:
            out.append(f"Final vs stage-1 SFT: {last['accuracy']:.3f} vs {sft['accuracy']:.3f} "
                       f"({'above' if last['accuracy'] > sft['accuracy'] else 'NOT above'}).")
    return out


# ---------------------------------------------------------------------------------------------- writing

def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the stage table (families found in any row become columns)."""
    families = sorted({f for r in rows for f in (r.get("accuracy_by_family") or {})})
    headers = ["stage", "accuracy", "change [95% CI]", *families, "think tokens", "halluc. rate",
               "eff. ratio (SSB)", "eff. ratio (no SSB)", "train s"]
    cells = []
    for i, r in enumerate(rows):
        base = baseline(rows, i)
        ch = change(base, r) if base else None
        cells.append([r["name"], _fmt(r.get("accuracy")),
                      f"{ch['delta']:+.3f} [{ch['low']:+.3f}, {ch['high']:+.3f}]" if ch else "-",
                      *[_fmt((r.get("accuracy_by_family") or {}).get(f)) for f in families],
                      _fmt(r.get("think_tokens_mean")), _fmt(r.get("hallucination_rate")),
                      _fmt(r.get("effective_ratio")), _fmt(r.get("effective_ratio_without")),
                      _fmt(r.get("train_seconds"))])
    return headers, cells


def plot_accuracy(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(scored)), 3.6))
    xs = range(len(scored))
    ax.bar(xs, [r["accuracy"] for r in scored], color="#4a78b5", label="all")
    families = sorted({f for r in scored for f in r.get("accuracy_by_family", {})})
    for f in families:
        ax.plot(xs, [r["accuracy_by_family"].get(f, float("nan")) for r in scored], marker="o", lw=1, label=f)
    ax.set_xticks(list(xs), [r["name"] for r in scored], rotation=25, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="held-out accuracy", title="accuracy by stage")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_rl(metrics: Path, plots: Path) -> list[Path]:
    """reward_curve.png and effective_ratio.png from a GRPO step's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from r1v.train.metrics import read_metrics

    rows = [r for r in read_metrics(metrics) if "reward" in r]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    written = []
    for name, keys, title in (("reward_curve.png", [("reward", "mean reward")], "GRPO reward"),
                              ("effective_ratio.png", [("effective_ratio", "with SSB (trained on)"),
                                                       ("effective_ratio_without", "rollouts alone")],
                               "effective-sample ratio")):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key, label in keys:
            ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker=".", label=label)
        ax.set(xlabel="step", title=title)
        if name == "effective_ratio.png":
            ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        plots.mkdir(parents=True, exist_ok=True)
        fig.savefig(plots / name, dpi=100)
        plt.close(fig)
        written.append(plots / name)
    return written


def write_report(cfg: Any, rows: list[dict], summaries: dict[str, dict], out: Path, *, wall_seconds: float,
                 console: Console | None = None, extra: dict | None = None) -> dict:
    """report.json / report.md / report.html / plots into `out`; prints the table; returns the report."""
    console = console or Console()
    plots = out / "plots"
    written = [p for p in [plot_accuracy(rows, plots / "accuracy_by_stage.png")] if p]
    for r in rows:
        if r.get("metrics") and Path(r["metrics"]).exists():
            written += plot_rl(Path(r["metrics"]), plots)
    report = {"generation": cfg.generation, "scale": cfg.scale, "seed": cfg.seed,
              "wall_seconds": round(wall_seconds, 1), "stages": rows, "verdicts": verdicts(rows),
              "plots": [str(p) for p in written], "notes": cfg.notes, **(extra or {}),
              "config": to_dict(cfg)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    headers, cells = table(rows)
    title = f"{cfg.generation} pipeline ({cfg.scale} scale, seed {cfg.seed}), {wall_seconds / 60:.1f} min"
    md = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    md += ["", "## What helped", "", *[f"- {v}" for v in report["verdicts"]], "",
           "Accuracy: greedy answers on the held-out split, verified like the rewards; think tokens: mean "
           "tokens before `</think>`; hallucination rate: share of completions contradicting the known scene "
           "(r1v.eval.hallucination); effective ratio: share of GRPO samples with non-zero advantage, in the "
           "batches trained on (with the Selective Sample Buffer) and in the fresh rollouts alone; change: accuracy "
           "minus the row compared with (the row before, or the one the recipe names), with a paired-bootstrap 95% "
           "interval over the held-out items (beyond the noise when the interval excludes 0).", ""]
    for key, heading in (("reward_model", "Reward model"), ("selection", "Checkpoint choice")):
        if report.get(key):
            md += [f"## {heading}", "", *[f"- {line}" for line in report[key]["lines"]], ""]
    md += [f"![{p.stem}](plots/{p.name})" for p in written]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    lis = "".join(f"<li>{html.escape(v)}</li>" for v in report["verdicts"])
    imgs = "".join(f'<img src="plots/{p.name}" alt="{p.stem}" style="max-width:48%">' for p in written)
    atomic_write_text(out / "report.html", (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{th}</tr>{trs}</table><h2>What helped</h2><ul>{lis}</ul>"
        f"{imgs}</body></html>\n"))
    print_wide_table(console, title, headers, cells)
    for v in report["verdicts"]:
        console.print(f"  {v}")
    for key in ("reward_model", "selection"):
        for line in (report.get(key) or {}).get("lines", []):
            console.print(f"  {key.replace('_', ' ')}: {line}")
    console.print(f"wrote {out / 'report.json'}, report.md, report.html and {len(written)} plots")
    return report
