"""Eval reports: `report.json` (everything), `report.md` (what a person reads), PNG plots.

The Markdown names the rule that produced each number, how many items a judge decided, how many outputs
were cut off by the length limit, and the hallucination definition used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r1v.atomic import atomic_savefig, atomic_write_text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The human-readable report."""
    s = summary
    lines = [
        f"# {s['benchmark']} — {s['model']}",
        "",
        f"- rule: `{s['rule']}`; prompt: `{s['prompt']}`; items: {s['items']}; runs: {s['runs']}",
        f"- **pass@1: {_pct(s['pass@1'])}%** ± {_pct(s['ci95'])} (95% CI, {s['ci_method']})",
        f"- accuracy per run: {', '.join(_pct(a) for a in s['accuracy_per_run'])}",
    ]
    for name, r in (s.get("secondary_rules") or {}).items():
        lines.append(f"- beside it, rule `{name}`: {_pct(r['accuracy'])}% ({r['correct']}/{r['total']})")
    dec = s.get("decided_by") or {}
    if dec:
        lines.append("- decided by: " + ", ".join(f"{k} {v}" for k, v in dec.items()))
    L = s["lengths"]
    lines += [
        f"- thinking tokens: mean {L['think_tokens_mean']:.0f}, median {L['think_tokens_median']:.0f}, "
        f"p90 {L['think_tokens_p90']:.0f}; cut off by the length limit: {L['cut_off']} "
        f"({_pct(L['cut_off_share'])}%)",
    ]
    h = s.get("hallucination") or {}
    if h and h.get("scored"):
        lines.append(f"- hallucination rate: {_pct(h.get('rate'))}% ({h.get('hallucinated', 0)}/"
                     f"{h.get('scored', 0)} scored); {h.get('definition', '')}".rstrip("; "))
    elif h:
        lines.append("- hallucination rate: not measurable here (no item has a known scene or is unanswerable); "
                     f"definition: {h.get('definition', '')}".rstrip("; "))
    probs = s.get("problems") or []
    if probs:
        lines.append(f"- input problems: {len(probs)} (listed in report.json)")
    cats = s.get("categories") or {}
    for key, table in cats.items():
        lines += ["", f"## by {key}", "", "| value | correct | total | accuracy |", "|---|---|---|---|"]
        for value, c in table.items():
            lines.append(f"| {value} | {c['correct']} | {c['total']} | {_pct(c['accuracy'])} |")
    st = s.get("settings", {})
    lines += ["", "## settings", "", "```", json.dumps(st, indent=2), "```", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    """Accuracy per run and per category, and the thinking-length histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    accs = [100 * a for a in summary["accuracy_per_run"]]
    ax.bar([f"run {i + 1}" for i in range(len(accs))], accs, color="#4477aa")
    ax.axhline(100 * summary["pass@1"], color="k", linestyle="--", label="pass@1 (mean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{summary['benchmark']}: accuracy per run")
    ax.legend()
    fig.tight_layout()
    p = out / "accuracy.png"
    atomic_savefig(fig, p, dpi=110)
    plt.close(fig)
    paths.append(p)

    think = []
    for run in summary.get("per_run", []):
        think.extend(run.get("think_lengths", []))
    if think:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(think, bins=min(30, max(5, len(set(think)))), color="#aa6644")
        ax.set_xlabel("thinking tokens")
        ax.set_ylabel("outputs")
        ax.set_title("thinking length")
        fig.tight_layout()
        p = out / "thinking_length.png"
        atomic_savefig(fig, p, dpi=110)
        plt.close(fig)
        paths.append(p)
    cats = summary.get("categories") or {}
    if cats:
        key, table = next(iter(cats.items()))
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.2))
        names = list(table)
        ax.barh(names, [100 * table[n]["accuracy"] for n in names], color="#66aa55")
        ax.set_xlabel("accuracy (%)")
        ax.set_title(f"by {key}")
        fig.tight_layout()
        p = out / "categories.png"
        atomic_savefig(fig, p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_eval_report(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the plots, report.md and (last) report.json into `out`, each atomically."""
    pngs = plot(summary, out)
    atomic_write_text(out / "report.md", markdown(summary))
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return {"json": out / "report.json", "markdown": out / "report.md", **{p.stem: p for p in pngs}}
