"""Triton epilogues of the fused loss head (GPU path; tested on the CPU with TRITON_INTERPRET=1).

The GEMMs of each tile (logits = X_c W_t^T, dX += dZ W_t, dW += dZ^T X_c) stay with torch (cuBLAS
on GPUs). What Triton fuses is everything between them, one row (token) per program, one pass over
the tile's columns:

* :func:`tile_stats_`: online update of the per-token max m, sum e^(z-m), sum e^(z-m)(z-m) and the
  target logit from a float32 logits tile, masking padded vocabulary ids;
* :func:`tile_grad_`: the logits tile becomes dZ in place,
  ``p * (-g - h (z - m - mu)) + g * onehot`` with ``p = exp((z - m) - log s)``.

The reference for both is the chunked PyTorch path in :mod:`fused_head`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_V = 1024
NO_PADDING = 2**31 - 1  # vocab_size bound when the vocabulary is not padded


@triton.jit
def _tile_stats_kernel(
    z_ptr, stride_z, m_ptr, s_ptr, a_ptr, zy_ptr, tgt_ptr, n_cols, col_start, vocab_size, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    m_old = tl.load(m_ptr + row)
    s = tl.load(s_ptr + row)
    a = tl.load(a_ptr + row)
    zy = tl.load(zy_ptr + row)
    tgt = tl.load(tgt_ptr + row) - col_start  # target's column in this tile
    # Pass 1: the tile's max.
    tile_max = float("-inf")
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = (cols < n_cols) & (cols + col_start < vocab_size)
        z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=float("-inf"))
        tile_max = tl.maximum(tile_max, tl.max(z, axis=0))
        # Only a column of this tile: a target just past its end (the next tile, or the next TP
        # rank's rows) would read the masked -inf.
        zy += tl.sum(tl.where(ok & (cols == tgt), z, 0.0), axis=0)
    m_new = tl.maximum(m_old, tile_max)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    old_finite = m_old != float("-inf")
    scale = tl.where(old_finite, tl.exp(m_old - m_safe), 0.0)
    shift = tl.where(old_finite, m_old - m_safe, 0.0)
    a = scale * (a + shift * s)
    s = s * scale
    # Pass 2: sum e^(z-m) and sum e^(z-m) (z-m) relative to the new max.
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        ok = (cols < n_cols) & (cols + col_start < vocab_size)
        z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0)
        zs = tl.where(ok, z - m_safe, 0.0)  # masked columns: no e^(0 - m) overflow to select away
        e = tl.where(ok, tl.exp(zs), 0.0)
        s += tl.sum(e, axis=0)
        a += tl.sum(tl.where(ok, e * zs, 0.0), axis=0)
    tl.store(m_ptr + row, m_new)
    tl.store(s_ptr + row, s)
    tl.store(a_ptr + row, a)
    tl.store(zy_ptr + row, zy)


@triton.jit
def _tile_grad_kernel(
    z_ptr,
    stride_z,
    m_ptr,
    log_s_ptr,
    mu_ptr,
    g_ptr,
    h_ptr,
    tgt_ptr,
    n_cols,
    col_start,
    vocab_size,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    m = tl.load(m_ptr + row)
    log_s = tl.load(log_s_ptr + row)
    mu = tl.load(mu_ptr + row)
    g = tl.load(g_ptr + row)
    h = tl.load(h_ptr + row)
    tgt = tl.load(tgt_ptr + row) - col_start
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        in_tile = cols < n_cols
        ok = in_tile & (cols + col_start < vocab_size)
        z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0)
        # z - m: exact near the max, so p keeps its digits for large logits (0 on masked columns)
        zm = tl.where(ok, z - m, 0.0)
        p = tl.where(ok, tl.exp(zm - log_s), 0.0)
        dz = p * (-g - h * (zm - mu)) + tl.where(cols == tgt, g, 0.0)
        tl.store(z_ptr + row * stride_z + cols, dz, mask=in_tile)


def _block(n_cols: int) -> int:
    return min(BLOCK_V, triton.next_power_of_2(n_cols))


def tile_stats_(z: torch.Tensor, m, s, a, zy, targets, col_start: int, vocab_size: int | None) -> None:
    """Fold a float32 logits tile ``[Tc, Vc]`` into the running per-token statistics (in place)."""
    bound = NO_PADDING if vocab_size is None else vocab_size
    _tile_stats_kernel[(z.shape[0],)](
        z, z.stride(0), m, s, a, zy, targets, z.shape[1], col_start, bound, BLOCK=_block(z.shape[1])
    )


def tile_grad_(z: torch.Tensor, m, log_s, mu, g, h, targets, col_start: int, vocab_size: int | None):
    """dL/dz of a float32 logits tile ``[Tc, Vc]``, computed in place; returns ``z``. ``m``,
    ``log_s``, ``mu``: per-token max logit, log sum e^(z-m), mean logit minus m."""
    bound = NO_PADDING if vocab_size is None else vocab_size
    _tile_grad_kernel[(z.shape[0],)](
        z, z.stride(0), m, log_s, mu, g, h, targets, z.shape[1], col_start, bound, BLOCK=_block(z.shape[1])
    )
    return z
