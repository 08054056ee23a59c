"""The fused loss head on CUDA: compiled Triton epilogues, and half-precision operands whose tile
GEMMs keep float32 logits. Skipped without a GPU."""

import pytest
import torch

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.train.loss import LossConfig, TokenInputs, fused_loss
from tests.unit.test_fused_head import assert_rel, make_problem, reference
from tests.unit.test_fused_head_extreme import assert_extreme_matches_float64

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on CPU CI)"),
]
NAMES = ("loss", "logprobs", "entropy", "dX", "dW")


def _run(x, w, inp: TokenInputs, cfg: LossConfig, tiles: TileConfig):
    """loss, log-probs, entropies, dX, dW of the head on CUDA, as float64 CPU tensors."""
    xr = x.detach().cuda().requires_grad_()
    wr = w.detach().cuda().requires_grad_()
    out = fused_loss(xr, wr, TokenInputs(**{k: v.cuda() for k, v in vars(inp).items()}), cfg, tiles)
    out.loss.backward()
    return [t.detach().double().cpu() for t in (out.loss, out.logprobs, out.entropy, xr.grad, wr.grad)]


@pytest.mark.parametrize(
    "tokens,hidden,padded,chunks",
    [(37, 24, 64, (8, 16)), (300, 128, 3000, (300, 3000)), (1000, 256, 5000, (256, 1024))],
)
def test_compiled_triton_equals_torch_and_float64(tokens, hidden, padded, chunks):
    x, w, inp, vocab = make_problem(5, tokens=tokens, hidden=hidden, vocab=padded - 11, padded=padded)
    got = {}
    for impl in ("torch", "triton"):
        tiles = TileConfig(vocab_size=vocab, token_chunk=chunks[0], vocab_chunk=chunks[1], impl=impl)
        got[impl] = _run(x, w, inp, LossConfig(dual_clip=3.0), tiles)
    ref = reference(x, w, inp, LossConfig(dual_clip=3.0), vocab)
    for what, a, b, r in zip(NAMES, got["triton"], got["torch"], ref):
        assert_rel(a, b, 1e-6, f"triton vs torch {what}")
        # float32 sums over thousands of columns: 2.8e-6 seen on an H100 (2026-11-22).
        assert_rel(a, r, 1e-5, f"triton vs float64 {what}")


def test_bf16_operands_keep_float32_logits():
    """bf16 X and W: the tile GEMMs multiply in bf16 with float32 output, so log-probs stay at
    float32 accuracy (against float64 of the same bf16 values), far closer than log-probs of
    logits rounded to bf16 (what an output layer run in bf16 hands to the loss)."""
    x, w, inp, vocab = make_problem(7, tokens=2048, hidden=512, vocab=32000, padded=32064)
    x, w = x.bfloat16(), w.bfloat16()
    cfg = LossConfig(dual_clip=3.0)
    ours = _run(x, w, inp, cfg, TileConfig(vocab_size=vocab))
    ref = reference(x, w, inp, cfg, vocab)
    with torch.no_grad():
        logits = (x.cuda() @ w.cuda().t()).float()[:, :vocab]  # bf16 logits, then float32
        rounded = torch.log_softmax(logits, -1).gather(1, inp.targets.cuda()[:, None])[:, 0].double().cpu()
    err, err_rounded = (ours[1] - ref[1]).abs().max().item(), (rounded - ref[1]).abs().max().item()
    assert err < 1e-3 and err < err_rounded / 10, (err, err_rounded)
    for what, a, b in zip(NAMES[:3], ours[:3], ref[:3]):
        assert_rel(a, b, 1e-4, f"bf16 {what}")
    # dZ is rounded to bf16 for the backward GEMMs (megatron's logits gradient is bf16 too).
    for what, a, b in zip(NAMES[3:], ours[3:], ref[3:]):
        assert_rel(a, b, 2e-2, f"bf16 {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_extreme_logits_on_cuda(impl, dtype):
    """The CPU extreme-logit test (log-probs down to -1e4, one-hot-like rows, logits of 1e6) on
    CUDA: compiled Triton epilogues and bf16 tile GEMMs are as finite and exact as the CPU path."""
    for kl, dual_clip in (("k3", 3.0), ("k1", None)):
        assert_extreme_matches_float64(impl, kl, dual_clip, dtype, device="cuda")
