"""Fused loss head against a float64 reference that materialises the logits."""

import zlib

import pytest
import torch

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.train.loss import WEIGHT_FIELDS, LossConfig, TokenInputs, fused_loss


def make_problem(seed, tokens=37, hidden=24, vocab=53, padded=64, dtype=torch.float32):
    """Random inputs (never zeros): four token roles mixed in one packed batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g, dtype=dtype)
    w = torch.randn(padded, hidden, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    role = torch.randint(0, 4, (tokens,), generator=g)  # 0 policy RL, 1 judge RL, 2 judge CE, 3 prompt
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(tokens, generator=g)  # noqa: E731
    with torch.no_grad():
        logits = (x.double() @ w.double().t())[:, :vocab]
        true_lp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].float()
    inputs = TokenInputs(
        targets=targets,
        old_logprobs=true_lp + r(-0.5, 0.5),  # ratios spread both sides of the clip range
        ref_logprobs=true_lp + r(-0.3, 0.3),
        advantages=r(-2.0, 2.0),
        rl_weight=torch.where(role <= 1, r(0.01, 0.05), torch.zeros(tokens)),
        kl_weight=torch.where(role <= 1, r(0.001, 0.01), torch.zeros(tokens)),
        entropy_weight=torch.where(role == 0, r(0.001, 0.01), torch.zeros(tokens)),
        ce_weight=torch.where(role == 2, r(0.02, 0.1), torch.zeros(tokens)),
    )
    return x, w, inputs, vocab


def reference(x, w, inp: TokenInputs, cfg: LossConfig, vocab, logp_at: torch.Tensor | None = None):
    """float64, logits materialised, autograd for the gradients. Each term only where its weight is
    nonzero (its arguments zeroed elsewhere, so placeholders are never exponentiated).

    ``logp_at``: evaluate the objectives at these float32 log-probs instead (gradients still
    exact; the returned log-probs stay exact): a log-prob of -1e4 is known to 1e-3 at best in
    float32, and ``exp(logp - old)`` carries that into the ratio, so no float32 head can do
    better. Compare the head's log-probs with the exact ones separately."""
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    logits = x @ w.t()
    logits = logits.masked_fill(torch.arange(w.shape[0]) >= vocab, float("-inf"))
    logsm = torch.log_softmax(logits, -1)
    logp = logsm.gather(1, inp.targets[:, None])[:, 0]
    p = logsm.exp()
    entropy = -(p * torch.nan_to_num(logsm, neginf=0.0)).sum(-1)
    lp = logp if logp_at is None else logp + (logp_at.double() - logp).detach()
    d = lambda t: t.double()  # noqa: E731
    on_rl, on_kl, on_ent, on_ce = (getattr(inp, k) != 0 for k in WEIGHT_FIELDS)
    zero = torch.zeros_like(logp)
    ratio = torch.exp(torch.where(on_rl, lp - d(inp.old_logprobs), zero))
    adv = torch.where(on_rl, d(inp.advantages), zero)
    pg1, pg2 = -ratio * adv, -ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * adv
    pg = torch.maximum(pg1, pg2)
    clipped = pg2 > pg1
    if cfg.dual_clip is not None:
        dual = (adv < 0) & (pg > -cfg.dual_clip * adv)
        pg = torch.where(dual, -cfg.dual_clip * adv, pg)
        clipped = clipped | dual
    dd = torch.where(on_kl, d(inp.ref_logprobs) - lp, zero)
    kl = -dd if cfg.kl_estimator == "k1" else dd.exp() - dd - 1
    loss = (
        torch.where(on_rl, d(inp.rl_weight) * pg, zero)
        + torch.where(on_kl, d(inp.kl_weight) * kl, zero)
        - torch.where(on_ent, d(inp.entropy_weight) * entropy, zero)
        - torch.where(on_ce, d(inp.ce_weight) * lp, zero)
    ).sum()
    loss.backward()
    rl = inp.rl_weight != 0
    return loss.detach(), logp.detach(), entropy.detach(), x.grad, w.grad, (clipped & rl).sum() / rl.sum()


