"""Training samples, packed into micro-batches by a token budget, and their per-token loss inputs.

A :class:`Sample` is a prompt and a response. Packed, sample i occupies ``len(prompt) +
len(response)`` consecutive tokens of a micro-batch row; the positions that *predict* response
tokens are ``start + len(prompt) - 1 .. start + len(prompt) + len(response) - 2``. Every per-token
array below is indexed by those prediction positions and is 0 elsewhere (prompt tokens are never
trained on).

Normalisation: the token-level loss of an optimizer step is a sum over response tokens divided by
the number of such tokens in the whole step, across micro-batches and data-parallel ranks
(``num_tokens_global``); the weights carry that divisor, so the loss head only sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from megatron_spark.errors import UserError
from megatron_spark.model.forward import PackedBatch, pack
from megatron_spark.train.kernels.fused_head import TokenInputs


@dataclass
class Sample:
    """One sequence to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] = field(default_factory=list)
    """Per response token, from the rollout engine (empty for teacher-forced samples)."""
    advantage: float = 0.0
    """Advantage of every response token (policy-gradient samples)."""
    reward: float = 0.0
    """Verifier reward of the response."""
    objective: str = "rl"
    """``rl``: clipped surrogate with the advantage; ``ce``: teacher-forced cross-entropy."""
    weight: float = 1.0
    """Loss weight of the sample's RL tokens (SPARK weighs policy, judge and reflection samples)."""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class LossCoefficients:
    """Per-objective coefficients of the token-level loss."""

    kl: float = 0.0
    """Coefficient of the KL penalty to the reference (RL tokens)."""
    entropy: float = 0.0
    """Coefficient of the entropy bonus (RL tokens)."""
    ce: float = 1.0
    """Coefficient of cross-entropy on ``ce`` samples' response tokens."""


@dataclass(eq=False)
class MicroBatch:
    """A packed row of samples and the per-token arrays of its prediction positions (``[T]``)."""

    batch: PackedBatch
    sample_ids: list[int]
    """Indices of the packed samples in the step's sample list, in row order."""
    response_mask: torch.Tensor
    """True where the position predicts a response token."""
    rl_mask: torch.Tensor
    """True where that response belongs to an ``rl`` sample."""
    advantages: torch.Tensor
    rollout_logprobs: torch.Tensor
    rl_scale: torch.Tensor
    """Per-token loss weight of RL tokens (the sample's ``weight``)."""
    old_logprobs: torch.Tensor | None = None
    """log p under the policy before this step's updates (filled by the trainer)."""
    ref_logprobs: torch.Tensor | None = None
    """log p under the frozen reference (filled by the trainer when KL is on)."""


def plan_micro_batches(lengths: Sequence[int], micro_batch_tokens: int) -> list[list[int]]:
    """Bins of sample indices, each summing to at most ``micro_batch_tokens``.

    First-fit decreasing (ties by index): deterministic, and few, well-filled bins. Bins come back
    in order of their first (longest) member; members inside a bin keep ascending index order.
    """
    too_long = [i for i, n in enumerate(lengths) if n > micro_batch_tokens]
    if too_long:
        i = too_long[0]
        raise UserError(
            f"a sample of {lengths[i]} tokens exceeds train.micro_batch_tokens={micro_batch_tokens}; "
            f"raise micro_batch_tokens or lower the prompt length / rollout.max_new_tokens"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(micro_batch_tokens - lengths[i])
    return [sorted(b) for b in bins]


def build_micro_batches(samples: Sequence[Sample], micro_batch_tokens: int) -> list[MicroBatch]:
    """Pack ``samples`` into micro-batches of at most ``micro_batch_tokens`` tokens."""
    out = []
    for ids in plan_micro_batches([s.num_tokens for s in samples], micro_batch_tokens):
        batch = pack([samples[i].prompt_ids + samples[i].response_ids for i in ids])
        t = batch.num_tokens
        resp = torch.zeros(t, dtype=torch.bool)
        rl = torch.zeros(t, dtype=torch.bool)
        adv = torch.zeros(t)
        rollout = torch.zeros(t)
        scale = torch.zeros(t)
        start = 0
        for i in ids:
            s = samples[i]
            lo = start + len(s.prompt_ids) - 1
            hi = lo + len(s.response_ids)
            resp[lo:hi] = True
            if s.objective == "rl":
                rl[lo:hi] = True
                adv[lo:hi] = s.advantage
                scale[lo:hi] = s.weight
                if s.rollout_logprobs:
                    rollout[lo:hi] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
            start += s.num_tokens
        out.append(MicroBatch(batch, ids, resp, rl, adv, rollout, scale))
    return out


def token_counts(micro_batches: Sequence[MicroBatch]) -> torch.Tensor:
    """``[2]`` float64: (RL response tokens, CE response tokens) of these micro-batches."""
    rl = sum(int(mb.rl_mask.sum()) for mb in micro_batches)
    ce = sum(int((mb.response_mask & ~mb.rl_mask).sum()) for mb in micro_batches)
    return torch.tensor([rl, ce], dtype=torch.float64)


def token_inputs(mb: MicroBatch, coef: LossCoefficients, counts: torch.Tensor) -> TokenInputs:
    """Loss-head inputs of one micro-batch; ``counts`` are the step's global token counts
    (:func:`token_counts` summed over micro-batches and data-parallel ranks)."""
    t = mb.batch.num_tokens
    inv_rl = 1.0 / max(1.0, float(counts[0]))
    inv_ce = 1.0 / max(1.0, float(counts[1]))
    rl = mb.rl_mask.float() * mb.rl_scale * inv_rl
    ce_mask = (mb.response_mask & ~mb.rl_mask).float()
    old = mb.old_logprobs if mb.old_logprobs is not None else mb.rollout_logprobs
    ref = mb.ref_logprobs if mb.ref_logprobs is not None else torch.zeros(t)
    return TokenInputs(
        targets=torch.zeros(t, dtype=torch.long),  # run_packed fills in the next tokens
        old_logprobs=old.float(),
        ref_logprobs=ref.float(),
        advantages=mb.advantages.float(),
        rl_weight=rl,
        kl_weight=rl * coef.kl if mb.ref_logprobs is not None else torch.zeros(t),
        entropy_weight=rl * coef.entropy,
        ce_weight=ce_mask * (coef.ce * inv_ce),
    )


def split_by_sample(values: torch.Tensor, mb: MicroBatch, samples: Sequence[Sample]) -> list[list[float]]:
    """Per packed sample, the ``[T]`` array's entries at its response's prediction positions."""
    out, start = [], 0
    for i in mb.sample_ids:
        s = samples[i]
        lo = start + len(s.prompt_ids) - 1
        out.append(values[lo : lo + len(s.response_ids)].tolist())
        start += s.num_tokens
    return out
