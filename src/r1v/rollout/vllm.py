"""The vLLM rollout engine: the `RolloutEngine` interface on top of `vllm.LLM` (GPU, or the CPU build).

    engine = VLLMEngine.from_vlm(vlm, "runs/grpo/rollout_model", text_only=True)   # or VLLMEngine(folder)
    groups = engine.generate(samples, SamplingParams(n=8, temperature=1.0, max_think_tokens=4096), seeds=seeds)
    engine.sync_weights(model)            # after optimiser steps: rollouts use the new policy

Install with `make test-vllm` (CPU build, into .venv) or `pip install "r1v[vllm]"` (GPU); vllm is imported
only when an engine is made. Start-up takes about a minute on CPU; tests share one engine per module.

Prompts: text-only samples go in as token ids from our own processor (`Processor.encode_prompt`, `<think>\\n`
prefill included), so vLLM sees exactly the ids `TransformersEngine` sees. Samples with images go in as our
rendered prompt text with the images in `multi_modal_data`; vLLM's InternVL support tiles them itself (the
same dynamic-tiling algorithm) and expands `image_placeholder`. `text_only=True` (the export `from_vlm` writes
for CPU: vLLM's InternVL image path imports torchvision, which has no CPU build beside our torch) serves only
the language model, a plain `Qwen2ForCausalLM` folder, and refuses samples with images.

Sampling: every completion is its own vLLM request with `n=1` and its own seed, `stream_key(seeds[i], j)`,
so completion j of sample i draws the same tokens whichever other rows share the call (world-size-invariant
rollouts, as our engine's counter-based streams; the two engines' random streams differ). The same stop ids
as our engine (eos + end-of-turn markers, dropped from `token_ids`), stop strings kept in the text, the image
tokens banned, log-probs of the sampled tokens under the raw distribution (vLLM's `raw_logprobs`), and a
per-sample repetition penalty (DRLC) are honoured.

Thinking budget (two phases): phase 1 samples at most `max_think_tokens` tokens. A completion that ended
(stop token) is done. One that ran out of budget continues in phase 2 from its own token ids: if it has not
written `</think>` yet, the `</think>` tokens are appended first (the thought is closed for it), then the
model writes the answer with the remaining `max_new_tokens`. Token ids are kept exactly as sampled, so
RL log-probs line up with what was generated; greedy, this equals our engine's forced `</think>`.

Weight sync (`sync_weights`): the trainer's tensors are sent in chunks of about `sync_chunk_bytes` to every
worker with `LLM.collective_rpc(fn, args=(chunk,))`, where `fn` runs inside each worker and calls
`model_runner.model.load_weights(chunk)`: vLLM's own checkpoint loader, which maps HF parameter names to its
fused / tensor-parallel shards. Only the tensors the policy trains are sent (LoRA: the merged weights of the
adapted layers), so a connector-only policy on a 38B model sends the connector's 92M parameters. Passing a
function to `collective_rpc` needs `VLLM_ALLOW_INSECURE_SERIALIZATION=1`, set before vLLM starts. The prefix
cache is reset afterwards so no KV computed with old weights is reused. `last_sync` holds the tensors, bytes
and seconds of the latest sync.

Colocated placement: `enable_sleep_mode=True` (GPU only) lets the trainer call `sleep()` after a rollout,
which frees the weights' and KV cache's memory for the update, and `wake_up()` before the next one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1v.data.schema import Sample
from r1v.errors import ConfigError, ModelError
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.rollout import engine as ours
from r1v.rollout.engine import Completion, SamplingParams
from r1v.rollout.streams import stream_key

log = logging.getLogger(__name__)

#: the KV cache of the CPU build when none is given (its default, a fraction of the host's memory, fails to
#: start when other processes hold memory)
CPU_KV_CACHE_GIB = 0.5

#: the prefix of the LLM's tensors in an InternVL model, and what a plain causal LM calls them
LLM_PREFIX, CAUSAL_PREFIX = "model.language_model.", "model."


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ModelError("the vLLM engine needs vllm: `make test-vllm` installs the CPU build into .venv; on a "
                         "GPU machine pip install 'r1v[vllm]'") from e
    return vllm


def _load_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside each vLLM worker: load `(name, tensor)` pairs in checkpoint format. vLLM >= 0.20 reloads in
    place layer by layer (`reload_weights`: back to checkpoint layout, the model's loader, then the kernels'
    re-packing, which the CPU build applies to every linear); older ones load straight into the parameters."""
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    if hasattr(runner, "reload_weights"):
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    else:
        runner.model.load_weights(weights=weights)
    return len(weights)