def assert_rel(got, want, rel, what):
    """Norm-wise relative error ||got - want|| / ||want|| (plain relative error for scalars)."""
    err = (got.double() - want.double()).norm().item()
    scale = want.double().norm().item()
    assert err <= rel * scale, f"{what}: relative error {err / scale:.3e} > {rel:.0e}"


@pytest.mark.parametrize("kl", ["k1", "k3"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("chunks", [(8, 16), (1000, 1000), (5, 7)])
def test_matches_float64_reference(kl, dual_clip, chunks):
    seed = zlib.crc32(repr((kl, dual_clip, chunks)).encode())  # a fresh draw per case, reproducible
    x, w, inp, vocab = make_problem(seed)
    cfg = LossConfig(kl_estimator=kl, dual_clip=dual_clip, clip_low=0.2, clip_high=0.28)
    tiles = TileConfig(vocab_size=vocab, token_chunk=chunks[0], vocab_chunk=chunks[1])
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fused_loss(xr, wr, inp, cfg, tiles)
    out.loss.backward()
    ref_loss, ref_lp, ref_ent, ref_dx, ref_dw, ref_clip = reference(x, w, inp, cfg, vocab)
    assert_rel(out.loss, ref_loss, 1e-6, "loss")
    assert_rel(out.logprobs, ref_lp, 1e-6, "logprobs")
    assert_rel(out.entropy, ref_ent, 1e-6, "entropy")
    assert_rel(xr.grad, ref_dx, 1e-6, "dX")
    assert_rel(wr.grad, ref_dw, 1e-6, "dW")
    assert not wr.grad[vocab:].any(), "padded vocabulary rows get no gradient"
    assert out.clip_fraction.item() == pytest.approx(ref_clip.item())
    assert 0 < out.clip_fraction.item() < 1, "the problem exercises both clipped and unclipped tokens"


def test_bf16_inputs_accumulate_in_float32():
    x, w, inp, vocab = make_problem(5)
    tiles = TileConfig(vocab_size=vocab, token_chunk=8, vocab_chunk=16)
    xb, wb = x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    out = fused_loss(xb, wb, inp, LossConfig(), tiles)
    out.loss.backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    ref_loss, ref_lp, *_ = reference(xb.float(), wb.float(), inp, LossConfig(), vocab)
    assert_rel(out.logprobs, ref_lp, 1e-5, "logprobs")  # same bf16 operands, float32 math


def test_cross_entropy_matches_megatron():
    """CE-only weights: the loss equals megatron's vocab_parallel_cross_entropy summed."""
    from megatron_spark import platform

    platform.setup(platform.ParallelConfig())
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    x, w, inp, _ = make_problem(9, padded=53)
    zeros = torch.zeros_like(inp.rl_weight)
    ce_w = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    inp = TokenInputs(
        inp.targets, inp.old_logprobs, inp.ref_logprobs, inp.advantages, zeros, zeros, zeros, ce_w
    )
    out = fused_loss(x, w, inp, LossConfig(), TileConfig(token_chunk=8, vocab_chunk=16))
    ce = vocab_parallel_cross_entropy((x @ w.t())[:, None, :], inp.targets[:, None])[:, 0]
    assert_rel(out.loss, (ce_w * ce).sum(), 1e-6, "loss")


def test_never_allocates_full_logits():
    """Peak temporary of one tile, not [T, V]: with tiny tiles a large vocabulary still runs."""
    g = torch.Generator().manual_seed(0)
    t, v, h = 512, 50_000, 16
    x, w = torch.randn(t, h, generator=g), torch.randn(v, h, generator=g)
    inp = TokenInputs(torch.randint(0, v, (t,), generator=g), *(torch.rand(t, generator=g) for _ in range(7)))
    tiles = TileConfig(token_chunk=128, vocab_chunk=1024)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fused_loss(x.requires_grad_(), w.requires_grad_(), inp, LossConfig(), tiles).loss.backward()
    biggest = max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)
    # The largest single allocation is a weight-sized gradient buffer (3.2 MB, allocator
    # rounding aside); the logits would be T x V x 4 bytes = 102 MB.
    assert biggest <= v * h * 4 * 1.02
    assert biggest * 20 < t * v * 4
