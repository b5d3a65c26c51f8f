"""Rollout engines: turn Samples into completions (token ids, text, thinking/answer split, log-probs).

One small interface serves chat, eval and RL rollouts:

    engine = TransformersEngine(vlm)                 # vlm: r1v.model.vlm.VLM
    groups = engine.generate(samples, SamplingParams(n=8, temperature=1.0, max_think_tokens=512))
    groups[i][j].answer, groups[i][j].token_ids, groups[i][j].finish_reason

`TransformersEngine` batches every sample x `n` into one `generate` call with a KV cache. Sampling is done
by our own logits processors, applied in a fixed, documented order (repetition penalty -> temperature ->
top-k -> top-p -> thinking budget), so a per-row repetition penalty (AL-CoTD's DRLC) and the thinking budget
compose predictably. The vLLM engine (GPU) lives in `r1v.rollout.vllm` behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from r1v.data.schema import Sample
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.rollout.decode import decode
from r1v.rollout.streams import row_keys

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample. Defaults follow Skywork's inference scripts (temperature 0.6, top_p 0.95, rep. 1.05).

    - temperature 0 means greedy decoding.
    - max_new_tokens bounds thinking + answer together; max_think_tokens (optional) closes the thought with
      `</think>` once a row has spent that many tokens thinking, then lets the model answer.
    - repetition_penalty may be one float or one value per sample (len == number of samples), e.g. DRLC's P.
    - think: use the template's thinking prefill (False = answer directly).
    - n: completions per sample (GRPO's num_generations).
    - min_new_tokens: the stop ids are suppressed before this many tokens (benchmarks, fixed lengths).
    - seed: seeds torch's global generator before the call (the rows' draws then depend on the batch); for
      draws that do not, pass per-sample `seeds` to `generate` (RL rollouts do).
    """

    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float | Sequence[float] = 1.05
    max_think_tokens: int | None = None
    think: bool = True
    stop: list[str] = field(default_factory=list)
    n: int = 1
    seed: int | None = None
    return_logprobs: bool = False
    min_new_tokens: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.min_new_tokens < 0:
            raise ValueError("min_new_tokens must be >= 0")
        if self.max_think_tokens is not None and self.max_think_tokens < 0:
            raise ValueError("max_think_tokens must be >= 0")


@dataclass
class Completion:
    """One generated completion.

    `text` is everything generated after the prompt (for templates that pre-fill `<think>\\n` it starts
    inside the thought and holds only `</think>`); `think` and `answer` split it at the last `</think>`.
    `logprobs[t]` is log pi(token_t | prefix) under the model's raw distribution (no sampling transforms),
    filled when `return_logprobs` is set.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    think: str | None
    answer: str
    num_think_tokens: int
    prompt_tokens: int
    logprobs: list[float] | None = None


class RolloutEngine(Protocol):
    """What every engine offers: `generate(samples, params) -> one list of n Completions per sample`.

    `seeds` (one int per sample, optional): completion j of sample i is sampled from a random stream keyed
    by `(seeds[i], j)` alone, so it is the same whichever other samples share the call (world-size
    invariant rollouts: the same prompts on 1 or N processes sample the same completions)."""

    def generate(self, samples: Sequence[Sample], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]: ...


# ----------------------------------------------------------------------------------- logits processors


class RepetitionPenalty(LogitsProcessor):
    """CTRL-style repetition penalty with one value per row: seen tokens' positive logits are divided by
    the penalty, negative ones multiplied (the same rule as transformers', which Skywork's scripts use)."""

    def __init__(self, penalty: torch.Tensor) -> None:
        self.penalty = penalty  # [B]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if bool((self.penalty == 1.0).all()):
            return scores
        p = self.penalty.to(scores.device, scores.dtype).unsqueeze(1)  # [B, 1]
        seen = torch.gather(scores, 1, input_ids)  # [B, T]
        seen = torch.where(seen < 0, seen * p, seen / p)
        return scores.scatter(1, input_ids, seen)

    def apply_seen(self, seen: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The same rule over [B, S] ids of the tokens seen so far (repeats allowed; the decode loop's form:
        a gather and scatter of S << V entries instead of a pass over [B, V])."""
        if self.all_one:
            return scores
        got = scores.gather(1, seen)
        p = self.penalty_col
        return scores.scatter_(1, seen, torch.where(got < 0, got * p, got / p))

    @property
    def all_one(self) -> bool:
        if not hasattr(self, "_all_one"):
            self._all_one = bool((self.penalty == 1.0).all())
        return self._all_one

    @property
    def penalty_col(self) -> torch.Tensor:
        return self.penalty.unsqueeze(1)


