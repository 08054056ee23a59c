r"""Fused output-layer loss head: every per-token objective straight from hidden states and the
vocab-parallel output weight, one vocabulary tile at a time, never materialising the logits.

For token t with logits :math:`z = x_t W^\top` (W: this TP rank's rows of the output layer):

* :math:`\log p_t = z_{y_t} - \mathrm{lse}(z)`, entropy :math:`H_t = \mathrm{lse}(z) - \sum_v p_v z_v`
* loss :math:`L = \sum_t w^{rl}_t\,\mathrm{pg}_t + w^{kl}_t\,\mathrm{kl}_t - w^{ent}_t H_t - w^{ce}_t \log p_t`
  - :math:`\mathrm{pg}_t = \max(-r_t A_t, -\mathrm{clip}(r_t, 1-\epsilon_l, 1+\epsilon_h) A_t)`,
    :math:`r_t = \exp(\log p_t - \log p^{old}_t)`; with dual clip c > 1 and :math:`A_t < 0` it is
    further capped at :math:`-c A_t`
  - :math:`\mathrm{kl}_t`: k1 = :math:`\log p_t - \log p^{ref}_t`, or
    k3 = :math:`e^{d} - d - 1` with :math:`d = \log p^{ref}_t - \log p_t`

Every term depends on z only through :math:`\log p_t` and :math:`H_t`, so with
:math:`g_t = \partial L/\partial \log p_t` and :math:`h_t = \partial L/\partial H_t = -w^{ent}_t`:

.. math:: \partial L/\partial z_v = g_t(\mathbb{1}[v = y_t] - p_v) - h_t\,p_v (z_v - \mu_t),
   \quad \mu_t = \sum_v p_v z_v

Forward keeps, per token, the running max m, :math:`s = \sum e^{z - m}`,
:math:`a = \sum e^{z - m} (z - m)` and the target logit (float32); TP ranks exchange these four
numbers per token in one all-gather and combine them. m and log s stay apart
(:math:`\log p = (z_y - m) - \log s`, :math:`p_v = e^{(z_v - m) - \log s}`): their float32 sum
would round away the low digits of large logits. Backward recomputes each tile's logits and
accumulates dX (summed over the TP group) and dW (local rows) in float32.

Finite for finite logits: a term is evaluated only where its weight is nonzero (its arguments
elsewhere are replaced by 0 before any exponential, so a placeholder such as a zero reference
log-prob never meets a log-prob of -95 in :math:`e^{d}`), and the two exponentials (the ratio
:math:`r_t` and :math:`e^{d}` of k3) follow :math:`e^x` exactly up to :math:`x = 64` and its
tangent line beyond (:func:`_exp_linear`), finite for log-prob gaps up to ~5e10 nats. Non-finite inputs and terms
are counted per name in :attr:`HeadOutput.nonfinite`; the caller decides what a non-finite loss
means for its step.

Weights arrive with their normalisers folded in (global token counts): the kernel sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

TOKEN_CHUNK = 4096
"""Default tokens per tile of the loss head (``train.token_chunk``)."""
VOCAB_CHUNK = 8192
"""Default vocabulary rows per tile of the loss head (``train.vocab_chunk``)."""


@dataclass(frozen=True)
class HeadConfig:
    """Objective constants and tiling of the fused head."""

    clip_low: float = 0.2
    """PPO ratio clip below 1 (epsilon_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (epsilon_high; > clip_low is "clip-higher")."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens; None disables."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """Estimator of KL(policy || reference) per token."""
    vocab_size: int | None = None
    """Real vocabulary size; logits of padded rows (ids >= vocab_size) are masked out. None: no
    padding."""
    token_chunk: int = TOKEN_CHUNK
    """Tokens per tile (bounds the [tokens, vocab] tile memory; ``train.token_chunk``)."""
    vocab_chunk: int = VOCAB_CHUNK
    """Vocabulary rows per tile (``train.vocab_chunk``)."""
    impl: Literal["auto", "torch", "triton"] = "auto"
    """Tile epilogues: ``triton`` kernels, plain ``torch``, or ``auto`` (Triton on CUDA when
    installed). The tile GEMMs always run through torch."""

    def __post_init__(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {self.dual_clip}")
        if self.impl not in ("auto", "torch", "triton"):
            raise ValueError(f"impl must be auto, torch or triton, got {self.impl!r}")
        if self.token_chunk < 1 or self.vocab_chunk < 1:
            raise ValueError("token_chunk and vocab_chunk must be >= 1")


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


def _padding_mask(n_cols: int, col_start: int, vocab_size: int | None, device) -> torch.Tensor | None:
    if vocab_size is None or col_start + n_cols <= vocab_size:
        return None
    return torch.arange(col_start, col_start + n_cols, device=device) >= vocab_size


def _tile_stats_torch_(z, m, s, a, zy, targets, col_start: int, vocab_size: int | None) -> None:
    """Fold a float32 logits tile ``[Tc, Vc]`` (clobbered) into the running per-token statistics
    ``m, s, a, zy`` (in place). Same contract as the Triton ``tile_stats_``."""
    mask = _padding_mask(z.shape[1], col_start, vocab_size, z.device)
    if mask is not None:
        z.masked_fill_(mask, float("-inf"))
    local = targets - col_start
    inside = (local >= 0) & (local < z.shape[1])
    zy += torch.where(
        inside, z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None])[:, 0], torch.zeros_like(zy)
    )
    m_new = torch.maximum(m, z.amax(dim=1))
    # A tile or shard made only of padding keeps m = -inf: shift by 0 there.
    m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
    scale = torch.where(torch.isfinite(m), torch.exp(m - m_safe), torch.zeros_like(m))
    shift = torch.where(torch.isfinite(m), m - m_safe, torch.zeros_like(m))
    z.sub_(m_safe[:, None])  # z - m, in place
    e = torch.exp(z)  # 0 on padded columns
    if mask is not None:
        z.masked_fill_(mask, 0.0)  # 0 * -inf would be nan below
    # a = sum e^(z-m) (z-m), kept relative to the running max: re-based when m moves.
    a.copy_(scale * (a + shift * s) + torch.einsum("ij,ij->i", e, z))
    s.copy_(s * scale + e.sum(1))
    m.copy_(m_new)


