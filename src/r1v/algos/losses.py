"""Policy-optimisation losses as pure tensor functions: GRPO (clipped surrogate + k3 KL), the MPO parts
(DPO sigmoid, BCO with a running-mean delta, length-normalised NLL) and Bradley-Terry for reward models.

Shapes: B sequences, T completion positions, V vocabulary, P preference pairs. Log-probs of the frozen
reference and of the old (rollout) policy, advantages and the BCO delta are detached inside every loss,
so gradients flow only through the current policy's terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from r1v.algos.entropy import chunk_rows, lse_and_entropy, masked_mean, token_entropy
from r1v.errors import ConfigError

LOSS_TYPES = ("token", "sequence", "dr_grpo")

#: MPO weights (DPO, BCO, NLL) of InternVL's MPO shell (sigmoid 0.8, bco_pair 0.2, rpo_alpha 1);
#: R1V2 does not report its own.
MPO_WEIGHTS = (0.8, 0.2, 1.0)


# ----------------------------------------------------------------------------------------- log-probs
class _GatherLogSoftmax(torch.autograd.Function):
    """`log_softmax(logits)[ids]` (and, without gradient, the softmax entropy) row chunk by row chunk,
    saving only logits, ids and logsumexp.

    Plain autograd would keep every fp32 chunk copy of bf16 logits alive until backward (a full fp32
    `[B, T, V]`); here backward recomputes softmax one chunk at a time. The entropy comes from the same
    exp as the logsumexp (`lse_and_entropy`), so logging it costs one extra dot product per row.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, ids: torch.Tensor, step: int,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        flat, idx = logits.reshape(-1, logits.shape[-1]), ids.reshape(-1, 1)  # [N, V], [N, 1]
        out = torch.empty(idx.shape[0], dtype=torch.float32, device=logits.device)  # [N]
        lse = torch.empty_like(out)  # [N]
        ent = torch.empty_like(out) if with_entropy else out.new_empty(0)  # [N] or [0]
        for s in range(0, flat.shape[0], step):
            lg = flat[s:s + step]  # [n, V]
            lse_c, ent_c = lse_and_entropy(lg, with_entropy)
            lse[s:s + step] = lse_c
            out[s:s + step] = lg.gather(-1, idx[s:s + step]).squeeze(-1).float() - lse_c
            if ent_c is not None:
                ent[s:s + step] = ent_c
        ctx.save_for_backward(logits, ids, lse)
        ctx.step = step
        ent = ent.view(ids.shape) if with_entropy else ent
        ctx.mark_non_differentiable(ent)
        return out.view(ids.shape), ent

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, _grad_ent: torch.Tensor | None
                 ) -> tuple[torch.Tensor, None, None, None]:
        logits, ids, lse = ctx.saved_tensors
        flat, idx = logits.reshape(-1, logits.shape[-1]), ids.reshape(-1, 1)
        g = grad_out.reshape(-1).float()  # [N]
        grad = torch.empty_like(flat)  # [N, V] in the logits' dtype
        fp32 = grad.dtype == torch.float32
        step = ctx.step
        for s in range(0, flat.shape[0], step):
            gs = g[s:s + step].unsqueeze(-1)  # [n, 1]
            # fp32 logits: write straight into the gradient; otherwise into an fp32 scratch chunk
            chunk = grad[s:s + step] if fp32 else torch.empty(gs.shape[0], flat.shape[1], device=flat.device)
            torch.sub(flat[s:s + step], lse[s:s + step].unsqueeze(-1), out=chunk)
            chunk.exp_().mul_(-gs)  # -softmax * g
            chunk.scatter_add_(-1, idx[s:s + step], gs)
            if not fp32:
                grad[s:s + step].copy_(chunk)
        return grad.view(logits.shape), None, None, None


