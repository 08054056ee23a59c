r"""The training objective, in one place: its typed config, the per-token inputs and normalisers of
packed micro-batches, every term and its gradient with respect to the log-probs, and the
statistics the update reports. The fused head (:mod:`megatron_spark.kernels.fused_head`) only
computes log-probs, entropies and the gradient through the output layer; everything it optimises
is defined here.

For response token t with log-prob :math:`\log p_t` and entropy :math:`H_t`:

* loss :math:`L = \sum_t w^{rl}_t\,\mathrm{pg}_t + w^{kl}_t\,\mathrm{kl}_t - w^{ent}_t H_t - w^{ce}_t \log p_t`
  - :math:`\mathrm{pg}_t = \max(-r_t A_t, -\mathrm{clip}(r_t, 1-\epsilon_l, 1+\epsilon_h) A_t)`,
    :math:`r_t = \exp(\log p_t - \log p^{old}_t)`; with dual clip c > 1 and :math:`A_t < 0` it is
    further capped at :math:`-c A_t`
  - :math:`\mathrm{kl}_t`: k1 = :math:`\log p_t - \log p^{ref}_t`, or
    k3 = :math:`e^{d} - d - 1` with :math:`d = \log p^{ref}_t - \log p_t`
* weights carry the normalisers: :math:`w^{rl}_t` = the sample's weight over the step's RL response
  tokens (every micro-batch and data-parallel rank), :math:`w^{kl}, w^{ent}` that times their
  coefficient, :math:`w^{ce}_t` = the CE coefficient over the step's CE response tokens.

Finite for finite logits: a term is evaluated only where its weight is nonzero (its arguments
elsewhere are replaced by 0 before any exponential, so a placeholder such as a zero reference
log-prob never meets a log-prob of -95 in :math:`e^{d}`), and the two exponentials (the ratio
:math:`r_t` and :math:`e^{d}` of k3) follow :math:`e^x` exactly up to :math:`x = 64` and its
tangent line beyond (:func:`_exp_linear`), finite for log-prob gaps up to ~5e10 nats. Non-finite
inputs and terms are counted per name in :attr:`HeadOutput.nonfinite`; the caller decides what a
non-finite loss means for its step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from megatron_spark.kernels.fused_head import HeadTerms, Objective, TileConfig, fused_head
from megatron_spark.model.forward import FusedHead, PackedBatch
from megatron_spark.train.batch import MicroBatch, Sample


@dataclass(frozen=True)
class LossConfig:
    """The objective's constants: the ``grpo`` section's clip, KL and entropy keys
    (:class:`~megatron_spark.train.config.GRPOConfig` extends it)."""

    clip_low: float = 0.2
    """PPO ratio clip below 1 (epsilon_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (epsilon_high; larger than clip_low: "clip-higher")."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens; null disables."""
    kl_coef: float = 0.0
    """Coefficient of the KL penalty to the initial weights (0: no reference model is kept)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """Per-token estimator of KL(policy || reference)."""
    entropy_coef: float = 0.0
    """Coefficient of the entropy bonus."""

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"clip_low={self.clip_low} is invalid; expected in [0, 1)")
        if self.clip_high < 0:
            raise ValueError(f"clip_high={self.clip_high} is invalid; expected >= 0")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip={self.dual_clip} is invalid; expected > 1 or null")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r} is invalid; expected k1 or k3")
        for name in ("kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; expected >= 0")

    def coefficients(self, ce: float) -> LossCoefficients:
        """The RL phase's coefficients, with cross-entropy weighed by ``ce``."""
        return LossCoefficients(kl=self.kl_coef, entropy=self.entropy_coef, ce=ce)


@dataclass(frozen=True)
class LossCoefficients:
    """Per-objective coefficients of the token-level loss."""

    kl: float = 0.0
    """Coefficient of the KL penalty to the reference (RL tokens)."""
    entropy: float = 0.0
    """Coefficient of the entropy bonus (RL tokens)."""
    ce: float = 1.0
    """Coefficient of cross-entropy on ``ce`` samples' response tokens."""


@dataclass
class TokenInputs:
    """Per-token inputs, each ``[T]`` (float32 except ``targets``)."""

    targets: torch.Tensor
    """Global token id predicted at each position."""
    old_logprobs: torch.Tensor
    """log p under the policy that sampled (for the PPO ratio)."""
    ref_logprobs: torch.Tensor
    """log p under the frozen reference (for KL)."""
    advantages: torch.Tensor
    """Advantage A_t."""
    rl_weight: torch.Tensor
    """Weight of the clipped surrogate (0 for tokens that are not RL-trained)."""
    kl_weight: torch.Tensor
    """Weight of the KL term."""
    entropy_weight: torch.Tensor
    """Weight of the entropy bonus (positive rewards entropy)."""
    ce_weight: torch.Tensor
    """Weight of teacher-forced cross-entropy (judge verdict tokens)."""


WEIGHT_FIELDS = ("rl_weight", "kl_weight", "entropy_weight", "ce_weight")
"""The per-token weights of :class:`TokenInputs` (zero where an objective does not apply)."""

TERMS = ("surrogate", "kl", "entropy", "cross_entropy")
"""The loss terms, in the order of :data:`NONFINITE_NAMES`."""

NONFINITE_INPUTS = ("logits", "old_logprobs", "advantages", "ref_logprobs", *WEIGHT_FIELDS)
"""Inputs the head checks: ``logits`` (the hidden states times the output weight) gave a
non-finite log-prob or entropy, or a :class:`TokenInputs` field is non-finite where it is read."""

NONFINITE_NAMES = (*NONFINITE_INPUTS, *TERMS)
"""Entries of :attr:`HeadOutput.nonfinite`."""

EXP_MAX = 64.0
"""Exponent up to which the ratio and k3 use the exact e^x; beyond it their tangent line
(e^64 ~ 6e27 leaves float32 room for the tangent out to exponents ~5e10 and for the weighted sums
and backward GEMMs the value feeds)."""


@dataclass
class HeadOutput:
    """What :func:`fused_loss` gives back."""

    loss: torch.Tensor
    """Scalar loss (differentiable w.r.t. hidden states and weight)."""
    logprobs: torch.Tensor
    """``[T]`` log p of the targets (no grad)."""
    entropy: torch.Tensor
    """``[T]`` entropy of the full next-token distribution (no grad)."""
    clip_fraction: torch.Tensor
    """Share of RL tokens (rl_weight != 0) whose gradient the clip removed."""
    nonfinite: torch.Tensor
    """``[len(NONFINITE_NAMES)]`` int64: tokens where each input or term was non-finite (inputs
    counted where a term with nonzero weight reads them; logits and weights at every token, since
    a non-finite logit reaches the weight gradient through every row). All zero for finite inputs
    and logits. Left on the device: read it when the loss is not finite
    (:func:`describe_nonfinite`)."""


def describe_nonfinite(counts) -> str:
    """``counts`` (:attr:`HeadOutput.nonfinite`) as one phrase, e.g. ``"inputs advantages (3
    tokens); terms surrogate (3 tokens)"``; empty when every count is 0."""
    counts = [int(c) for c in counts]
    named = dict(zip(NONFINITE_NAMES, counts, strict=True))
    parts = []
    for kind, names in (("inputs", NONFINITE_INPUTS), ("terms", TERMS)):
        bad = [f"{n} ({named[n]} token{'s' if named[n] != 1 else ''})" for n in names if named[n]]
        if bad:
            parts.append(f"{kind} {', '.join(bad)}")
    return "; ".join(parts)


def _exp_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), f'(x))``: e^x up to :data:`EXP_MAX`, its tangent line beyond: the value grows
    linearly past e^64 instead of overflowing at x = 88.7, and the gradient stays e^64 with the
    true gradient's sign (a clamp would zero it)."""
    xc = x.clamp(max=EXP_MAX)
    e = torch.exp(xc)
    return e * (1.0 + (x - xc)), e