def _layer_key(name: str) -> str:
    """The decoder layer a tensor belongs to (`...layers.3.`), else its module: a chunk never splits one, since
    vLLM fuses q/k/v and gate/up of a layer and re-packs a layer once all of its tensors arrived."""
    head, sep, tail = name.partition("layers.")
    if sep:
        return head + sep + tail.split(".", 1)[0]
    return name.rsplit(".", 1)[0]


def _sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float] | None:
    """log pi of each sampled token from vLLM's per-position `{token_id: Logprob}` dicts (None when absent)."""
    if logprobs is None:
        return None
    return [float(d[t].logprob) for t, d in zip(token_ids, logprobs, strict=True)]


def weight_chunks(named: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Group `(name, tensor)` pairs into CPU chunks of about `max_bytes`, cut only between decoder layers (or
    modules outside them; see `_layer_key`), so a chunk can exceed the limit by one layer."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    key = None
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        new_key = _layer_key(name)
        if chunk and size + nbytes > max_bytes and new_key != key:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t))
        size += nbytes
        key = new_key
    if chunk:
        yield chunk


def trained_tensors(model: torch.nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """The tensors an optimiser step can change, by checkpoint name: the parameters with `requires_grad`;
    for a peft LoRA model, the merged weight of every adapted layer plus the other trainable parameters
    (names without peft's wrapping). `everything`: the whole state dict."""
    if hasattr(model, "merge_and_unload"):
        import copy

        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        wanted = set()
        for n in trainable:
            n = n.removeprefix("base_model.model.")
            if ".lora_" in n:  # ...q_proj.lora_A.default.weight -> ...q_proj.weight (merged)
                wanted.add(n.split(".lora_")[0] + ".weight")
            else:
                wanted.add(n.replace(".modules_to_save.default.", ".").replace(".original_module.", "."))
        merged = copy.deepcopy(model).merge_and_unload()
        state = merged.state_dict()
        return {n: t for n, t in state.items() if everything or n in wanted}
    if everything:
        return dict(model.state_dict())
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def llm_only_names(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An InternVL model's tensors renamed for its LLM alone (`model.language_model.X` -> `model.X`, `lm_head.*`
    kept), vision tower and connector tensors dropped (a text-only engine has no use for them); a plain causal
    LM's names stay as they are."""
    out = {}
    for n, t in named.items():
        if n.startswith(LLM_PREFIX):
            out[CAUSAL_PREFIX + n[len(LLM_PREFIX):]] = t
        elif not n.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            out[n] = t
    return out


def export_llm(vlm: Any, folder: str | Path) -> Path:
    """Write `vlm`'s language model alone as a plain `*ForCausalLM` folder (config, safetensors, tokenizer):
    what a text-only vLLM engine loads. LoRA adapters are merged into a copy first."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    model = vlm.model.merge_and_unload() if hasattr(vlm.model, "merge_and_unload") else vlm.model
    text_cfg = model.config.get_text_config()
    llm = AutoModelForCausalLM.from_config(text_cfg, dtype=model.dtype)
    missing, unexpected = llm.load_state_dict(llm_only_names(model.state_dict()), strict=False)
    if unexpected or [n for n in missing if n != "lm_head.weight"]:
        raise ModelError(f"the LLM of {vlm.name} does not load as {type(llm).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    folder.mkdir(parents=True, exist_ok=True)
    llm.save_pretrained(folder, safe_serialization=True)
    vlm.tokenizer.save_pretrained(folder)
    return folder


@dataclass
class SyncStats:
    """What one `sync_weights` sent: tensors, bytes, seconds."""

    tensors: int
    bytes: int
    seconds: float


class VLLMEngine:
    """Generate with vLLM behind the `RolloutEngine` interface; `sync_weights` loads trainer weights."""

    def __init__(self, model_path: str | Path, *, processor: Any = None, template: str | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 dtype: str = "bfloat16", seed: int = 0, enforce_eager: bool = False,
                 image_placeholder: str = "<image>", sync_chunk_bytes: int = 1 << 30, text_only: bool = False,
                 enable_sleep_mode: bool = False, kv_cache_gib: float | None = None, prompt_fn: Callable[[Sample, bool], str] | None = None,
                 **llm_kwargs: Any) -> None:
        if tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function
        threads = torch.get_num_threads()
        if tensor_parallel_size == 1 and not torch.cuda.is_available():
            # CPU: vLLM in this process (no engine-core and worker processes, each re-importing vllm for
            # ~50 s on 2 cores), not pinned to a core and not taking a core from the trainer
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            llm_kwargs.setdefault("distributed_executor_backend", "uni")
        vllm = _import_vllm()
        self.vllm = vllm
        if enable_sleep_mode:
            llm_kwargs["enable_sleep_mode"] = True
        if kv_cache_gib is None and not torch.cuda.is_available():
            kv_cache_gib = CPU_KV_CACHE_GIB
        if kv_cache_gib is not None:  # an explicit KV size (CPU: the memory fraction's check fails on busy hosts)
            llm_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        self.llm = vllm.LLM(model=str(model_path), tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            dtype=dtype, seed=seed, enforce_eager=enforce_eager, **llm_kwargs)
        torch.set_num_threads(threads)  # vLLM lowers torch's threads "for serving"; the trainer keeps its own
        self.tokenizer = self.llm.get_tokenizer()
        self.processor = processor
        self.template = template or (processor.spec.template if processor is not None and hasattr(processor, "spec")
                                     else None)
        self.image_placeholder = image_placeholder
        self.sync_chunk_bytes = sync_chunk_bytes
        self.text_only = text_only
        self.sleep_after_generate = enable_sleep_mode  # colocated: memory back to the trainer between rollouts
        self.sleeping = False
        self.prompt_fn = prompt_fn
        self.close_ids = self.tokenizer.encode(ours.THINK_CLOSE, add_special_tokens=False)
        self.stop_ids = ours.stop_token_ids(self.tokenizer)
        vocab = self.tokenizer.get_vocab()
        self.banned_ids = sorted({vocab[t] for t in (IMG_START, IMG_END, IMG_CONTEXT) if t in vocab})
        self.last_sync: SyncStats | None = None

    @classmethod
    def from_vlm(cls, vlm: Any, folder: str | Path, *, text_only: bool = True, **kwargs: Any) -> VLLMEngine:
        """An engine on `vlm`'s current weights, written to `folder` first (its LLM alone when `text_only`,
        else the whole InternVL folder), with our processor for the prompts; dtype: the model's unless given."""
        from r1v.processing.processor import Processor

        kwargs.setdefault("dtype", str(next(vlm.model.parameters()).dtype).removeprefix("torch."))
        if text_only:
            path = export_llm(vlm, folder)
        else:
            from r1v.model.build import save_model

            model = vlm.model.merge_and_unload() if hasattr(vlm.model, "merge_and_unload") else vlm.model
            path = save_model(type(vlm)(model, vlm.tokenizer, vlm.spec, vlm.name, vlm.provenance), folder)
        processor = kwargs.pop("processor", None) or Processor(vlm.tokenizer, vlm.spec)
        return cls(path, processor=processor, text_only=text_only, **kwargs)

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
        if sample.images:
            if self.text_only:
                raise ConfigError(f"sample {sample.id} has images but this vLLM engine serves the LLM alone "
                                  "(text_only; vLLM's image path needs a GPU machine, see docs/vllm.md)")
            from r1v.processing.images import load_image

            images = [load_image(im) for im in sample.images]
            return {"prompt": self.render(sample, think),
                    "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}
        if self.processor is not None and self.prompt_fn is None:
            return {"prompt_token_ids": self.processor.encode_prompt(sample, think=think)["input_ids"][0].tolist()}
        return {"prompt": self.render(sample, think)}

    def _sampling(self, params: SamplingParams, max_tokens: int, seed: int | None, penalty: float,
                  min_tokens: int = 0) -> Any:
        return self.vllm.SamplingParams(
            n=1, max_tokens=max_tokens, min_tokens=max(0, min(min_tokens, max_tokens)), temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1, repetition_penalty=penalty,
            seed=seed, stop=list(params.stop) or None, include_stop_str_in_output=True,
            stop_token_ids=self.stop_ids, logit_bias={i: -100.0 for i in self.banned_ids} or None,
            logprobs=0 if params.return_logprobs else None,
            skip_special_tokens=False, spaces_between_special_tokens=False)

    def _penalties(self, params: SamplingParams, n_samples: int) -> list[float]:
        rp = params.repetition_penalty
        if isinstance(rp, (int, float)):
            return [float(rp)] * n_samples
        if len(rp) != n_samples:
            raise ValueError(f"repetition_penalty has {len(rp)} values for {n_samples} samples")
        return [float(x) for x in rp]

    # ------------------------------------------------------------------------------------ generate
    def generate(self, samples: Sequence[Sample], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """`params.n` completions per sample (each its own seeded request), with the two-phase thinking
        budget when one is set. `seeds` as in `RolloutEngine`; without them `params.seed` keys the rows."""
        params.validate()
        if not samples:
            return []
        if seeds is not None and len(seeds) != len(samples):
            raise ValueError(f"{len(seeds)} seeds for {len(samples)} samples")
        if self.sleeping:
            self.wake_up()
        penalties = self._penalties(params, len(samples))
        budget = params.max_think_tokens if params.think else None
        first = max(min(budget, params.max_new_tokens) if budget is not None else params.max_new_tokens, 1)
        requests = [self._request(s, params.think) for s in samples]
        rows = []  # [sample index, prompt ids, generated ids, logprobs, finish, seed, penalty]
        reqs, sps = [], []
        for i in range(len(samples)):
            for j in range(params.n):
                base = seeds[i] if seeds is not None else params.seed
                seed = stream_key(base, j) % (1 << 63) if base is not None else None
                reqs.append(requests[i])
                sps.append(self._sampling(params, first, seed, penalties[i], params.min_new_tokens))
                rows.append([i, None, None, None, None, seed, penalties[i]])
        outs = self.llm.generate(reqs, sps, use_tqdm=False)
        for row, out in zip(rows, outs, strict=True):
            o = out.outputs[0]
            row[1:5] = [list(out.prompt_token_ids), list(o.token_ids),
                        _sampled_logprobs(o.token_ids, o.logprobs), o.finish_reason]
        if budget is not None and budget < params.max_new_tokens:
            self._continue(rows, requests, params)
        groups: list[list[Completion]] = [[] for _ in samples]
        for i, prompt_ids, ids, lps, finish, _seed, _pen in rows:
            groups[i].append(self._completion(prompt_ids, ids, lps, finish, params))
        if self.sleep_after_generate:
            self.sleep()
        return groups

    def _continue(self, rows: list[list[Any]], requests: list[dict], params: SamplingParams) -> None:
        """Phase 2: rows that used up the thinking budget get `</think>` (if missing) and write the answer."""
        todo, reqs, sps = [], [], []
        k = len(self.close_ids)
        for row in rows:
            i, prompt_ids, ids, lps, finish, seed, penalty = row
            if finish != "length":
                continue
            closed = any(ids[j:j + k] == self.close_ids for j in range(len(ids) - k + 1))
            if not closed:
                ids.extend(self.close_ids)
                if lps is not None:
                    lps.extend([0.0] * k)  # forced tokens: not sampled
            left = params.max_new_tokens - len(ids)
            if left <= 0:
                continue
            req = {"prompt_token_ids": prompt_ids + ids}
            if "multi_modal_data" in requests[i]:
                req["multi_modal_data"] = requests[i]["multi_modal_data"]
            todo.append(row)
            reqs.append(req)
            sps.append(self._sampling(params, left, None if seed is None else (seed + 1) % (1 << 63), penalty,
                                      params.min_new_tokens - len(ids)))
        if not reqs:
            return
        for row, out in zip(todo, self.llm.generate(reqs, sps, use_tqdm=False), strict=True):
            o = out.outputs[0]
            row[2].extend(o.token_ids)
            if row[3] is not None:
                row[3].extend(_sampled_logprobs(o.token_ids, o.logprobs) or [])
            row[4] = o.finish_reason

    def _completion(self, prompt_ids: list[int], ids: list[int], lps: list[float] | None, finish: str,
                    params: SamplingParams) -> Completion:
        if ids and ids[-1] in self.stop_ids:  # as our engine: the stop token is not part of the completion
            ids, lps = ids[:-1], (lps[:-1] if lps is not None else None)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        tail = self.tokenizer.decode(prompt_ids[-8:], skip_special_tokens=False)
        thought, answer = ours.split_completion(text, params.think and tail.rstrip().endswith(ours.THINK_OPEN))
        n_think = 0
        if thought is not None:
            k = len(self.close_ids)
            n_think = next((j for j in range(len(ids) - k + 1) if ids[j:j + k] == self.close_ids), len(ids))
        return Completion(text=text, token_ids=ids, finish_reason="length" if finish == "length" else "stop",
                          think=thought, answer=answer, num_think_tokens=n_think, prompt_tokens=len(prompt_ids),
                          logprobs=lps)

    # ------------------------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module, name_map: Callable[[str], str] | None = None,
                     everything: bool = False) -> int:
        """Load `model`'s trained tensors (see `trained_tensors`) into every vLLM worker; returns how many.

        A text-only engine gets the LLM's tensors renamed for a plain causal LM; `name_map` renames further
        when the trainer's names differ from the checkpoint names vLLM's loader expects."""
        named = trained_tensors(model, everything)
        if self.text_only:
            named = llm_only_names(named)
        if name_map is not None:
            named = {name_map(n): t for n, t in named.items()}
        return self.load_tensors(named)

    def load_tensors(self, named: dict[str, torch.Tensor]) -> int:
        """Load `(checkpoint name -> tensor)` into every worker, in chunks; times it into `last_sync`."""
        start = time.perf_counter()
        if self.sleeping:
            self.wake_up()
        sent = nbytes = 0
        for chunk in weight_chunks(named.items(), self.sync_chunk_bytes):
            self.llm.collective_rpc(_load_on_worker, args=(chunk,))
            sent += len(chunk)
            nbytes += sum(t.numel() * t.element_size() for _, t in chunk)
        self.llm.reset_prefix_cache()
        self.last_sync = SyncStats(sent, nbytes, time.perf_counter() - start)
        log.info("vLLM weight sync: %d tensors, %.1f MB, %.2f s", sent, nbytes / 1e6, self.last_sync.seconds)
        return sent

    def sleep(self, level: int = 1) -> None:
        """Free the engine's memory while the trainer updates (colocated placement; needs enable_sleep_mode)."""
        if not self.sleeping:
            self.llm.sleep(level=level)
            self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False
