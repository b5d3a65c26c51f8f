"""Token entropy, R1V3's "critical reasoning token" entropy, and checkpoint selection by it.

R1V3 (spec section 7) uses "the entropy of critical reasoning tokens" as an indicator of reasoning
ability when choosing an RL checkpoint, but the report does not define the tokens nor the rule. Ours:

Critical tokens (default): within the thinking span (completion tokens before the first `</think>`,
or the whole completion when thinking was cut off), the `top_fraction` (default 20%) of tokens with
the highest entropy in each sequence. These are the "forking" tokens where the model decides how to
go on (Wang et al. 2025, "Beyond the 80/20 rule: high-entropy minority tokens drive RL for
reasoning", who found about 20% of tokens carry this role). The indicator is the mean entropy over
those tokens of a sequence, averaged over sequences. A collapse of this value during RL means the
policy stopped exploring at its decision points.

Alternative (`critical_mask=`): tokens where a reasoning connective starts ("wait", "so",
"therefore", "but", "however", ...), found in the decoded token strings by `connective_mask`.

`select_checkpoint` documents the selection rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from r1v.errors import ConfigError

#: default elements per chunk when reducing over the vocabulary on an accelerator (~64 MB of fp32 temporaries).
CHUNK_ELEMENTS = 1 << 24
#: the same on CPU: ~4 MB chunks stay in cache across the few passes over each chunk (several times faster).
CPU_CHUNK_ELEMENTS = 1 << 20
_FMIN = torch.finfo(torch.float32).min

DEFAULT_CONNECTIVES: tuple[str, ...] = (
    "wait", "so", "therefore", "thus", "hence", "but", "however", "because", "since", "alternatively",
    "hmm", "check", "verify", "actually", "maybe", "perhaps", "then", "first", "next", "finally",
)


def rows_per_chunk(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """How many `[V]` rows fit in one chunk of `chunk_elements` values."""
    return max(1, chunk_elements // max(1, vocab_size))


def chunk_rows(logits: torch.Tensor, chunk_elements: int | None = None) -> int:
    """Rows per chunk for `logits [..., V]`: `chunk_elements` values, by default `CPU_CHUNK_ELEMENTS` on
    CPU and `CHUNK_ELEMENTS` elsewhere."""
    if chunk_elements is None:
        chunk_elements = CPU_CHUNK_ELEMENTS if logits.device.type == "cpu" else CHUNK_ELEMENTS
    return rows_per_chunk(logits.shape[-1], chunk_elements)


def lse_and_entropy(logits: torch.Tensor, with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logsumexp and softmax entropy of rows `[n, V]` (any float dtype) -> fp32 `([n], [n] or None)`.

    One exp per element: with `m` the row max, `d = l - m`, `e = exp(d)`, `S = sum(e)`:
    `lse = m + log S` and `entropy = log S - sum(e * d) / S` (= `lse - sum(softmax * l)`). `-inf`
    logits (banned tokens) give `e = 0` and add nothing. Differentiable when `logits` requires grad.
    """
    grad = torch.is_grad_enabled() and logits.requires_grad
    m = logits.detach().amax(dim=-1, keepdim=True).float().clamp(min=_FMIN)  # [n, 1]; finite on all -inf rows
    d = logits - m  # [n, V] fp32 (type promotion)
    e = d.exp() if (grad or with_entropy) else d.exp_()  # [n, V]
    s = e.sum(dim=-1)  # [n]
    log_s = s.log()
    lse = m.squeeze(-1) + log_s
    if not with_entropy:
        return lse, None
    # -inf -> finite, so 0 * d = 0 (with grad: 0, so the banned tokens' gradient stays 0, not inf * 0)
    d = torch.where(torch.isfinite(d), d, 0.0) if grad else d.clamp_(min=_FMIN)
    return lse, log_s - torch.linalg.vecdot(e, d) / s


def token_entropy(logits: torch.Tensor, chunk_elements: int | None = None) -> torch.Tensor:
    """Entropy (nats) of the softmax over the last axis. logits `[..., V]` -> `[...]` (fp32).

    Computed in row chunks in fp32 (`lse_and_entropy`), so a bf16 `[B, T, V]` input never has a full
    fp32 copy alive. `-inf` logits (banned tokens) are handled. Differentiable; wrap it in
    `torch.no_grad()` when the value is only logged.
    """
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, vocab)  # [N, V]
    step = chunk_rows(logits, chunk_elements)
    parts = [lse_and_entropy(flat[s:s + step])[1] for s in range(0, flat.shape[0], step)]  # [n] each
    if not parts:
        return flat.new_zeros(shape, dtype=torch.float32)
    return torch.cat(parts).view(shape)  # type: ignore[arg-type]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true; NaN when the mask is empty. Any shapes that broadcast."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum() if m.sum() > 0 else values.new_tensor(float("nan"))