def _fused(logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool,
           chunk_elements: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if ids.numel() == 0:
        zeros = logits.new_zeros(ids.shape, dtype=torch.float32)
        return zeros, (zeros.clone() if with_entropy else None)
    logp, ent = _GatherLogSoftmax.apply(logits, ids, chunk_rows(logits, chunk_elements), with_entropy)
    return logp, (ent if with_entropy else None)


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor,
                          chunk_elements: int | None = None) -> torch.Tensor:
    """`log softmax(logits)[ids]` without materialising the full `[B, T, V]` log-softmax.

    logits `[B, T, V]` (any float dtype), ids `[B, T]` -> fp32 `[B, T]`. Rows are processed in chunks
    in fp32 (`gather - logsumexp`), forward and backward, so peak extra memory is one fp32 chunk
    (plus the gradient of the logits themselves). `chunk_elements` defaults by device
    (`r1v.algos.entropy.chunk_rows`). Differentiable.
    """
    return _fused(logits, ids, False, chunk_elements)[0]


def logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
                         with_entropy: bool = True, entropy_grad: bool = False,
                         chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of `ids` and (optionally) token entropy.

    logits `[B, T, V]` already aligned with ids `[B, T]` (logits at position t predict ids[:, t]);
    mask `[B, T]` zeroes padded positions in both outputs. Entropy is computed without gradient, in
    the same pass as the log-probs, unless `entropy_grad` (for an entropy bonus: then a separate,
    differentiable `token_entropy`). Returns (logp `[B, T]`, entropy `[B, T]` or None).
    """
    if logits.shape[:-1] != ids.shape:
        raise ConfigError(f"logits {tuple(logits.shape)} and ids {tuple(ids.shape)} are not aligned")
    grad_ent = with_entropy and entropy_grad and torch.is_grad_enabled()
    logp, ent = _fused(logits, ids, with_entropy and not grad_ent, chunk_elements)  # [B, T] x2
    if grad_ent:
        ent = token_entropy(logits, chunk_elements)  # [B, T]
    if mask is not None:
        m = mask.to(logp.dtype)
        logp = logp * m
        ent = ent * m if ent is not None else None
    return logp, ent


def head_logprobs_and_entropy(hidden: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                              with_entropy: bool = True, entropy_grad: bool = False,
                              chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`logprobs_and_entropy(head(hidden), ids, mask)` with the LM head run on masked-in positions only.

    hidden `[B, T, H]` final hidden states aligned with ids `[B, T]` (hidden at t predicts ids[:, t]),
    head the LM head (`[H] -> [V]`), mask `[B, T]`. Padding never gets `[V]` logits; its outputs are 0.
    Values and gradients equal the full path's. Returns (logp `[B, T]`, entropy `[B, T]` or None).
    """
    if hidden.shape[:-1] != ids.shape or mask.shape != ids.shape:
        raise ConfigError(f"hidden {tuple(hidden.shape)}, ids {tuple(ids.shape)} and mask {tuple(mask.shape)} "
                          "are not aligned")
    sel = mask.bool()  # [B, T]
    logits = head(hidden[sel])  # [M, V]
    logp_m, ent_m = logprobs_and_entropy(logits, ids[sel], None, with_entropy, entropy_grad, chunk_elements)
    zeros = torch.zeros(ids.shape, dtype=torch.float32, device=hidden.device)  # [B, T]
    logp = zeros.masked_scatter(sel, logp_m)
    return logp, (zeros.masked_scatter(sel, ent_m) if ent_m is not None else None)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs per sequence: `log pi(y|x)`. `[B, T]`, mask `[B, T]` -> `[B]`."""
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=1)


# ------------------------------------------------------------------------------------------- GRPO
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: `exp(ref - logp) - (ref - logp) - 1` (>= 0). `[B, T]`."""
    d = ref_logp.detach() - logp
    return torch.exp(d) - d - 1.0


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
              max_completion_length: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss `[B, T]` over mask `[B, T]` to a scalar.

    - "token":    sum over all masked tokens / number of masked tokens (token-mean over the batch;
                  DAPO / TRL's default; long sequences weigh more).
    - "sequence": mean over tokens within each sequence, then mean over sequences that have tokens
                  (R1V2 eq. 8, original GRPO).
    - "dr_grpo":  sum over masked tokens / (B * max_completion_length): a constant denominator, so no
                  length bias (Dr.GRPO). `max_completion_length` defaults to T.
    """
    m = mask.to(per_token.dtype)
    if loss_type == "token":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if loss_type == "sequence":
        lengths = m.sum(dim=1)  # [B]
        per_seq = (per_token * m).sum(dim=1) / lengths.clamp(min=1.0)  # [B]
        has = (lengths > 0).to(per_token.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        length = max_completion_length if max_completion_length is not None else per_token.shape[1]
        return (per_token * m).sum() / (per_token.shape[0] * length)
    raise ConfigError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")


def loss_units(batch: dict, loss_type: str) -> int:
    """What `grpo_loss` of `loss_type` is a mean over, counted in a batch (`completion_mask` `[B, T]`,
    `sequence_mask` `[B]`): masked tokens (token), sequences with tokens (sequence), rows (dr_grpo)."""
    mask = batch["completion_mask"].bool() & batch["sequence_mask"].unsqueeze(1)  # [B, T]
    if loss_type == "token":
        return int(mask.sum())
    if loss_type == "sequence":
        return int((mask.sum(1) > 0).sum())
    return int(mask.shape[0])


def grpo_loss(logp: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
              beta: float = 0.0, epsilon: float = 0.2, epsilon_high: float | None = None,
              loss_type: str = "token", max_completion_length: int | None = None,
              sequence_mask: torch.Tensor | None = None,
              entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO clipped surrogate with optional k3 KL to a frozen reference.

    logp `[B, T]` current policy (carries grad); advantages `[B]`; completion_mask `[B, T]`;
    old_logp `[B, T]` rollout policy (None: on-policy, ratio 1 with the policy gradient intact);
    ref_logp `[B, T]` frozen reference (needed when beta > 0); sequence_mask `[B]` False for
    completions to leave out (e.g. truncated ones: TRL's `mask_truncated_completions`);
    entropy `[B, T]` only for the metrics.

    per token: `-min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) + beta * k3`,
    rho = exp(logp - old_logp); epsilon_high defaults to epsilon (DAPO's clip-higher uses e.g. 0.28).
    Returns (loss, metrics) with metrics: clip fractions (low / high / total, counted where the
    clipped branch is active), kl_mean, ratio_mean/min/max, entropy_mean, tokens.
    """
    if logp.dim() != 2 or logp.shape != completion_mask.shape:
        raise ConfigError(f"logp {tuple(logp.shape)} and completion_mask {tuple(completion_mask.shape)} "
                          "must both be [B, T]")
    if advantages.shape != logp.shape[:1]:
        raise ConfigError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logp is None:
        raise ConfigError("beta > 0 needs ref_logp (log-probs of the frozen reference)")
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high

    mask = completion_mask.bool()
    if sequence_mask is not None:
        mask = mask & sequence_mask.bool().unsqueeze(1)  # [B, T]
    old = logp.detach() if old_logp is None else old_logp.detach()
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)  # [B, 1]

    ratio = torch.exp(logp - old)  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp)  # [B, T]
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, loss_type, max_completion_length)

    with torch.no_grad():
        r = ratio.detach()
        low = (r < 1.0 - eps_low) & (adv < 0) & mask
        high = (r > 1.0 + eps_high) & (adv > 0) & mask
        n = mask.sum().clamp(min=1).float()
        rm = r[mask]
        metrics = {
            "clip_frac_low": (low.sum() / n).item(),
            "clip_frac_high": (high.sum() / n).item(),
            "clip_frac": ((low | high).sum() / n).item(),
            "ratio_mean": rm.mean().item() if rm.numel() else float("nan"),
            "ratio_min": rm.min().item() if rm.numel() else float("nan"),
            "ratio_max": rm.max().item() if rm.numel() else float("nan"),
            "kl_mean": masked_mean(kl.detach(), mask).item() if kl is not None else float("nan"),
            "entropy_mean": masked_mean(entropy.detach().float(), mask).item() if entropy is not None
            else float("nan"),
            "tokens": float(mask.sum().item()),
        }
    return loss, metrics