class SuppressTokens(LogitsProcessor):
    """Never sample these ids: the image placeholders (`<img>`, `</img>`, `<IMG_CONTEXT>`), which only the
    processor may place; a barely trained model would otherwise sometimes emit them."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.Tensor) -> torch.Tensor:
        if self.ids.numel() == 0:
            return scores
        return scores.index_fill(1, self.ids.to(scores.device), float("-inf"))


#: nucleus candidates tried before a full sort: the top-k of the probabilities, widened while a row's
#: candidates hold no more than `top_p` of the mass (a full sort of [16, 49k] costs ~100 ms on one core,
#: a top-256 ~5 ms)
TOP_P_CANDIDATES = (256, 4096)


def top_p_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, V] bool: the smallest most-probable prefix of each row whose mass reaches `top_p` (>= 1 token).

    A token is kept when the mass of the tokens ranked before it is <= top_p. Computed on the top-k
    candidates: once their cumulative mass exceeds top_p, nothing ranked after them can be kept, so the
    result equals the full sort's; rows the candidates do not cover try a wider k, then the full sort.
    """
    b, v = probs.shape
    keep = torch.zeros_like(probs, dtype=torch.bool)
    rows = torch.arange(b, device=probs.device)
    for k in (*[c for c in TOP_P_CANDIDATES if c < v], v):
        sub = probs if rows.numel() == b else probs.index_select(0, rows)
        vals, idx = (sub.topk(k, dim=-1) if k < v else torch.sort(sub, descending=True, dim=-1))
        cum = vals.cumsum(-1)
        kept = (cum - vals) <= top_p
        covered = cum[:, -1] > top_p if k < v else torch.ones_like(cum[:, -1], dtype=torch.bool)
        mask = torch.zeros_like(sub, dtype=torch.bool).scatter_(1, idx, kept)
        if rows.numel() == b and bool(covered.all()):
            return mask
        keep.index_copy_(0, rows[covered], mask[covered])
        rows = rows[~covered]
        if rows.numel() == 0:
            break
    return keep


class TemperatureTopKTopP(LogitsProcessor):
    """Temperature, then top-k, then nucleus (top-p) filtering, in that order."""

    def __init__(self, temperature: float, top_k: int, top_p: float) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature > 0 and self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k > 0 and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            scores = scores.masked_fill(~top_p_keep(scores.softmax(-1), self.top_p), float("-inf"))
        return scores


class ThinkBudget(LogitsProcessor):
    """Close the thought once a row has spent `budget` generated tokens without writing `</think>`.

    From then on the `</think>` token sequence is forced (one token per step), after which the model
    continues freely and writes its answer. Rows that close the thought themselves are left alone.
    """

    def __init__(self, close_ids: list[int], budget: int, prompt_len: int, batch: int) -> None:
        self.close_ids = close_ids
        self.budget = budget
        self.prompt_len = prompt_len
        self.closed = [False] * batch
        self.forcing = [0] * batch  # index into close_ids of the next forced token; 0 = not forcing

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        gen = input_ids[:, self.prompt_len:]
        k = len(self.close_ids)
        for row in range(gen.shape[0]):
            if self.closed[row]:
                continue
            tail = gen[row, -k:].tolist() if gen.shape[1] >= k else []
            if tail == self.close_ids:
                self.closed[row] = True
                continue
            if self.forcing[row] == 0 and gen.shape[1] < self.budget:
                continue
            nxt = self.close_ids[self.forcing[row]]
            self.forcing[row] += 1
            if self.forcing[row] == k:
                self.closed[row] = True
            scores[row] = float("-inf")
            scores[row, nxt] = 0.0
        return scores

    def step(self, gen: torch.Tensor, steps: int, scores: torch.Tensor) -> torch.Tensor:
        """The same rule, vectorised over rows, reading the generated ids `gen[:, :steps]` (decode loop)."""
        k = len(self.close_ids)
        if not hasattr(self, "_closed"):
            self._close = torch.tensor(self.close_ids, dtype=torch.long, device=scores.device)
            self._closed_t = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
            self._forcing_t = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            self._closed = True
        closed, forcing = self._closed_t, self._forcing_t
        if steps >= k:
            closed |= (gen[:, steps - k:steps] == self._close).all(-1)
        act = ~closed & ((forcing > 0) | (steps >= self.budget))
        if not bool(act.any()):
            return scores
        rows = act.nonzero().squeeze(1)
        nxt = self._close[forcing[rows]]
        scores[rows] = float("-inf")
        scores[rows, nxt] = 0.0
        forcing[rows] += 1
        closed |= forcing == k
        return scores


