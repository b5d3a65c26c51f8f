"""A Skywork-VL-Reward-style reward model: the VLM with a scalar head, and its scoring API.

Model (spec section 5): the vision-language model's backbone (vision tower -> connector -> LLM, the LM
head unused) followed by one `Linear(hidden, 1)` on the final hidden state of the LAST ANSWER TOKEN: the
last token the processor labels as assistant text, i.e. the end-of-turn token that closes the answer.
Trained with the Bradley-Terry loss (`r1v train rm`, `r1v.recipes.reward_model`).

Folder layout (what `RewardModel.save` writes and `RewardModel.load` reads): an ordinary r1v model folder
(`load_vlm` reads it) plus `reward_head.safetensors` (`weight [1, H]`, `bias [1]`) and
`reward_model.json` (`{"format": "r1v-rm/1", "hidden_size": H}`).

Scoring API, used by GRPO's hybrid reward, MPO pair building and iterative SFT:

    rm = RewardModel.load("runs/rm/final")
    rm.score(samples, completions)       # -> list[float], one per (prompt sample, completion text)
    rm.score_samples(samples)            # samples that already end with the assistant answer
    rm(completion, columns)              # GRPO's reward_model plug-in shape (text-only unless
                                         # columns carry "images")
    # or from a config: reward_model: r1v.rewards.reward_model:score_completion  (R1V_REWARD_MODEL=folder)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.data.schema import Message, Sample
from r1v.errors import DataError, ModelError
from r1v.plugins import load_callable
from r1v.processing.processor import IGNORE_INDEX
from r1v.rewards.rules import Scorer, columns_of

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"
FORMAT = "r1v-rm/1"
THINK_OPEN = "<think>"
THINK_PREFILL = "<think>\n"


def as_assistant_turn(completion: str) -> str:
    """A generated completion as the assistant turn the processor trains on.

    Engines with a `<think>\\n`-prefilled template return text that starts inside the thought; such
    text (it holds `</think>` but does not open with `<think>`) gets the prefill back, so the
    processor puts it in the (unlabelled) prompt exactly as at generation time.
    """
    if "</think>" in completion and not completion.lstrip().startswith(THINK_OPEN):
        return THINK_PREFILL + completion
    return completion


def with_answer(sample: Sample, completion: str) -> Sample:
    """`sample`'s prompt followed by `completion` as the final assistant turn."""
    return replace(sample, messages=[*sample.prompt_messages(), Message("assistant", as_assistant_turn(completion))])


