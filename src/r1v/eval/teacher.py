"""Teachers and students for the generating stages (distill, rejection-sample), as rollout engines.

- `build_engine(target)`: a preset name or model folder -> (VLM, TransformersEngine).
- `make_judge(url, model, cache_dir)`: an OpenAI-compatible endpoint client (`r1v.eval.judge.Judge`).
- `teacher_engine(tc, ...)`: the engine a `TeacherConfig` names (a local model or an endpoint).
- `EndpointTeacher(client)`: a chat endpoint behind the `RolloutEngine` interface.

`EndpointTeacher(client)` takes any client with `ask(prompt) -> str | None` (`r1v.eval.judge.Judge`: an
HTTP client with a reply cache). It sends the question text only (`<image>` tags removed). Replies are
cached by model + prompt, so completion j > 0 of a sample adds "(attempt j+1)" to its prompt to get a fresh
reply. Repetition penalty is not sent (the OpenAI API has none); thinking is read from `<think>` tags, and
a reply without them is all chain. Token counts are whitespace words (an approximation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1v.data.schema import Sample
from r1v.data.stage_data import TeacherConfig
from r1v.rewards.extract import extract_answer
from r1v.rollout.engine import Completion, SamplingParams, split_completion


def build_engine(target: str) -> tuple[Any, Any]:
    """A preset name or model folder -> (VLM, TransformersEngine)."""
    from r1v.model.build import load_vlm
    from r1v.rollout.engine import TransformersEngine

    vlm = load_vlm(target)
    return vlm, TransformersEngine(vlm)


def make_judge(url: str | None, model: str | None, cache_dir: str | None, **kwargs: Any) -> Any:
    """A client of an OpenAI-compatible endpoint (`r1v.eval.judge.Judge`), its replies cached in `cache_dir`."""
    from r1v.eval.judge import Judge

    return Judge(url or "", model or "", cache_dir=Path(cache_dir) if cache_dir else None, **kwargs)


def teacher_engine(tc: TeacherConfig, *, temperature: float, max_new_tokens: int, student: Any = None,
                   student_model: str | None = None) -> Any:
    """The engine `tc` names: a local model (the `student` engine itself when `tc.model == student_model`)
    or an endpoint asked with `temperature` and `max_new_tokens`."""
    if tc.kind == "model":
        return student if student is not None and tc.model == student_model else build_engine(tc.model)[1]
    return EndpointTeacher(make_judge(tc.url, tc.name, tc.cache_dir, temperature=temperature,
                                      max_tokens=max_new_tokens))


class EndpointTeacher:
    """`generate(samples, params)` answered by a chat endpoint (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.judge = client
        self.tokenizer = None

    def generate(self, samples: Sequence[Sample], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """`seeds` is accepted for the engine interface; the endpoint samples on its own."""
        out = []
        for s in samples:
            text = "\n\n".join(m.content.replace("<image>", "").strip() for m in s.prompt_messages()
                               if m.role != "system")
            group = []
            for j in range(params.n):
                reply = self.judge.ask(text + (f"\n\n(attempt {j + 1})" if j else "")) or ""
                think, answer = split_completion(reply, False)
                if think is None and reply.strip():
                    think, answer = reply.strip(), ""
                group.append(Completion(text=reply, token_ids=[], finish_reason="stop", think=think,
                                        answer=answer or (f"\\boxed{{{extract_answer(reply)}}}"
                                                          if extract_answer(reply) else ""),
                                        num_think_tokens=len((think or "").split()), prompt_tokens=0))
            out.append(group)
        return out