def _tile_grad_torch_(z, m, log_s, mu, g, h, targets, col_start: int, vocab_size: int | None):
    """dL/dz of a float32 logits tile ``[Tc, Vc]`` (``z`` is clobbered; the result is returned):
    ``p * (-g - h (z - m - mu)) + g * onehot`` with ``p = exp((z - m) - log_s)`` and ``mu`` the
    mean logit relative to m (``a / s``). Same contract as the Triton ``tile_grad_``."""
    mask = _padding_mask(z.shape[1], col_start, vocab_size, z.device)
    z.sub_(m[:, None])  # z - m: exact near the max, so p keeps its digits for large logits
    p = z.sub(log_s[:, None]).exp_()
    if mask is not None:
        p.masked_fill_(mask, 0.0)
    z.sub_(mu[:, None]).mul_(-h[:, None]).sub_(g[:, None])
    dz = p.mul_(z)
    local = targets - col_start
    rows = ((local >= 0) & (local < z.shape[1])).nonzero()[:, 0]
    dz[rows, local[rows]] += g[rows]
    return dz


def _epilogues(cfg: HeadConfig, device: torch.device):
    """(tile_stats_, tile_grad_) of the configured implementation."""
    impl = cfg.impl
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and _triton_available() else "torch"
    if impl == "triton":
        from megatron_spark.kernels import fused_head_triton as tk

        return tk.tile_stats_, tk.tile_grad_
    return _tile_stats_torch_, _tile_grad_torch_


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _half_on_cuda(x: torch.Tensor) -> bool:
    """Half-precision CUDA operands: tile GEMMs run in that dtype with float32 accumulation and
    output (cuBLAS), instead of upcasting the operands to float32 first."""
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


