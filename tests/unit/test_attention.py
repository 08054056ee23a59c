"""SDPACoreAttention against an explicit float64 softmax, packed and unpacked."""

import math

import pytest
import torch

from megatron_spark import platform


@pytest.fixture(scope="module")
def attn():
    platform.setup(platform.ParallelConfig())
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_spark.model.attention import SDPACoreAttention

    cfg = TransformerConfig(
        num_layers=1,
        hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=8,
        attention_dropout=0.0,
    )
    module = SDPACoreAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return module, PackedSeqParams


def reference(q, k, v):
    """float64 causal attention for one sequence: q [s, np, hn], k/v [s, ng, hn] -> [s, np*hn]."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qnh,knh->nqk", q, k) / math.sqrt(q.shape[-1])
    s = q.shape[0]
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("nqk,knh->qnh", scores.softmax(-1), v).reshape(s, -1)


def test_unpacked_matches_reference(attn):
    module, _ = attn
    q, k, v = torch.randn(9, 2, 4, 8), torch.randn(9, 2, 2, 8), torch.randn(9, 2, 2, 8)
    out = module(q, k, v, attention_mask=None)
    assert out.shape == (9, 2, 32)
    for b in range(2):
        torch.testing.assert_close(
            out[:, b].double(), reference(q[:, b], k[:, b], v[:, b]), atol=1e-6, rtol=0
        )


def test_packed_matches_reference_and_never_crosses_sequences(attn):
    module, PackedSeqParams = attn
    lengths = [5, 1, 11, 3]
    cu = torch.tensor([0, 5, 6, 17, 20], dtype=torch.int32)
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=11, max_seqlen_kv=11
    )
    t = sum(lengths)
    q, k, v = torch.randn(t, 4, 8), torch.randn(t, 2, 8), torch.randn(t, 2, 8)
    out = module(q, k, v, attention_mask=None, packed_seq_params=params)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(out[s:e].double(), reference(q[s:e], k[s:e], v[s:e]), atol=1e-6, rtol=0)
    # Changing the third sequence leaves every other sequence's output untouched.
    k2 = k.clone()
    k2[6:17] += 1.0
    out2 = module(q, k2, v, attention_mask=None, packed_seq_params=params)
    assert torch.equal(out2[:6], out[:6]) and torch.equal(out2[17:], out[17:])
    assert not torch.allclose(out2[7:17], out[7:17])


def test_continuations_attend_to_their_shared_prefix(attn):
    """``prefix_of``: sequences 1 and 2 continue sequence 0, sequence 4 continues 3, sequence 5
    stands alone. Each continuation's outputs, and every input gradient (a prefix's keys and
    values summed over its continuations), equal float64 attention over prefix + continuation as
    one sequence. The lengths put continuations with different prefixes and own lengths, and a
    sequence without a prefix, into one batched group (checked), and a group without prefixes."""
    module, PackedSeqParams = attn
    lengths = [4, 3, 6, 5, 2, 8]
    prefix_of = [-1, 0, 0, -1, 3, -1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=8, max_seqlen_kv=8
    )
    params.prefix_of = prefix_of
    t = sum(lengths)
    from megatron_spark.model.attention import _thd_plan

    plan = _thd_plan(params, t, torch.device("cpu"))
    masked = [g for g in plan.groups if g.mask is not None]
    assert len(masked) == 1 and masked[0].kv_idx.shape == (4, 10)  # rows 2, 5, 1, 4
    assert masked[0].own.sum(1).tolist() == [6, 8, 3, 2]  # queries: own tokens only
    assert any(g.mask is None for g in plan.groups)  # rows 3, 0: plain causal
    q, k, v = (torch.randn(t, n, 8, requires_grad=True) for n in (4, 2, 2))
    w = torch.randn(t, 32)
    out = module(q, k, v, attention_mask=None, packed_seq_params=params)
    (out * w).sum().backward()
    got = [x.grad.clone() for x in (q, k, v)]

    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    ref_total = 0.0
    for i, (s, e) in enumerate(spans):
        rows = torch.arange(s, e)
        if prefix_of[i] >= 0:
            rows = torch.cat([torch.arange(*spans[prefix_of[i]]), rows])
        ref = reference(q[rows], k[rows], v[rows])[-(e - s) :]
        torch.testing.assert_close(out[s:e].double(), ref, atol=1e-6, rtol=0)
        ref_total = ref_total + (ref * w[s:e].double()).sum()
    for x in (q, k, v):
        x.grad = None
    ref_total.backward()
    for mine, x in zip(got, (q, k, v)):
        torch.testing.assert_close(mine.double(), x.grad.double(), atol=1e-5, rtol=0)


def test_shared_prefix_gradients_are_the_same_every_run_with_two_threads(attn):
    """A prompt shared by many continuations has its keys and values gathered once per
    continuation; their gradients are summed back. That sum must not depend on thread timing:
    with two threads, advanced indexing's backward gave different low bits run to run."""
    module, PackedSeqParams = attn
    lengths = [96] + [6] * 64
    prefix_of = [-1] + [0] * 64
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=96, max_seqlen_kv=96
    )
    params.prefix_of = prefix_of
    t = sum(lengths)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(t, n, 8, generator=gen) for n in (4, 2, 2)]
    w = torch.randn(t, 32, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(6):
            q, k, v = (x.clone().requires_grad_() for x in inputs)
            (module(q, k, v, attention_mask=None, packed_seq_params=params) * w).sum().backward()
            grads.append([x.grad for x in (q, k, v)])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
