"""`r1v chat`: ask a model about images and watch it think.

    r1v chat --model smol --image figure.png "How many circles are there?"
    r1v chat --model DIR --image a.png --image b.png --max-think-tokens 256 "Compare the two charts."
    r1v chat --model DIR --quantize int4 --image fig.png "How many circles?"    # LLM weights in 4 bits

The thinking streams dimmed, the answer in bold, as they are generated. Defaults follow Skywork's scripts
(temperature 0.6, top_p 0.95, repetition penalty 1.05). `--max-think-tokens N` closes `</think>` once the
budget is spent and lets the model answer; `--no-think` asks for a direct answer.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from r1v.data.schema import Sample
from r1v.rollout.engine import Completion, SamplingParams, TransformersEngine


def run_chat(*, model: str, question: str, images: list[Path], max_think_tokens: int | None = None,
             think: bool = True, max_new_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.95,
             repetition_penalty: float = 1.05, seed: int = 0, console: Console | None = None,
             quantize: str | None = None) -> Completion:
    """Load `model` (preset or folder; `quantize` int8/int4: see `r1v.model.quantize`), stream one answer to
    `question` about `images`, return it."""
    from r1v.model.build import load_vlm
    from r1v.processing.images import load_image

    console = console or Console()
    # check every image before the (slower) model load, so a bad path fails at once
    loaded = [load_image(p) for p in images]
    if quantize is not None:
        from r1v.model.quantize import check_mode

        check_mode(quantize)  # before the model load, like the images
    with console.status(f"loading {model}{f' ({quantize})' if quantize else ''} ..."):
        vlm = load_vlm(model, quantize=quantize)
    engine = TransformersEngine(vlm)
    sample = Sample.from_question("chat", question, images=loaded)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            repetition_penalty=repetition_penalty, max_think_tokens=max_think_tokens,
                            think=think, seed=seed)
    state = {"kind": None}

    def on_text(kind: str, delta: str) -> None:
        if kind != state["kind"]:
            console.print()
            console.print("[bold cyan]thinking[/]" if kind == "think" else "[bold green]answer[/]")
            state["kind"] = kind
        console.print(delta, end="", style="dim" if kind == "think" else "bold", markup=False,
                      highlight=False)

    [[completion]] = engine.generate([sample], params, on_text=on_text)
    console.print()
    console.print(f"[dim]({completion.num_think_tokens} thinking tokens, {len(completion.token_ids)} total, "
                  f"finish: {completion.finish_reason})[/]")
    return completion