# -------------------------------------------------------------------------------------------- MPO
class RunningMean:
    """BCO's delta: a running mean of implicit rewards, kept in the training state.

    Update rule (as InternVL's / TRL's older `RunningMoments` for `bco_pair`): each `update` takes the
    batch's chosen and rejected implicit rewards `beta * log(pi/ref)`, reduces them to one batch mean
    (over chosen and rejected together) and folds that into the running mean with weight 1, so
    `mean = average of all past batch means` (current batch included: update before use). Before any
    update the mean is 0. `state_dict` / `load_state_dict` make it survive resume. For multi-process
    training, all-reduce the batch mean before calling `update_mean` so every rank keeps the same delta.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0

    def update_mean(self, batch_mean: float) -> float:
        self.count += 1
        self.mean += (float(batch_mean) - self.mean) / self.count
        return self.mean

    def update(self, *rewards: torch.Tensor) -> float:
        """Fold the mean of the given reward tensors (concatenated) in; returns the new mean."""
        flat = torch.cat([r.detach().float().reshape(-1) for r in rewards])
        if flat.numel() == 0:
            return self.mean
        return self.update_mean(flat.mean().item())

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])


def _logratios(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()  # [P], [P]


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO sigmoid loss per pair: `-log sigmoid(beta*(lr_c - lr_r))` (conservative DPO when
    label_smoothing > 0). Inputs are sequence log-probs `[P]`; returns `[P]`."""
    lc, lr = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (lc - lr)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def bco_pair_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                  ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
                  delta: float | torch.Tensor) -> torch.Tensor:
    """BCO per pair: `-log sig(beta*lr_c - delta) - log sig(-(beta*lr_r - delta))`. `[P]` -> `[P]`."""
    lc, lr = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    d = delta.detach() if isinstance(delta, torch.Tensor) else delta
    return -F.logsigmoid(beta * lc - d) - F.logsigmoid(-(beta * lr - d))


