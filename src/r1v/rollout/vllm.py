"""The vLLM rollout engine (GPU): the `RolloutEngine` interface on top of `vllm.LLM`.

    engine = VLLMEngine("runs/sft/final", tensor_parallel_size=2)
    groups = engine.generate(samples, SamplingParams(n=8, temperature=1.0, max_think_tokens=4096))
    engine.sync_weights(model)            # after optimiser steps: rollouts use the new policy

Install with the optional extra `pip install "r1v[vllm]"`; vllm is imported only when an engine is made.

Prompts: the sample's conversation rendered by our chat template (`r1v.processing.template.render_prompt`,
the same text the processor tokenises, `<think>\\n` prefill included) with the images passed as
`multi_modal_data`; vLLM's InternVL support tiles them itself (the same dynamic-tiling algorithm) and
expands the `image_placeholder` (`<image>` for the released remote-code layout; HF-format InternVL
folders use `<IMG_CONTEXT>`).

Thinking budget (two phases): phase 1 samples at most `max_think_tokens` tokens. A completion that ended
(stop token) is done. One that ran out of budget continues in phase 2 from its own token ids: if it has not
written `</think>` yet, the `</think>` tokens are appended first (the thought is closed for it), then the
model writes the answer with the remaining `max_new_tokens`. Token ids are kept exactly as sampled, so
RL log-probs line up with what was generated. Phase-2 requests reuse vLLM's expanded prompt token ids.

Weight sync (`sync_weights`), for vLLM >= 0.10 (V1 engine): the trainer's `state_dict` is sent in chunks
of about `sync_chunk_bytes` to every worker with `LLM.collective_rpc(fn, args=(chunk,))`, where `fn` runs
inside each worker and calls `worker.model_runner.model.load_weights(chunk)`: vLLM's own checkpoint loader,
which maps HF parameter names to its fused / tensor-parallel shards (each TP rank keeps its slice). Passing
a function to `collective_rpc` needs `VLLM_ALLOW_INSECURE_SERIALIZATION=1`, which the engine sets before it
starts vLLM. The prefix cache is reset afterwards so no KV computed with old weights is reused. For
multi-node training a NCCL broadcast (TRL's server mode) would avoid the pickling; one node does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from r1v.data.schema import Sample
from r1v.errors import ConfigError, ModelError
from r1v.rollout.engine import THINK_CLOSE, Completion, SamplingParams, split_completion


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ModelError("the vLLM engine needs vllm: pip install 'r1v[vllm]' (a CUDA machine is required)") from e
    return vllm


def _load_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside each vLLM worker: load `(name, tensor)` pairs with the model's own loader."""
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    runner.model.load_weights(weights=weights)
    return len(weights)


def _sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float] | None:
    """log pi of each sampled token from vLLM's per-position `{token_id: Logprob}` dicts (None when absent)."""
    if not logprobs:
        return None
    return [float(d[t].logprob) for t, d in zip(token_ids, logprobs, strict=True)]


def weight_chunks(named: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Group `(name, tensor)` pairs into CPU chunks of at most `max_bytes` (a larger tensor goes alone)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t))
        size += nbytes
    if chunk:
        yield chunk


