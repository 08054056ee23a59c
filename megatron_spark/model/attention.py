"""Core attention that runs anywhere torch does, plugged into megatron through its ModuleSpec.

megatron-core's local ``DotProductAttention`` allocates on CUDA and refuses packed sequences, so
on the CPU (and on GPUs without Transformer Engine) we supply this module instead. It receives the
already-projected, already-rotated heads from megatron's ``SelfAttention`` and returns the context
in the layout megatron expects:

* unpacked (sbhd): query ``[s, b, np, hn]``, key/value ``[s, b, ng, hn]`` -> ``[s, b, np*hn]``
* packed (thd, ``packed_seq_params.qkv_format == "thd"``): query ``[t, np, hn]``, key/value
  ``[t, ng, hn]`` -> ``[t, np*hn]``; attention is causal *within* each sequence delimited by
  ``cu_seqlens_q`` and never crosses a sequence boundary, except into a shared prefix: when the
  params carry ``prefix_of`` (:class:`~megatron_spark.model.forward.PackedBatch`), a continuation
  attends to all of its prefix's tokens, then causally to its own.

Grouped-query attention is handled by ``scaled_dot_product_attention(enable_gqa=True)``; the math
runs in float32 for half-precision inputs when ``attention_softmax_in_fp32`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    """Causal self-attention by ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        **_unused,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"SDPACoreAttention supports causal masks only, got {attn_mask_type}")
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.upcast = config.attention_softmax_in_fp32

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # q [b, np, sq, hn], k/v [b, ng, sk, hn] -> [b, np, sq, hn]. Causal (sq == sk) without
        # ``mask``; with it, ``mask`` [b, 1, sq, sk] (True: may attend) says everything.
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.to(dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPACoreAttention does not support an attention bias")
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            return self._forward_thd(
                query, key, value, _thd_plan(packed_seq_params, query.shape[0], query.device)
            )
        # sbhd: [s, b, n, hn] -> [b, n, s, hn]; the causal mask is implied (attention_mask unused).
        s, b, n, hn = query.shape
        out = self._sdpa(*(t.permute(1, 2, 0, 3) for t in (query, key, value)))
        return out.permute(2, 0, 1, 3).reshape(s, b, n * hn)

    def _forward_thd(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: ThdPlan
    ) -> torch.Tensor:
        t, n, hn = query.shape
        outputs = []
        for group in plan.groups:
            # [g, L, heads, hn] -> [g, heads, L, hn]
            q = _rows(query, group.q_idx).transpose(1, 2)
            k, v = (_rows(x, group.kv_idx).transpose(1, 2) for x in (key, value))
            out = self._sdpa(q, k, v, group.mask).transpose(1, 2)
            outputs.append(out[group.own])  # [own tokens of the group, heads, hn]
        if plan.tail:  # tokens past cu_seqlens[-1] (padding to a fixed pack length) attend to nothing
            outputs.append(query.new_zeros(plan.tail, n, hn))
        return torch.cat(outputs)[plan.order].reshape(t, n * hn)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a 2-D ``index`` of token rows: ``[g, L, heads, hn]``. Through
    ``index_select``, whose backward sums repeated rows with ``index_add_``: advanced indexing's
    backward (``index_put_`` with accumulation) sums them in a thread-dependent order on the CPU,
    so two runs with two threads differed from the first training step (a shared prompt's keys
    are gathered once per continuation)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


@dataclass
class ThdGroup:
    """Rows attended by one SDPA call: ``kv_idx`` ``[g, Lk]``, the token whose key and value each
    slot of each row gathers (a prefix's, then the row's own); ``q_idx`` ``[g, Lq]``, the row's
    own tokens (the only queries it answers); ``own`` ``[g, Lq]``, the real query slots; ``mask``
    ``[g, 1, Lq, Lk]`` (True: may attend), or None when no row has a prefix (then ``q_idx`` is
    ``kv_idx`` and SDPA's own causal mask is used)."""

    q_idx: torch.Tensor
    kv_idx: torch.Tensor
    own: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class ThdPlan:
    """How a packed batch is attended: the batched ``groups``; ``order`` puts their outputs (then
    ``tail`` zero rows) back in token order."""

    groups: list[ThdGroup]
    order: torch.Tensor
    tail: int


def _thd_plan(params, t: int, device: torch.device) -> ThdPlan:
    """The plan of ``params`` (a megatron ``PackedSeqParams``, with our optional ``prefix_of``),
    built once and kept on it: megatron hands the same object to every layer of a forward pass.

    Every sequence becomes one row to attend over: its keys and values are its own tokens,
    behind its prefix's when it continues one; its queries are its own tokens only (a prefix's
    outputs come from the prefix's own row), and own token j sees the prefix and own tokens up
    to j. Rows are sorted by length and batched in right-padded groups whose padding stays under
    PAD_WASTE of their tokens. Right padding is exact: a real query only sees keys at or before
    it, which are all real, so a padding slot may gather any token (token 0); a padding query's
    output is dropped. Gathering a prefix into several rows sums its key/value gradients over
    them in backward. Memory is O(group * max_len^2), never O(total_tokens^2); one SDPA call per
    group.
    """
    cached = getattr(params, "_sdpa_plan", None)
    if cached is not None and cached[0] == (t, device):
        return cached[1]
    prefix_of = getattr(params, "prefix_of", None)
    bounds = params.cu_seqlens_q.tolist()
    spans = list(zip(bounds[:-1], bounds[1:]))
    before = [0] * len(spans)  # tokens of the prefix in front of each sequence's own
    if prefix_of is not None:
        before = [spans[p][1] - spans[p][0] if p >= 0 else 0 for p in prefix_of]
    rows = [(e - s + before[i], i) for i, (s, e) in enumerate(spans) if e > s]
    rows.sort(key=lambda x: -x[0])
    groups, positions = [], []
    for group in _length_groups(rows):
        kv_idx = torch.zeros((len(group), group[0][0]), dtype=torch.long)
        width = max(length - before[i] for length, i in group)  # most own tokens in a row
        q_idx = torch.zeros((len(group), width), dtype=torch.long)
        own = torch.zeros(q_idx.shape, dtype=torch.bool)
        offset = torch.zeros(len(group), dtype=torch.long)
        for row, (length, i) in enumerate(group):
            if before[i]:
                kv_idx[row, : before[i]] = torch.arange(*spans[prefix_of[i]])
            kv_idx[row, before[i] : length] = q_idx[row, : length - before[i]] = torch.arange(*spans[i])
            own[row, : length - before[i]] = True
            offset[row] = before[i]
        positions.append(q_idx[own])
        mask = None
        if offset.any():  # own token j (key slot offset + j) sees key slots <= offset + j
            sees = torch.arange(kv_idx.shape[1]) <= (offset[:, None] + torch.arange(width))[..., None]
            mask = sees[:, None].to(device)  # [g, 1, Lq, Lk]
        else:
            q_idx = kv_idx  # no prefix: queries are the keys' tokens, SDPA's causal mask applies
        groups.append(ThdGroup(q_idx.to(device), kv_idx.to(device), own.to(device), mask))
    tail = t - bounds[-1]
    if tail:
        positions.append(torch.arange(bounds[-1], t))
    plan = ThdPlan(groups, torch.argsort(torch.cat(positions)).to(device), tail)
    params._sdpa_plan = ((t, device), plan)
    return plan


PAD_WASTE = 0.25
"""Largest share of padding positions in one batched attention group."""


def _length_groups(seqs: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split ``(length, key)`` pairs sorted by decreasing length into groups whose padded size
    (count x first length) exceeds their real tokens by at most ``PAD_WASTE``."""
    groups: list[list[tuple[int, int]]] = []
    real = 0
    for item in seqs:
        if groups and groups[-1][0][0] * (len(groups[-1]) + 1) <= (1 + PAD_WASTE) * (real + item[0]):
            groups[-1].append(item)
            real += item[0]
        else:
            groups.append([item])
            real = item[0]
    return groups