def span_before(ids: torch.Tensor, stop: int | Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Tokens strictly before the first occurrence of the marker `stop` in each row, within `mask`.

    `stop` is a token id or a marker's id sequence (e.g. `tokenizer.encode("</think>",
    add_special_tokens=False)`, several tokens where `</think>` is plain text, as the rollout engine's
    `close_ids`), matched only where `mask` is set; the marker's first token is the first one left out.
    ids `[B, T]`, mask `[B, T]` -> bool `[B, T]`. A row without the marker keeps its whole mask (its
    thinking was cut off by the budget).
    """
    marker = [int(stop)] if isinstance(stop, int) else [int(t) for t in stop]
    if not marker:
        raise ConfigError("span_before: the stop marker has no tokens")
    b, t = ids.shape
    k = len(marker)
    ids = ids.masked_fill(~mask.bool(), -1)  # a marker counts only inside the mask
    starts = torch.zeros((b, t), dtype=torch.bool, device=ids.device)  # [B, T]: a marker starts here
    if t >= k:
        hit = torch.ones((b, t - k + 1), dtype=torch.bool, device=ids.device)
        for j, tok in enumerate(marker):
            hit &= ids[:, j:t - k + 1 + j] == tok
        starts[:, :t - k + 1] = hit
    seen = starts.long().cumsum(dim=1) > 0  # [B, T]
    return mask.bool() & ~seen


def top_entropy_per_sequence(entropy: torch.Tensor, mask: torch.Tensor,
                             top_fraction: float = 0.2) -> torch.Tensor:
    """Mean entropy over each row's `ceil(top_fraction * n)` highest-entropy masked tokens.

    entropy `[B, T]`, mask `[B, T]` -> `[B]` (NaN for rows with no masked token).
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ConfigError(f"top_fraction must be in (0, 1], got {top_fraction}")
    mask = mask.bool()
    n = mask.sum(dim=1)  # [B]
    k = torch.ceil(n.float() * top_fraction).long().clamp(min=1)  # [B]
    ranked = torch.where(mask, entropy.float(), torch.full_like(entropy, -torch.inf, dtype=torch.float32))
    ranked = ranked.sort(dim=1, descending=True).values  # [B, T]
    take = torch.arange(entropy.shape[1], device=entropy.device).unsqueeze(0) < k.unsqueeze(1)  # [B, T]
    take = take & torch.isfinite(ranked)
    total = torch.where(take, ranked, torch.zeros_like(ranked)).sum(dim=1)  # [B]
    out = total / take.sum(dim=1).clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def entropy_sums(entropy: torch.Tensor, mask: torch.Tensor, span: torch.Tensor,
                 top_fraction: float = 0.2) -> dict[str, float]:
    """What two batch means are made of, as sums that add up over micro-batches and processes: the token
    entropy `[B, T]` over `mask` (`entropy:sum`, `entropy:n`) and each sequence's top-`top_fraction` entropy
    over its `span` (`entropy_critical:sum`, `entropy_critical:n`: sequences with a span). `sum_means` turns
    them into `entropy` and `entropy_critical`."""
    critical = top_entropy_per_sequence(entropy, span, top_fraction)  # [B], NaN without a span
    return {"entropy:sum": float((entropy * mask).sum()), "entropy:n": float(mask.sum()),
            "entropy_critical:sum": float(critical.nansum()), "entropy_critical:n": float((~critical.isnan()).sum())}


def sum_means(metrics: dict[str, float]) -> dict[str, float]:
    """Pop every `name:sum` / `name:n` pair out of `metrics`; returns `{name: sum / n}` (NaN for n = 0)."""
    names = [k[:-4] for k in list(metrics) if k.endswith(":sum")]
    out = {}
    for name in names:
        total, n = metrics.pop(f"{name}:sum"), metrics.pop(f"{name}:n")
        out[name] = total / n if n else math.nan
    return out


def critical_token_entropy(entropy: torch.Tensor, span_mask: torch.Tensor, top_fraction: float = 0.2,
                           critical_mask: torch.Tensor | None = None) -> float:
    """R1V3's indicator as defined in this module's docstring.

    entropy `[B, T]` (from `token_entropy`), span_mask `[B, T]` (the thinking span, see `span_before`).
    Default: mean over sequences of the mean entropy of each sequence's top `top_fraction` tokens.
    With `critical_mask` `[B, T]` (e.g. from `connective_mask`): mean entropy over span & critical tokens.
    Returns NaN when no token qualifies.
    """
    if critical_mask is not None:
        return masked_mean(entropy.float(), span_mask.bool() & critical_mask.bool()).item()
    per_seq = top_entropy_per_sequence(entropy, span_mask, top_fraction)  # [B]
    ok = ~torch.isnan(per_seq)
    return per_seq[ok].mean().item() if ok.any() else float("nan")


def connective_mask(tokens: Sequence[Sequence[str]], connectives: Sequence[str] = DEFAULT_CONNECTIVES,
                    length: int | None = None) -> torch.Tensor:
    """Mark the token where a reasoning connective word starts.

    tokens: decoded text of each token, per row (`tokenizer.convert_ids_to_tokens` pieces decoded, or
    `[tokenizer.decode([i]) for i in row]`). Words are matched case-insensitively on whole-word
    boundaries in the joined text, so a connective split over several tokens marks its first token.
    Returns bool `[B, length or longest row]`.
    """
    width = length if length is not None else max((len(r) for r in tokens), default=0)
    out = torch.zeros(len(tokens), width, dtype=torch.bool)
    if not connectives:
        return out
    pattern = re.compile(r"\b(" + "|".join(re.escape(c) for c in connectives) + r")\b", re.IGNORECASE)
    for b, row in enumerate(tokens):
        starts, text = [], []
        pos = 0
        for piece in row:
            starts.append(pos)
            text.append(piece)
            pos += len(piece)
        joined = "".join(text)
        for m in pattern.finditer(joined):
            # the token containing the match start: last token whose start <= m.start()
            lo, hi = 0, len(starts) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if starts[mid] <= m.start():
                    lo = mid
                else:
                    hi = mid - 1
            if lo < width:
                out[b, lo] = True
    return out


@dataclass(frozen=True)
class CheckpointChoice:
    """The chosen step, its indicator score, its accuracy (if given) and the rule applied."""

    step: int
    score: float
    accuracy: float | None
    rule: str


def select_checkpoint(scores_by_step: Mapping[int, float], accuracy_by_step: Mapping[int, float] | None = None,
                      accuracy_tolerance: float = 0.01, higher_is_better: bool = True) -> CheckpointChoice:
    """Choose an RL checkpoint by critical-token entropy (R1V3), optionally guarded by accuracy.

    Rule (ours; R1V3 does not publish one):
    - without `accuracy_by_step`: the step with the best score (highest critical-token entropy by
      default: the checkpoint that still explores at its decision points);
    - with it: keep the steps whose validation accuracy is within `accuracy_tolerance` (absolute) of
      the best accuracy, then take the best score among them. Entropy thus breaks near-ties in
      accuracy instead of overriding a clearly better checkpoint.
    Ties on score go to the later step. NaN scores are never chosen unless all are NaN.
    """
    if not scores_by_step:
        raise ConfigError("select_checkpoint needs at least one (step, score)")
    steps = sorted(scores_by_step)
    rule = "best score"
    if accuracy_by_step is not None:
        missing = [s for s in steps if s not in accuracy_by_step]
        if missing:
            raise ConfigError(f"accuracy_by_step lacks steps {missing}")
        best_acc = max(accuracy_by_step[s] for s in steps)
        steps = [s for s in steps if accuracy_by_step[s] >= best_acc - accuracy_tolerance]
        rule = f"best score among steps within {accuracy_tolerance} of best accuracy {best_acc:.4f}"
    sign = 1.0 if higher_is_better else -1.0

    def key(step: int) -> tuple[float, int]:
        s = scores_by_step[step]
        return (-math.inf if math.isnan(s) else sign * s, step)

    best = max(steps, key=key)
    acc = accuracy_by_step[best] if accuracy_by_step is not None else None
    return CheckpointChoice(step=best, score=float(scores_by_step[best]), accuracy=acc, rule=rule)