def last_answer_index(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last labelled (assistant) token per row. labels `[B, T]` -> `[B]`; -1 if none."""
    t = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, t, torch.full_like(t, -1)).max(dim=1).values


class ScalarHeadModel(nn.Module):
    """`InternVLForConditionalGeneration` backbone + `Linear(hidden, 1)`: one score per sequence."""

    def __init__(self, vlm_model: nn.Module, head: nn.Linear | None = None, seed: int = 0) -> None:
        super().__init__()
        self.vlm = vlm_model
        hidden = int(vlm_model.config.get_text_config().hidden_size)
        if head is None:
            head = nn.Linear(hidden, 1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
            nn.init.zeros_(head.bias)
            p = next(vlm_model.parameters())
            head = head.to(p.device, p.dtype)
        if head.in_features != hidden or head.out_features != 1:
            raise ModelError(f"reward head is {head.in_features}->{head.out_features}, expected {hidden}->1")
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor,
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids/attention_mask `[B, T]`, score_index `[B]` (position of the last answer token),
        pixel_values `[N, 3, S, S]` or None -> scores `[B]` (fp32)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        hidden = self.vlm.model(**kwargs).last_hidden_state  # [B, T, H]; no LM head
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, score_index]  # [B, H]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1).float()  # [B]


def encode_scored(processor: Any, samples: Sequence[Sample]) -> dict[str, Any]:
    """Samples ending with their answer -> a right-padded batch with `score_index` `[B]`."""
    encoded = []
    for s in samples:
        if s.target is None:
            raise DataError("a sample to score must end with an assistant answer", record=s.id, field="messages")
        encoded.append(processor.encode_for_training(s))
    batch = processor.collate_training(encoded)
    batch["score_index"] = last_answer_index(batch["labels"])
    return batch


class RewardModel:
    """A trained reward model with its tokenizer and processor; `score(...)` returns plain floats."""

    def __init__(self, vlm: Any, net: ScalarHeadModel, batch_size: int = 8) -> None:
        from r1v.processing.processor import Processor

        if vlm.tokenizer is None:
            raise ModelError(f"{vlm.name}: a reward model needs a tokenizer")
        self.vlm, self.net, self.batch_size = vlm, net, batch_size
        self.processor = Processor(vlm.tokenizer, vlm.spec)

    @classmethod
    def from_vlm(cls, vlm: Any, seed: int = 0, batch_size: int = 8) -> RewardModel:
        """A fresh reward model around `vlm` (new randomly initialised head)."""
        return cls(vlm, ScalarHeadModel(vlm.model, seed=seed), batch_size)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
             batch_size: int = 8) -> RewardModel:
        """Load a folder written by `save` (or by `r1v train rm`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from r1v.model.build import load_vlm
        from r1v.model.vlm import read_folder_json

        path = Path(path)
        if not (path / META_FILE).is_file() or not (path / HEAD_FILE).is_file():
            raise ModelError(f"{path}: not a reward model folder (needs {META_FILE} and {HEAD_FILE}; "
                             "train one with `r1v train rm`)")
        meta = read_folder_json(path / META_FILE)
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path / META_FILE}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
        hidden = meta.get("hidden_size")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ModelError(f"{path / META_FILE}: field 'hidden_size' must be a positive integer, got {hidden!r}")
        try:
            weights = load_file(str(path / HEAD_FILE))
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{path / HEAD_FILE}: corrupt or truncated safetensors file ({e})") from None
        head = nn.Linear(hidden, 1)
        try:
            head.load_state_dict(weights)
        except RuntimeError as e:
            raise ModelError(f"{path / HEAD_FILE}: does not fit a head of hidden size {hidden}: "
                             f"{' '.join(str(e).split())}") from None
        vlm = load_vlm(path, device=device, dtype=dtype)
        model_hidden = vlm.model.config.text_config.hidden_size
        if model_hidden != hidden:
            raise ModelError(f"{path / META_FILE}: hidden_size {hidden} does not match the model's {model_hidden}")
        p = next(vlm.model.parameters())
        rm = cls(vlm, ScalarHeadModel(vlm.model, head.to(p.device, p.dtype)), batch_size)
        rm.net.eval()
        return rm

    def save(self, folder: str | Path) -> Path:
        """Write the model folder, the head and `reward_model.json`."""
        from safetensors.torch import save_file

        from r1v.model.build import save_model
        from r1v.model.vlm import model_folder

        folder = Path(folder)
        head = {k: v.detach().cpu().contiguous() for k, v in self.net.head.state_dict().items()}
        with model_folder(folder) as tmp:  # the model, the head and the meta file appear together
            save_model(self.vlm, tmp)
            save_file(head, str(tmp / HEAD_FILE))
            (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, "hidden_size": self.net.head.in_features,
                                                     "score": "last answer token"}, indent=2) + "\n")
        return folder

    @torch.no_grad()
    def score_samples(self, samples: Sequence[Sample]) -> list[float]:
        """Scores of samples that end with their assistant answer (iterative SFT's scorer shape)."""
        was_training = self.net.training
        self.net.eval()
        device = next(self.net.parameters()).device
        out: list[float] = []
        try:
            for start in range(0, len(samples), self.batch_size):
                b = encode_scored(self.processor, samples[start:start + self.batch_size])
                pv = b["pixel_values"]
                scores = self.net(b["input_ids"].to(device), b["attention_mask"].to(device),
                                  b["score_index"].to(device),
                                  pv.to(device, self.vlm.model.dtype) if pv is not None else None)
                out.extend(float(x) for x in scores.cpu())
        finally:
            self.net.train(was_training)
        return out

    def score(self, samples: Sequence[Sample], completions: Sequence[str]) -> list[float]:
        """One score per (prompt sample, completion text); the samples' own answers are replaced."""
        if len(samples) != len(completions):
            raise DataError(f"{len(completions)} completions for {len(samples)} samples", field="completions")
        return self.score_samples([with_answer(s, c) for s, c in zip(samples, completions, strict=True)])

    def __call__(self, completion: str, columns: dict[str, Any]) -> float:
        """GRPO's `reward_model(completion, columns)`: the prompt comes from `columns["question"]` (with
        `columns["images"]` when present; without images the `<image>` tags are dropped: text-only)."""
        question = str(columns.get("question") or "")
        images = list(columns.get("images") or [])
        if not images:
            question = question.replace("<image>\n", "").replace("<image>", "")
        sample = Sample(id=str(columns.get("id", "rm")), messages=[Message("user", question)], images=images)
        return self.score([sample], [completion])[0]


@lru_cache(maxsize=2)
def _cached(path: str) -> RewardModel:
    return RewardModel.load(path)


def score_completion(completion: str, columns: dict[str, Any]) -> float:
    """A plug-in (`module:function`) scoring with the reward model in the folder `$R1V_REWARD_MODEL`."""
    path = os.environ.get("R1V_REWARD_MODEL")
    if not path:
        raise ModelError("set R1V_REWARD_MODEL to a reward model folder (from `r1v train rm`) to use "
                         "r1v.rewards.reward_model:score_completion")
    return _cached(path)(completion, columns)


def reward_model_scorer(spec: str | None, *, device: Any = "cpu", batch_size: int = 8) -> Scorer | None:
    """r_RM as a batched `Scorer`: a reward-model folder (`r1v train rm`) loaded on `device` and run in
    batches of `batch_size` with the images and system prompt, or a plug-in (`path/file.py:function` /
    `module:function`, `fn(completion, columns) -> float`) called per completion; None for no spec."""
    if spec is None:
        return None
    if Path(spec).is_dir():
        return RewardModel.load(spec, device=str(device), batch_size=batch_size).score
    fn = load_callable(spec, "reward model")
    return lambda samples, texts: [float(fn(t, columns_of(s))) for s, t in zip(samples, texts, strict=True)]
