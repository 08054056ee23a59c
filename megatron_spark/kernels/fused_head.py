r"""Fused output-layer head: per-token log-probs and entropies straight from hidden states and the
vocab-parallel output weight, one vocabulary tile at a time, never materialising the logits, and
their gradient for any per-token objective built on them.

For token t with logits :math:`z = x_t W^\top` (W: this TP rank's rows of the output layer):
:math:`\log p_t = z_{y_t} - \mathrm{lse}(z)` and entropy :math:`H_t = \mathrm{lse}(z) - \sum_v p_v z_v`.
The objective (:mod:`megatron_spark.train.loss`) is a function of these two vectors only; it gives
back its scalar loss and, per token, :math:`g_t = \partial L/\partial \log p_t` and
:math:`h_t = \partial L/\partial H_t`, from which

.. math:: \partial L/\partial z_v = g_t(\mathbb{1}[v = y_t] - p_v) - h_t\,p_v (z_v - \mu_t),
   \quad \mu_t = \sum_v p_v z_v

Forward keeps, per token, the running max m, :math:`s = \sum e^{z - m}`,
:math:`a = \sum e^{z - m} (z - m)` and the target logit (float32); TP ranks exchange these four
numbers per token in one all-gather and combine them. m and log s stay apart
(:math:`\log p = (z_y - m) - \log s`, :math:`p_v = e^{(z_v - m) - \log s}`): their float32 sum
would round away the low digits of large logits. Backward recomputes each tile's logits and
accumulates dX (summed over the TP group) and dW (local rows) in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

TOKEN_CHUNK = 4096
"""Default tokens per tile of the loss head (``train.token_chunk``)."""
VOCAB_CHUNK = 8192
"""Default vocabulary rows per tile of the loss head (``train.vocab_chunk``)."""


@dataclass(frozen=True)
class TileConfig:
    """How the head walks the vocabulary: tile sizes, padding and the epilogue implementation."""

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
        if self.impl not in ("auto", "torch", "triton"):
            raise ValueError(f"impl must be auto, torch or triton, got {self.impl!r}")
        if self.token_chunk < 1 or self.vocab_chunk < 1:
            raise ValueError("token_chunk and vocab_chunk must be >= 1")


class HeadTerms(NamedTuple):
    """What an objective gives back for the log-probs and entropies of a micro-batch."""

    loss: torch.Tensor
    """Scalar loss."""
    g: torch.Tensor
    """``[T]`` dL/dlogp."""
    h: torch.Tensor
    """``[T]`` dL/dH."""
    extras: dict[str, torch.Tensor]
    """Tensors to hand back beside the loss (statistics; not differentiable)."""


Objective = Callable[[torch.Tensor, torch.Tensor], HeadTerms]
"""``objective(logp, entropy)`` (each ``[T]`` float32, no grad) -> :class:`HeadTerms`."""


class HeadResult(NamedTuple):
    loss: torch.Tensor
    """The objective's scalar loss, differentiable w.r.t. hidden states and weight."""
    logprobs: torch.Tensor
    """``[T]`` log p of the targets (no grad)."""
    entropy: torch.Tensor
    """``[T]`` entropy of the full next-token distribution (no grad)."""
    extras: dict[str, torch.Tensor]
    """The objective's :attr:`HeadTerms.extras`."""


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


def _epilogues(cfg: TileConfig, device: torch.device):
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


def _stats(x, w, targets, cfg: TileConfig, vocab_start: int) -> torch.Tensor:
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


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x, w, targets, objective: Objective, names: list, cfg: TileConfig, vocab_start, tp_group, sum_dx
    ):
        stats = _stats(x, w, targets, cfg, vocab_start)
        m, log_s, zy_m, mu = _combine(stats, tp_group)  # each [T]; lse = m + log_s
        logp = zy_m - log_s
        entropy = log_s - mu
        terms = objective(logp, entropy)
        names.extend(terms.extras)  # apply() returns tensors only: the caller names them again
        extras = tuple(terms.extras.values())
        ctx.save_for_backward(x, w, targets, m, log_s, mu, terms.g, terms.h)
        ctx.cfg, ctx.vocab_start, ctx.tp_group, ctx.sum_dx = cfg, vocab_start, tp_group, sum_dx
        ctx.mark_non_differentiable(logp, entropy, *extras)
        return terms.loss, logp, entropy, *extras

    @staticmethod
    def backward(ctx, grad_loss, *_no_grads):
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
        return dx.to(x.dtype), dw.to(w.dtype), *([None] * 7)


def fused_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    objective: Objective,
    tiles: TileConfig = TileConfig(),
    vocab_start: int = 0,
    tp_group=None,
    sum_dx: bool = True,
) -> HeadResult:
    """The head for one packed micro-batch: log-probs of ``targets`` and entropies, the
    ``objective``'s loss on them, and its gradient in backward.

    ``hidden`` ``[T, H]`` (all tokens; gather sequence-parallel shards first), ``weight``
    ``[V/tp, H]`` holding vocabulary rows ``vocab_start ..``, ``targets`` ``[T]`` global token ids.
    ``sum_dx``: all-reduce dX over the TP group in backward. False when the caller's autograd
    sums it already: the sequence-parallel gather in front of the head reduce-scatters its
    gradient, as megatron's output layer does with its partial input gradient.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not fit")
    names: list[str] = []
    loss, logp, ent, *extras = _FusedHead.apply(
        hidden, weight, targets, objective, names, tiles, vocab_start, tp_group, sum_dx
    )
    return HeadResult(loss, logp, ent, dict(zip(names, extras, strict=True)))