class _TextStream(BaseStreamer):
    """Feeds decoded text deltas of a single-row generation to `on_text(kind, delta)`, with kind
    'think' until `</think>` is written and 'answer' after (or 'answer' throughout when not thinking)."""

    def __init__(self, tokenizer, on_text: Callable[[str, str], None], in_think: bool, stop_ids: set[int]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.in_think = in_think
        self.stop_ids = stop_ids
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist() if int(t) not in self.stop_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return
        self._emit(text)

    def _emit(self, text: str) -> None:
        while self.sent < len(text):
            if self.in_think:
                end = text.find(THINK_CLOSE, self.sent)
                if end < 0:
                    # hold back a partial "</think>" at the end
                    safe = len(text)
                    for k in range(len(THINK_CLOSE) - 1, 0, -1):
                        if text.endswith(THINK_CLOSE[:k]):
                            safe = len(text) - k
                            break
                    if safe > self.sent:
                        self.on_text("think", text[self.sent:safe])
                        self.sent = safe
                    return
                if end > self.sent:
                    self.on_text("think", text[self.sent:end])
                self.sent = end + len(THINK_CLOSE)
                self.in_think = False
            else:
                self.on_text("answer", text[self.sent:])
                self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        self._emit(text)


# ----------------------------------------------------------------------------------------- helpers


def split_completion(text: str, starts_in_think: bool) -> tuple[str | None, str]:
    """Split generated text into (thinking, answer) at the last `</think>`.

    With a pre-filled `<think>\\n` the text starts inside the thought; a thought that was never closed
    leaves the answer empty.
    """
    body = text
    if body.lstrip().startswith(THINK_OPEN):
        body = body.lstrip()[len(THINK_OPEN):]
        starts_in_think = True
    if THINK_CLOSE in body:
        think, answer = body.rsplit(THINK_CLOSE, 1)
        return think.strip(), answer.strip()
    if starts_in_think:
        return body.strip(), ""
    return None, body.strip()


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's eos plus the end-of-turn markers of our chat templates."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<｜end▁of▁sentence｜>", "<|endoftext|>"):
        if tok in vocab and vocab[tok] not in ids:
            ids.append(int(vocab[tok]))
    return ids


@torch.no_grad()
def completion_logprobs(model, inputs: dict, completion_ids: torch.LongTensor,
                        completion_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log pi(y_t | x, y_<t) for completions appended to a left-padded prompt batch.

    inputs: the processor's batch (input_ids [B, P], attention_mask [B, P], pixel_values or None).
    completion_ids / completion_mask: [B, C]. Returns [B, C] float32 (0 where masked).
    """
    ids = torch.cat([inputs["input_ids"], completion_ids], dim=1)
    attn = torch.cat([inputs["attention_mask"], completion_mask.to(inputs["attention_mask"].dtype)], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": attn}
    if inputs.get("pixel_values") is not None:
        kwargs["pixel_values"] = inputs["pixel_values"]
    logits = model(**kwargs).logits[:, inputs["input_ids"].shape[1] - 1: -1].float()  # [B, C, V]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return logp * completion_mask


def _repeat_samples(samples: Sequence[Sample], n: int) -> list[Sample]:
    return [s for s in samples for _ in range(n)]


# ------------------------------------------------------------------------------------------ engine


class TransformersEngine:
    """Batched generation with transformers' `generate` (CPU, tests, small runs).

    All `len(samples) * n` rows go through one `generate` call (left padding, KV cache); image tiles are
    concatenated in row order, as the model expects.
    """

    def __init__(self, vlm, processor=None, backend: Literal["static", "hf"] = "static") -> None:
        from r1v.processing.processor import Processor

        if backend not in ("static", "hf"):
            raise ValueError(f"backend must be 'static' or 'hf', got {backend!r}")
        self.backend = backend
        self.vlm = vlm
        self.model = vlm.model
        self.tokenizer = vlm.tokenizer
        self.processor = processor or Processor(vlm.tokenizer, vlm.spec)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.close_ids = self.tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        vocab = self.tokenizer.get_vocab()
        self.banned_ids = [vocab[t] for t in (IMG_START, IMG_END, IMG_CONTEXT) if t in vocab]

    def _processors(self, rows: int, prompt_len: int, params: SamplingParams, samples_n: int) -> LogitsProcessorList:
        rp = params.repetition_penalty
        if isinstance(rp, (int, float)):
            penalty = torch.full((rows,), float(rp))
        else:
            if len(rp) != samples_n:
                raise ValueError(f"repetition_penalty has {len(rp)} values for {samples_n} samples")
            penalty = torch.tensor([float(x) for x in rp]).repeat_interleave(params.n)
        procs = LogitsProcessorList([SuppressTokens(self.banned_ids), RepetitionPenalty(penalty)])
        if params.temperature > 0:
            procs.append(TemperatureTopKTopP(params.temperature, params.top_k, params.top_p))
        if params.think and params.max_think_tokens is not None:
            procs.append(ThinkBudget(self.close_ids, params.max_think_tokens, prompt_len, rows))
        return procs

    def _generate_hf(self, kwargs: dict, params: SamplingParams, procs: LogitsProcessorList,
                     streamer: BaseStreamer | None) -> torch.Tensor:
        """transformers' `generate` with our processors (the baseline backend). Returns new ids [B, T] (cpu)."""
        gen_cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens, min_new_tokens=params.min_new_tokens or None,
            do_sample=params.temperature > 0,
            temperature=1.0, top_p=1.0, top_k=None,  # done by our processors, in our order
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, stop_strings=params.stop or None,
        )
        out = self.model.generate(
            **kwargs, generation_config=gen_cfg, logits_processor=procs,
            tokenizer=self.tokenizer if params.stop else None, streamer=streamer,
        )
        return out[:, kwargs["input_ids"].shape[1]:].cpu()

    def _generate_static(self, kwargs: dict, params: SamplingParams, procs: LogitsProcessorList,
                         streamer: BaseStreamer | None, keys: np.ndarray | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Our decode loop (`r1v.rollout.decode`): same processors, same order, pre-allocated KV cache."""
        transforms = []
        track = False
        for proc in procs:
            if isinstance(proc, RepetitionPenalty):
                if not proc.all_one:
                    proc.penalty = proc.penalty.to(kwargs["input_ids"].device)
                    track = True
                    transforms.append(lambda st, s, f=proc: f.apply_seen(st.seen, s))
            elif isinstance(proc, ThinkBudget):
                transforms.append(lambda st, s, f=proc: f.step(st.tokens, st.step, s))
            else:
                transforms.append(lambda st, s, f=proc: f(None, s))
        on_token = None
        if streamer is not None:
            streamer.put(kwargs["input_ids"].cpu())
            on_token = lambda tok: streamer.put(tok.cpu())  # noqa: E731
        out = decode(self.model, kwargs["input_ids"], kwargs["attention_mask"],
                     pixel_values=kwargs.get("pixel_values"), max_new_tokens=params.max_new_tokens,
                     stop_ids=self.stop_ids, pad_id=self.pad_id, sample=params.temperature > 0,
                     transforms=transforms, track_seen=track, min_new_tokens=params.min_new_tokens,
                     return_logprobs=params.return_logprobs, on_token=on_token,
                     stop_check=self._stop_check(params.stop) if params.stop else None, row_keys=keys)
        if streamer is not None:
            streamer.end()
        lp = out.logprobs.cpu() if out.logprobs is not None else None
        tokens = out.tokens.cpu()
        steps = torch.arange(tokens.shape[1])
        # rows ended by a stop string: mark the end with a stop id so the row is cut there
        tokens.masked_fill_(steps[None] >= out.lengths.cpu()[:, None], self.stop_ids[0])
        return tokens, lp

    def _stop_check(self, stop: list[str]):
        """A `decode` stop rule: a row stops once its recent text contains one of the stop strings."""
        window = max(len(x.encode("utf-8")) for x in stop) + 1

        def check(tokens: torch.Tensor, steps: int, active: torch.Tensor) -> torch.Tensor:
            hit = torch.zeros_like(active)
            tail = tokens[:, max(0, steps - window):steps].tolist()
            for r in active.nonzero().squeeze(1).tolist():
                text = self.tokenizer.decode(tail[r], skip_special_tokens=False)
                hit[r] = any(x in text for x in stop)
            return hit

        return check

    def _think_tokens(self, ids: list[int], text: str) -> int:
        """Tokens before the first `</think>` (all of them when the thought never closed)."""
        k = len(self.close_ids)
        for i in range(len(ids) - k + 1):
            if ids[i:i + k] == self.close_ids:
                return i
        if THINK_CLOSE in text:  # written with another tokenisation of "</think>"
            return len(self.tokenizer.encode(text.split(THINK_CLOSE)[0], add_special_tokens=False))
        return len(ids)

    def _starts_in_think(self, prompt_ids: list[int]) -> bool:
        tail = self.tokenizer.decode(prompt_ids[-8:], skip_special_tokens=False)
        return tail.rstrip().endswith(THINK_OPEN)

    @torch.no_grad()
    def generate(self, samples: Sequence[Sample], params: SamplingParams,
                 on_text: Callable[[str, str], None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample `params.n` completions for each sample. `on_text(kind, delta)` streams a single row;
        `seeds` (one per sample) gives each completion its own random stream (see `RolloutEngine`)."""
        params.validate()
        if not samples:
            return []
        if seeds is not None and len(seeds) != len(samples):
            raise ValueError(f"{len(seeds)} seeds for {len(samples)} samples")
        if seeds is not None and self.backend == "hf":
            raise ValueError("per-sample seeds need backend='static' (transformers' generate draws from one "
                             "global generator)")
        rows_samples = _repeat_samples(samples, params.n)
        batch = self.processor.encode_batch_prompts(rows_samples, think=params.think)
        input_ids, attn = batch["input_ids"], batch["attention_mask"]
        device = next(self.model.parameters()).device
        rows, prompt_len = input_ids.shape
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": attn.to(device)}
        if batch.get("pixel_values") is not None:
            kwargs["pixel_values"] = batch["pixel_values"].to(device, self.model.dtype)
        starts_in_think = [self._starts_in_think(input_ids[r][attn[r].bool()].tolist()) for r in range(rows)]

        streamer = None
        if on_text is not None:
            if rows != 1:
                raise ValueError("streaming needs exactly one sample and n=1")
            streamer = _TextStream(self.tokenizer, on_text, starts_in_think[0], set(self.stop_ids))
        procs = self._processors(rows, prompt_len, params, len(samples))
        if params.seed is not None:
            torch.manual_seed(params.seed)
        step_logprobs = None
        if self.backend == "hf":
            gen = self._generate_hf(kwargs, params, procs, streamer)
        else:
            keys = row_keys(seeds, params.n) if seeds is not None else None
            gen, step_logprobs = self._generate_static(kwargs, params, procs, streamer, keys)

        completions: list[Completion] = []
        token_lists: list[list[int]] = []
        for r in range(rows):
            ids = gen[r].tolist()
            finish: FinishReason = "length"
            for i, t in enumerate(ids):
                if t in self.stop_ids:
                    ids, finish = ids[:i], "stop"
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            if finish == "length" and params.stop and any(s in text for s in params.stop):
                finish = "stop"
            think, answer = split_completion(text, starts_in_think[r])
            n_think = self._think_tokens(ids, text) if think is not None else 0
            token_lists.append(ids)
            completions.append(Completion(text=text, token_ids=ids, finish_reason=finish, think=think,
                                          answer=answer, num_think_tokens=n_think,
                                          prompt_tokens=int(attn[r].sum())))
        if params.return_logprobs and step_logprobs is not None:
            for r, c in enumerate(completions):
                c.logprobs = step_logprobs[r, : len(token_lists[r])].tolist()
        elif params.return_logprobs:
            width = max(1, max(len(t) for t in token_lists))
            comp = torch.full((rows, width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((rows, width), dtype=torch.float32)
            for r, ids in enumerate(token_lists):
                comp[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[r, : len(ids)] = 1.0
            lp = completion_logprobs(self.model, {k: v.to(device) if torch.is_tensor(v) else v
                                                  for k, v in kwargs.items()}, comp.to(device), mask.to(device))
            for r, c in enumerate(completions):
                c.logprobs = lp[r, : len(token_lists[r])].cpu().tolist()
        return [completions[i * params.n:(i + 1) * params.n] for i in range(len(samples))]
