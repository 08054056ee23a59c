"""PositionRotary: per-token RoPE angles for packed sequences, and its fused rotation."""

import types

import torch

from megatron_spark import platform


def test_position_rotary_rotates_each_token_by_its_position_with_megatrons_numbers():
    """Inside ``PositionRotary``, megatron's packed RoPE entry point applies the per-token table
    through ``RotateByTable``: bitwise the output and input gradient of megatron's own unfused
    function on the same table, and each token rotated by its own position (float64 reference:
    continuations numbered on from their prefix). On exit megatron's function is back."""
    platform.setup(platform.ParallelConfig())
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_spark.mcore_compat import PositionRotary

    d = 16
    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, kv_channels=d)
    rope = RotaryEmbedding(kv_channels=d, rotary_percent=1.0, rotary_base=10000)
    # A prompt (0-3), two continuations of it (4-6, 4-5) and a sequence of its own (0-2).
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 4, 5, 0, 1, 2])
    cu = torch.tensor([0, 4, 7, 9, 12], dtype=torch.int32)
    cp_group = parallel_state.get_context_parallel_group()
    megatron_thd = rope_utils._apply_rotary_pos_emb_thd
    torch.manual_seed(0)
    x = torch.randn(len(positions), 4, d, dtype=torch.float32)
    w = torch.randn_like(x)

    def rotate(fn, table):
        t = x.clone().requires_grad_()
        out = fn(t, table)
        (out * w).sum().backward()
        return out.detach(), t.grad

    with PositionRotary(types.SimpleNamespace(rotary_pos_emb=rope), positions) as rotary:
        table = rope(int(positions.numel()))  # what GPTModel asks for: the per-token table
        assert rotary.table is table and table.shape == (len(positions), 1, 1, d)
        assert rope_utils._apply_rotary_pos_emb_thd is not megatron_thd
        fused, fused_grad = rotate(
            lambda t, f: rope_utils.apply_rotary_pos_emb(t, f, config, cu_seqlens=cu, cp_group=cp_group),
            table,
        )
    assert rope_utils._apply_rotary_pos_emb_thd is megatron_thd
    plain, plain_grad = rotate(lambda t, f: megatron_thd(t, cu, f, cp_group=cp_group), table)
    assert torch.equal(fused, plain) and torch.equal(fused_grad, plain_grad)

    # float64: pairs (j, j + d/2) rotated by position * base^(-2j/d).
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None, None] * inv  # [T, 1, d/2]
    x1, x2 = x.double()[..., : d // 2], x.double()[..., d // 2 :]
    want = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)
    torch.testing.assert_close(fused.double(), want, atol=1e-5, rtol=0)