class VLLMEngine:
    """Generate with vLLM behind the `RolloutEngine` interface; `sync_weights` loads trainer weights."""

    def __init__(self, model_path: str | Path, *, processor: Any = None, template: str | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 dtype: str = "bfloat16", seed: int = 0, enforce_eager: bool = False,
                 image_placeholder: str = "<image>", sync_chunk_bytes: int = 1 << 30,
                 prompt_fn: Callable[[Sample, bool], str] | None = None, **llm_kwargs: Any) -> None:
        if tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function
        vllm = _import_vllm()
        self.vllm = vllm
        self.llm = vllm.LLM(model=str(model_path), tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            dtype=dtype, seed=seed, enforce_eager=enforce_eager, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.processor = processor
        self.template = template or (processor.spec.template if processor is not None and hasattr(processor, "spec")
                                     else None)
        self.image_placeholder = image_placeholder
        self.sync_chunk_bytes = sync_chunk_bytes
        self.prompt_fn = prompt_fn
        self.close_ids = self.tokenizer.encode(THINK_CLOSE, add_special_tokens=False)

    # ------------------------------------------------------------------------------------ prompts
    def render(self, sample: Sample, think: bool) -> str:
        """The prompt text: our chat template when one is known, else the tokenizer's (+ `<think>\\n`)."""
        if self.prompt_fn is not None:
            return self.prompt_fn(sample, think)
        if self.template is not None:
            from r1v.processing.template import render_prompt

            text = render_prompt(sample.prompt_messages(), self.template, think=think)
        else:
            msgs = [{"role": m.role, "content": m.content} for m in sample.prompt_messages()]
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            text += "<think>\n" if think else ""
        return text.replace("<image>", self.image_placeholder) if self.image_placeholder != "<image>" else text

    def _request(self, sample: Sample, think: bool) -> dict:
        req: dict[str, Any] = {"prompt": self.render(sample, think)}
        if sample.images:
            from r1v.processing.images import load_image

            images = [load_image(im) for im in sample.images]
            req["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return req

    def _sampling(self, params: SamplingParams, n: int, max_tokens: int, seed: int | None) -> Any:
        rp = params.repetition_penalty
        if not isinstance(rp, (int, float)):
            raise ConfigError("the vLLM engine takes one repetition_penalty for all samples")
        return self.vllm.SamplingParams(
            n=n, max_tokens=max_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, repetition_penalty=float(rp), seed=seed,
            stop=list(params.stop) or None, logprobs=0 if params.return_logprobs else None,
            skip_special_tokens=False, spaces_between_special_tokens=False)

    # ------------------------------------------------------------------------------------ generate
    def generate(self, samples: Sequence[Sample], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions per sample, with the two-phase thinking budget when one is set."""
        params.validate()
        if not samples:
            return []
        budget = params.max_think_tokens if params.think else None
        first = min(budget, params.max_new_tokens) if budget is not None else params.max_new_tokens
        first = max(first, 1)
        requests = [self._request(s, params.think) for s in samples]
        outs = self.llm.generate(requests, self._sampling(params, params.n, first, params.seed), use_tqdm=False)
        rows = []  # (sample index, prompt ids, generated ids, logprobs, finish)
        for i, out in enumerate(outs):
            for o in out.outputs:
                lps = _sampled_logprobs(o.token_ids, o.logprobs)
                rows.append([i, list(out.prompt_token_ids), list(o.token_ids), lps, o.finish_reason])

        if budget is not None and budget < params.max_new_tokens:
            self._continue(rows, requests, params)
        groups: list[list[Completion]] = [[] for _ in samples]
        for i, prompt_ids, ids, lps, finish in rows:
            groups[i].append(self._completion(prompt_ids, ids, lps, finish, params.think))
        return groups

    def _continue(self, rows: list[list[Any]], requests: list[dict], params: SamplingParams) -> None:
        """Phase 2: rows that used up the thinking budget get `</think>` (if missing) and write the answer."""
        todo, reqs = [], []
        k = len(self.close_ids)
        for r, (i, prompt_ids, ids, _lps, finish) in enumerate(rows):
            if finish != "length":
                continue
            closed = any(ids[j:j + k] == self.close_ids for j in range(len(ids) - k + 1))
            if not closed:
                ids.extend(self.close_ids)
                if rows[r][3] is not None:
                    rows[r][3].extend([0.0] * k)  # forced tokens: not sampled
            left = params.max_new_tokens - len(ids)
            if left <= 0:
                continue
            req = {"prompt_token_ids": prompt_ids + ids}
            if "multi_modal_data" in requests[i]:
                req["multi_modal_data"] = requests[i]["multi_modal_data"]
            todo.append((r, left))
            reqs.append(req)
        for (r, left), req in zip(todo, reqs, strict=True):  # different lengths: one call per row
            out = self.llm.generate([req], self._sampling(params, 1, left, None), use_tqdm=False)[0].outputs[0]
            rows[r][2].extend(out.token_ids)
            if rows[r][3] is not None:
                rows[r][3].extend(_sampled_logprobs(out.token_ids, out.logprobs) or [])
            rows[r][4] = out.finish_reason

    def _completion(self, prompt_ids: list[int], ids: list[int], lps: list[float] | None, finish: str,
                    think: bool) -> Completion:
        eos = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        if ids and ids[-1] in eos:  # as the transformers engine: stop token not part of the completion
            ids = ids[:-1]
            lps = lps[:-1] if lps is not None else None
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        starts_in_think = think and self.tokenizer.decode(prompt_ids[-8:]).rstrip().endswith("<think>")
        thought, answer = split_completion(text, starts_in_think)
        n_think = 0
        if thought is not None:
            n_think = (len(self.tokenizer.encode(text.split(THINK_CLOSE)[0], add_special_tokens=False))
                       if THINK_CLOSE in text else len(ids))
        return Completion(text=text, token_ids=ids, finish_reason="length" if finish == "length" else "stop",
                          think=thought, answer=answer, num_think_tokens=n_think, prompt_tokens=len(prompt_ids),
                          logprobs=lps)

    # ------------------------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module, name_map: Callable[[str], str] | None = None) -> int:
        """Load `model`'s current weights into every vLLM worker (see the module docstring); returns the count.

        LoRA models are merged into a copy first; `name_map` renames parameters when the trainer's names
        differ from the checkpoint names vLLM's loader expects.
        """
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        named = ((name_map(n) if name_map else n, t) for n, t in model.state_dict().items())
        sent = 0
        for chunk in weight_chunks(named, self.sync_chunk_bytes):
            self.llm.collective_rpc(_load_on_worker, args=(chunk,))
            sent += len(chunk)
        self.llm.reset_prefix_cache()
        return sent