def _logits_tile(xc: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """float32 logits ``xc @ wt^T`` of one tile (half-precision CUDA operands multiply as they are)."""
    if _half_on_cuda(xc):
        return torch.mm(xc, wt.t(), out_dtype=torch.float32)
    return xc.float() @ wt.float().t()


def _stats(x, w, targets, cfg: HeadConfig, vocab_start: int) -> torch.Tensor:
    """Per-token [m, s, a, z_target] over this rank's vocabulary rows, float32 ``[T, 4]``:
    running max, sum e^(z-m), sum e^(z-m) (z-m), target logit (0 if not in this shard)."""
    tile_stats_, _ = _epilogues(cfg, x.device)
    t_total, v_local = x.shape[0], w.shape[0]
    out = torch.empty(4, t_total, dtype=torch.float32, device=x.device)
    out[0].fill_(float("-inf"))
    out[1:].zero_()
    for t0 in range(0, t_total, cfg.token_chunk):
        sl = slice(t0, t0 + cfg.token_chunk)
        xc = x[sl] if _half_on_cuda(x) else x[sl].float()
        m, s, a, zy = (out[i, sl] for i in range(4))
        for v0 in range(0, v_local, cfg.vocab_chunk):
            z = _logits_tile(xc, w[v0 : v0 + cfg.vocab_chunk])  # [Tc, Vc] float32 logits tile
            tile_stats_(z, m, s, a, zy, targets[sl], vocab_start + v0, cfg.vocab_size)
    return out.t()


def _combine(stats: torch.Tensor, tp_group) -> tuple[torch.Tensor, ...]:
    """Per token, from every TP rank's partial statistics: the max logit m, ``log s`` (so that
    lse = m + log s), the target logit minus m, and the mean logit minus m (``a / s``)."""
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        parts = [torch.empty_like(stats) for _ in range(dist.get_world_size(tp_group))]
        # Exchange 4 floats per token among the TP group (one collective).
        dist.all_gather(parts, stats.contiguous(), group=tp_group)
        allst = torch.stack(parts)  # [tp, T, 4]
    else:
        allst = stats[None]
    m, s, a, zy = allst.unbind(-1)
    big_m = m.max(0).values
    finite = torch.isfinite(m)
    scale = torch.where(finite, torch.exp(m - big_m), torch.zeros_like(m))
    shift = torch.where(finite, m - big_m, torch.zeros_like(m))
    s_g = (s * scale).sum(0)
    a_g = (scale * (a + shift * s)).sum(0)  # sum e^(z-M) (z-M) over all ranks
    # Everything relative to M: no cancellation between two large numbers (H = log s - a/s).
    return big_m, torch.log(s_g), zy.sum(0) - big_m, a_g / s_g


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


def token_objective(logp, inp: TokenInputs, cfg: HeadConfig) -> TokenObjective:
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


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, inp: TokenInputs, cfg: HeadConfig, vocab_start: int, tp_group, sum_dx: bool):
        stats = _stats(x, w, inp.targets, cfg, vocab_start)
        m, log_s, zy_m, mu = _combine(stats, tp_group)  # each [T]; lse = m + log_s
        logp = zy_m - log_s
        entropy = log_s - mu
        # Objective math in float32 whatever dtype the per-token inputs came in.
        inputs = TokenInputs(**{k: v if k == "targets" else v.float() for k, v in vars(inp).items()})
        obj = token_objective(logp, inputs, cfg)
        on_ent = inputs.entropy_weight != 0
        terms = {**obj.terms, "entropy": _where(on_ent, -inputs.entropy_weight * entropy)}
        loss = (obj.loss + terms["entropy"]).sum()
        h = _where(on_ent, -inputs.entropy_weight)
        rl_tokens = inputs.rl_weight != 0
        clip_fraction = (obj.clipped & rl_tokens).sum() / rl_tokens.sum().clamp(min=1)
        nonfinite = _nonfinite_counts(inputs, logp, entropy, terms)
        ctx.save_for_backward(x, w, inp.targets, m, log_s, mu, obj.g, h)
        ctx.cfg, ctx.vocab_start, ctx.tp_group, ctx.sum_dx = cfg, vocab_start, tp_group, sum_dx
        ctx.mark_non_differentiable(logp, entropy, clip_fraction, nonfinite)
        return loss, logp, entropy, clip_fraction, nonfinite

    @staticmethod
    def backward(ctx, grad_loss, _glogp, _gent, _gclip, _gnonfinite):
        x, w, targets, m, log_s, mu, g, h = ctx.saved_tensors
        cfg, vocab_start, tp_group = ctx.cfg, ctx.vocab_start, ctx.tp_group
        g, h = g * grad_loss, h * grad_loss
        half = _half_on_cuda(x)
        dx = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # dW is accumulated in float32 one vocabulary tile at a time (vocabulary-outer loop), so a
        # half-precision weight never needs a full float32 copy of its gradient.
        dw = torch.empty(w.shape, dtype=w.dtype if half else torch.float32, device=w.device)
        _, tile_grad_ = _epilogues(cfg, x.device)
        for v0 in range(0, w.shape[0], cfg.vocab_chunk):
            vs = slice(v0, v0 + cfg.vocab_chunk)
            wt = w[vs] if half else w[vs].float()
            dw_t = torch.zeros(wt.shape, dtype=torch.float32, device=w.device) if half else dw[vs].zero_()
            for t0 in range(0, x.shape[0], cfg.token_chunk):
                sl = slice(t0, t0 + cfg.token_chunk)
                xc = x[sl] if half else x[sl].float()
                z = _logits_tile(xc, wt)  # recomputed logits tile
                dz = tile_grad_(
                    z, m[sl], log_s[sl], mu[sl], g[sl], h[sl], targets[sl], vocab_start + v0, cfg.vocab_size
                )
                if half:  # dZ in the operands' dtype, as megatron's own logits gradient is
                    dz = dz.to(x.dtype)
                    torch.addmm(dx[sl], dz, wt, out_dtype=torch.float32, out=dx[sl])
                    torch.addmm(dw_t, dz.t(), xc, out_dtype=torch.float32, out=dw_t)
                else:
                    dx[sl].addmm_(dz, wt)  # [Tc, H] += [Tc, Vc] @ [Vc, H]
                    dw_t.addmm_(dz.t(), xc)  # [Vc, H] += [Vc, Tc] @ [Tc, H]
            if half:
                dw[vs] = dw_t
        if ctx.sum_dx and tp_group is not None and dist.get_world_size(tp_group) > 1:
            # dX sums the contributions of every rank's vocabulary rows (TP group).
            dist.all_reduce(dx, group=tp_group)
        return dx.to(x.dtype), dw.to(w.dtype), None, None, None, None, None


def fused_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    inputs: TokenInputs,
    cfg: HeadConfig = HeadConfig(),
    vocab_start: int = 0,
    tp_group=None,
    sum_dx: bool = True,
) -> HeadOutput:
    """The loss head for one packed micro-batch.

    ``hidden`` ``[T, H]`` (all tokens; gather sequence-parallel shards first), ``weight``
    ``[V/tp, H]`` holding vocabulary rows ``vocab_start ..``, per-token ``inputs`` of length T.
    ``sum_dx``: all-reduce dX over the TP group in backward. False when the caller's autograd
    sums it already: the sequence-parallel gather in front of the head reduce-scatters its
    gradient, as megatron's output layer does with its partial input gradient.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not fit")
    loss, logp, ent, clip, nonfinite = _FusedHead.apply(
        hidden, weight, inputs, cfg, vocab_start, tp_group, sum_dx
    )
    return HeadOutput(loss=loss, logprobs=logp, entropy=ent, clip_fraction=clip, nonfinite=nonfinite)