def _k3(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k3, dk3/dd)``, k3 = e^d - d - 1 as ``expm1(d) - d`` (``e^d - 1`` loses the digits of
    small d to the rounding of e^d near 1), along its tangent line beyond :data:`EXP_MAX` like
    :func:`_exp_linear`."""
    dc = d.clamp(max=EXP_MAX)
    em1 = torch.expm1(dc)
    return em1 - dc + (d - dc) * em1, em1


class TokenObjective(NamedTuple):
    loss: torch.Tensor
    """``[T]`` per-token loss except the entropy term."""
    g: torch.Tensor
    """``[T]`` its derivative dL/dlogp."""
    clipped: torch.Tensor
    """``[T]`` bool: the clip removed the surrogate's gradient."""
    terms: dict[str, torch.Tensor]
    """``surrogate``, ``kl``, ``cross_entropy``: each weighted ``[T]`` term, 0 where its weight is 0."""


def _where(on: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` where ``on``, exactly 0 elsewhere (whatever ``x`` holds there)."""
    return torch.where(on, x, torch.zeros_like(x))


def token_objective(logp, inp: TokenInputs, cfg: LossConfig) -> TokenObjective:
    """Per-token loss except the entropy term, its derivative g = dL/dlogp, the clipped mask and
    each weighted term.

    A term is evaluated only where its weight is nonzero: its arguments are zeroed elsewhere
    before any exponential and its value masked, so placeholders (a zero reference log-prob on a
    cross-entropy token) never produce ``0 * inf``, in the value or in autograd's backward.
    Plain differentiable torch ops: the unfused path back-propagates ``loss`` through autograd,
    the fused head uses the analytic ``g``; tests compare the two.
    """
    on_rl, on_kl, on_ce = inp.rl_weight != 0, inp.kl_weight != 0, inp.ce_weight != 0
    adv = _where(on_rl, inp.advantages)
    ratio, d_ratio = _exp_linear(_where(on_rl, logp - inp.old_logprobs))
    clipped_ratio = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg1, pg2 = -ratio * adv, -clipped_ratio * adv
    pg = torch.maximum(pg1, pg2)
    d_pg = _where(pg1 >= pg2, -d_ratio * adv)
    clipped = pg2 > pg1
    if cfg.dual_clip is not None:
        cap = -cfg.dual_clip * adv
        dual = (adv < 0) & (pg > cap)
        pg = torch.where(dual, cap, pg)
        d_pg = _where(~dual, d_pg)
        clipped = clipped | dual
    d = _where(on_kl, inp.ref_logprobs - logp)
    if cfg.kl_estimator == "k1":
        kl, d_kl = -d, torch.ones_like(d)
    else:
        kl, dk3 = _k3(d)
        d_kl = -dk3  # dd/dlogp = -1
    terms = {
        "surrogate": _where(on_rl, inp.rl_weight * pg),
        "kl": _where(on_kl, inp.kl_weight * kl),
        "cross_entropy": _where(on_ce, -inp.ce_weight * logp),
    }
    g = (
        _where(on_rl, inp.rl_weight * d_pg)
        + _where(on_kl, inp.kl_weight * d_kl)
        - _where(on_ce, inp.ce_weight)
    )
    return TokenObjective(sum(terms.values()), g, clipped, terms)


def _nonfinite_counts(inp: TokenInputs, logp, entropy, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[len(NONFINITE_NAMES)]`` int64 token counts (see :attr:`HeadOutput.nonfinite`)."""
    on = {k: getattr(inp, k) != 0 for k in WEIGHT_FIELDS}

    def bad(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        return ~torch.isfinite(x) if where is None else ~torch.isfinite(x) & where

    flags = [
        bad(logp) | bad(entropy),
        bad(inp.old_logprobs, on["rl_weight"]),
        bad(inp.advantages, on["rl_weight"]),
        bad(inp.ref_logprobs, on["kl_weight"]),
        *(bad(getattr(inp, k)) for k in WEIGHT_FIELDS),
        bad(terms["surrogate"]),
        bad(terms["kl"]),
        bad(terms["entropy"]),
        bad(terms["cross_entropy"]),
    ]
    return torch.stack([f.sum() for f in flags])


def head_objective(inputs: TokenInputs, cfg: LossConfig) -> Objective:
    """The fused head's objective for per-token ``inputs``: the loss, its gradients with respect
    to log-probs and entropies, and as extras ``clip_fraction`` and ``nonfinite``
    (:class:`HeadOutput`)."""
    # Objective math in float32 whatever dtype the per-token inputs came in.
    inputs = TokenInputs(**{k: v if k == "targets" else v.float() for k, v in vars(inputs).items()})

    def objective(logp: torch.Tensor, entropy: torch.Tensor) -> HeadTerms:
        obj = token_objective(logp, inputs, cfg)
        on_ent = inputs.entropy_weight != 0
        terms = {**obj.terms, "entropy": _where(on_ent, -inputs.entropy_weight * entropy)}
        loss = (obj.loss + terms["entropy"]).sum()
        rl_tokens = inputs.rl_weight != 0
        clip_fraction = (obj.clipped & rl_tokens).sum() / rl_tokens.sum().clamp(min=1)
        extras = {
            "clip_fraction": clip_fraction,
            "nonfinite": _nonfinite_counts(inputs, logp, entropy, terms),
        }
        return HeadTerms(loss, obj.g, _where(on_ent, -inputs.entropy_weight), extras)

    return objective


def fused_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    inputs: TokenInputs,
    cfg: LossConfig = LossConfig(),
    tiles: TileConfig = TileConfig(),
    vocab_start: int = 0,
    tp_group=None,
    sum_dx: bool = True,
) -> HeadOutput:
    """The loss of one packed micro-batch through the fused head (arguments as
    :func:`~megatron_spark.kernels.fused_head.fused_head`; targets from ``inputs``)."""
    out = fused_head(
        hidden, weight, inputs.targets, head_objective(inputs, cfg), tiles, vocab_start, tp_group, sum_dx
    )
    return HeadOutput(out.loss, out.logprobs, out.entropy, **out.extras)


def packed_head(
    inputs: Callable[[PackedBatch], TokenInputs], cfg: LossConfig, tiles: TileConfig
) -> FusedHead:
    """The fused head of :func:`~megatron_spark.model.forward.run_packed` for per-micro-batch
    ``inputs`` (their ``targets`` are unused: run_packed gives the batch's own)."""

    def objective(batch: PackedBatch, keep: torch.Tensor) -> Objective:
        given = inputs(batch)
        fields = {f.name: getattr(given, f.name).to(keep.device) for f in dataclasses.fields(given)}
        # A sequence's last token has no target: no objective may touch it.
        fields.update({k: fields[k] * keep for k in WEIGHT_FIELDS})
        return head_objective(TokenInputs(**fields), cfg)

    return FusedHead(tiles, objective)


def sample_token_counts(samples: Sequence[Sample]) -> torch.Tensor:
    """``[2]`` float64: (RL response tokens, CE response tokens) of ``samples``; equal to
    :func:`token_counts` of their micro-batches."""
    rl = sum(len(s.response_ids) for s in samples if s.objective == "rl")
    ce = sum(len(s.response_ids) for s in samples if s.objective != "rl")
    return torch.tensor([rl, ce], dtype=torch.float64)


def adds_nothing(sample: Sample, coef: LossCoefficients) -> bool:
    """Whether ``sample``'s tokens add exactly 0 to the loss and to every gradient: an RL sample
    with advantage 0 (the clipped surrogate is then 0 whatever the ratio) and neither a KL nor an
    entropy term. Its tokens still count in the loss normaliser; responses never attend to each
    other, so leaving it out of the pack changes no other sample's activations."""
    return sample.objective == "rl" and sample.advantage == 0.0 and coef.kl == 0.0 and coef.entropy == 0.0


def token_counts(micro_batches: Sequence[MicroBatch]) -> torch.Tensor:
    """``[2]`` float64: (RL response tokens, CE response tokens) of these micro-batches."""
    rl = sum(int(mb.rl_mask.sum()) for mb in micro_batches)
    ce = sum(int((~mb.rl_mask).sum()) for mb in micro_batches)
    return torch.tensor([rl, ce], dtype=torch.float64)


def token_inputs(mb: MicroBatch, coef: LossCoefficients, counts: torch.Tensor) -> TokenInputs:
    """Loss-head inputs of one micro-batch; ``counts`` are the step's global token counts
    (:func:`token_counts` summed over micro-batches and data-parallel ranks)."""
    t = mb.batch.num_head_rows
    inv_rl = 1.0 / max(1.0, float(counts[0]))
    inv_ce = 1.0 / max(1.0, float(counts[1]))
    rl = mb.rl_mask.float() * mb.rl_scale * inv_rl
    ce_mask = (~mb.rl_mask).float()
    old = mb.old_logprobs if mb.old_logprobs is not None else mb.rollout_logprobs
    ref = mb.ref_logprobs if mb.ref_logprobs is not None else torch.zeros(t)
    return TokenInputs(
        targets=torch.zeros(t, dtype=torch.long),  # run_packed gives the batch's next tokens
        old_logprobs=old.float(),
        ref_logprobs=ref.float(),
        advantages=mb.advantages.float(),
        rl_weight=rl,
        kl_weight=rl * coef.kl if mb.ref_logprobs is not None else torch.zeros(t),
        entropy_weight=rl * coef.entropy,
        ce_weight=ce_mask * (coef.ce * inv_ce),
    )


def kl_estimate(ref_logprobs: torch.Tensor, logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Summed KL(policy || reference) estimate over these tokens (the ``train/kl_ref`` metric),
    by the objective's estimator."""
    d = ref_logprobs - logprobs
    return (d.exp() - d - 1).sum() if estimator == "k3" else (-d).sum()


def head_sums(mb: MicroBatch, out: dict[str, torch.Tensor], cfg: LossConfig) -> dict[str, float]:
    """One micro-batch's contribution to the update's statistics
    (:class:`~megatron_spark.train.stats.UpdateStats` fields) from ``run_packed``'s output."""
    rl = mb.rl_mask
    n_rl = float(rl.sum())
    lp = out["logprobs"].cpu()
    kl = 0.0
    if mb.ref_logprobs is not None:
        kl = float(kl_estimate(mb.ref_logprobs[rl], lp[rl], cfg.kl_estimator))
    return {
        "loss": float(out["loss"]),
        "rl_tokens": n_rl,
        "entropy_sum": float(out["entropy"].cpu()[rl].sum()),
        "clipped": float(out["clip_fraction"]) * n_rl,
        "kl_sum": kl,
        "gap_sum": float((lp - mb.rollout_logprobs)[rl].abs().sum()),
    }