def nll_loss(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalised NLL of the chosen answer: `-log pi(y_c|x) / |y_c|`. `[P]` -> `[P]`."""
    return -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1.0)


def mpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, chosen_lengths: torch.Tensor,
             beta: float = 0.1, weights: Sequence[float] = MPO_WEIGHTS,
             delta_state: RunningMean | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """MPO (R1V2 section 6.2): `w1*DPO + w2*BCO + w3*NLL`, each the mean over pairs.

    Sequence log-probs `[P]` (sum over answer tokens), chosen_lengths `[P]` (answer tokens). Defaults
    `weights=(0.8, 0.2, 1.0)` are InternVL's MPO shell (R1V2 gives none). `delta_state` (a
    `RunningMean`, saved with the training state) is updated with this batch's implicit rewards and its
    mean is BCO's delta; it is required whenever the BCO weight is non-zero.
    Returns (total, parts) with parts: dpo, bco, nll (tensors), delta, reward_margin, reward_accuracy,
    chosen_reward, rejected_reward (floats).
    """
    w_dpo, w_bco, w_nll = (float(w) for w in weights)
    lc, lr = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_rewards, rejected_rewards = (beta * lc).detach(), (beta * lr).detach()  # [P], [P]
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta).mean()
    if w_bco != 0.0:
        if delta_state is None:
            raise ConfigError("mpo_loss with a BCO weight needs delta_state=RunningMean() kept in the "
                              "training state (BCO's delta)")
        delta = delta_state.update(chosen_rewards, rejected_rewards)
    else:
        delta = delta_state.mean if delta_state is not None else 0.0
    bco = bco_pair_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta, delta).mean()
    nll = nll_loss(policy_chosen_logps, chosen_lengths).mean()
    total = w_dpo * dpo + w_bco * bco + w_nll * nll
    parts: dict[str, torch.Tensor | float] = {
        "dpo": dpo.detach(), "bco": bco.detach(), "nll": nll.detach(), "delta": float(delta),
        "reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "chosen_reward": chosen_rewards.mean().item(), "rejected_reward": rejected_rewards.mean().item(),
    }
    return total, parts


# -------------------------------------------------------------------------------- reward modelling
def bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry pairwise loss `mean(-log sigmoid(r_c - r_r - margin))` (Skywork-VL Reward).

    rewards `[P]` scalar-head outputs; margin `[P]` or a float (optional, as Llama-2's RM). Ties are
    expected to be removed upstream. Returns (loss, {accuracy, margin_mean}).
    """
    diff = rewards_chosen - rewards_rejected  # [P]
    z = diff - margin if margin is not None else diff
    loss = -F.logsigmoid(z).mean()
    return loss, {"accuracy": (diff > 0).float().mean().item(), "margin_mean": diff.mean().item()}
