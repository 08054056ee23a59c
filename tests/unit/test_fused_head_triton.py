"""The Triton epilogues equal the PyTorch path, run on the CPU by Triton's interpreter.

TRITON_INTERPRET must be set before the kernels are defined, so this module sets it at import
(no other test imports the Triton module). Shapes stay tiny: the interpreter is slow.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from megatron_spark.kernels.fused_head import TileConfig  # noqa: E402
from megatron_spark.train.loss import LossConfig, TokenInputs, fused_loss  # noqa: E402
from tests.unit.test_fused_head import assert_rel, make_problem, reference  # noqa: E402
from tests.unit.test_fused_head_extreme import assert_extreme_matches_float64, run_head  # noqa: E402


@pytest.mark.parametrize("chunks,padded", [((5, 16), 64), ((13, 53), 53), ((4, 7), 60)])
def test_triton_equals_torch_and_reference(chunks, padded):
    x, w, inp, vocab = make_problem(21, tokens=13, hidden=8, padded=padded)
    results = {}
    for impl in ("torch", "triton"):
        tiles = TileConfig(vocab_size=vocab, token_chunk=chunks[0], vocab_chunk=chunks[1], impl=impl)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fused_loss(xr, wr, inp, LossConfig(dual_clip=3.0), tiles)
        out.loss.backward()
        results[impl] = (out.loss, out.logprobs, out.entropy, xr.grad, wr.grad)
    for what, a, b in zip(("loss", "logprobs", "entropy", "dX", "dW"), results["triton"], results["torch"]):
        assert_rel(a, b, 1e-6, f"triton vs torch {what}")
    ref = reference(x, w, inp, LossConfig(dual_clip=3.0), vocab)
    for what, a, b in zip(("loss", "logprobs", "entropy", "dX", "dW"), results["triton"], ref):
        assert_rel(a, b, 1e-6, f"triton vs float64 {what}")
    assert not torch.isnan(results["triton"][4]).any()


@pytest.mark.parametrize("kl,dual_clip", [("k3", 3.0), ("k1", None)])
def test_triton_extreme_logits_match_float64(kl, dual_clip):
    """Log-probs down to -1e4, one-hot-like rows, logits of 1e6 with near ties (the torch path's
    extreme test, through the Triton epilogues)."""
    assert_extreme_matches_float64("triton", kl, dual_clip, torch.float32)


def test_triton_cross_entropy_token_at_logprob_minus_95_is_finite():
    x, w = torch.ones(1, 1), torch.tensor([[0.0], [-95.0]])
    zero = torch.zeros(1)
    inp = TokenInputs(torch.tensor([1]), zero, zero, zero, zero, zero, zero, torch.ones(1))
    out, dx, dw = run_head(x, w, inp, LossConfig(kl_estimator="k3"), TileConfig(impl="triton"))
    assert out.loss.item() == 95.0
    assert dw.tolist() == [[1.0], [-1.0]] and dx.tolist() == [[95.0]]


def test_triton_target_just_past_a_tile_end():
    """Tiles of 5 columns run in blocks of 8: a target in the next tile's first 3 columns lies
    inside the block of the tile before it (past n_cols) and must not be read there. The same
    happens at TP > 1 when a shard is not a multiple of the block and the target sits in the next
    rank's first rows."""
    x, w, inp, vocab = make_problem(8, tokens=12, hidden=8, vocab=40, padded=40)
    inp.targets = torch.tensor([5, 6, 7, 10, 11, 12, 15, 16, 17, 20, 21, 22])
    out = {}
    for impl in ("torch", "triton"):
        out[impl] = fused_loss(
            x, w, inp, LossConfig(), TileConfig(vocab_size=vocab, vocab_chunk=5, impl=impl)
        )
    assert torch.isfinite(out["triton"].logprobs).all()
    assert_rel(out["triton"].logprobs, out["torch"].logprobs, 1e-6, "logprobs")
    assert_rel(out["triton"].loss, out["torch"].loss, 1e-6, "loss")
