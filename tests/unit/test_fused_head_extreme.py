"""The fused loss head at extreme logits: finite for any finite logits, exact against float64 as far
as float32 allows, every term evaluated only where its weight is nonzero, and non-finite inputs
counted by name."""

import math

import pytest
import torch

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.train.loss import (
    EXP_MAX,
    NONFINITE_NAMES,
    HeadOutput,
    LossConfig,
    TokenInputs,
    describe_nonfinite,
    fused_loss,
    token_objective,
)
from tests.unit.test_fused_head import assert_rel, make_problem, reference

VOCAB, PADDED = 13, 16


def extreme_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, PADDED]`` float32 logits (padding columns random: they must be ignored) and ``[R]``
    targets: log-probs down to -1e4, one-hot-like rows, logits of magnitude 1e6 with near ties
    (offsets of 1/16, exact in float32 next to 1e6)."""
    g = torch.Generator().manual_seed(seed)
    base = lambda: torch.randn(PADDED, generator=g)  # noqa: E731
    offsets = lambda: torch.randint(-32, 33, (PADDED,), generator=g) / 16.0  # noqa: E731
    rows, targets = [], []

    def add(row: torch.Tensor, target: int) -> None:
        rows.append(row)
        targets.append(target)

    for low in (-1e4, -1e3, -95.0, -89.0):  # target log-prob about `low`
        row = base()
        row[4] = low
        add(row, 4)
    hot = torch.zeros(PADDED)
    hot[3] = 1e4
    add(hot, 3)  # one-hot-like, target the hot logit: log p ~ -1e4 * e^-1e4 = 0
    add(hot.clone(), 5)  # ...target a cold one: log p = -1e4
    add(1e6 + offsets(), 7)
    add(-1e6 + offsets(), 2)
    add(3e4 * torch.sign(base()) + base(), 1)
    add(base(), 0)
    return torch.stack(rows), torch.tensor(targets)


def extreme_problem(dtype=torch.float32, seed: int = 0):
    """Hidden states = identity, so ``x @ w.T`` is exactly the given logits in any dtype and the
    weight gradient is the logits gradient (``dW = dZ^T``). Each logits row appears with four
    roles: policy RL (surrogate, KL, entropy), judge RL (surrogate, KL), cross-entropy, none; the
    placeholders where a weight is 0 are the zeros the trainer passes (``batch.token_inputs``)."""
    logits, row_targets = extreme_rows(seed)
    logits = logits.to(dtype)
    t = 4 * logits.shape[0]
    rows = torch.arange(t) // 4
    role = torch.arange(t) % 4
    z = logits.double()[rows]
    z[:, VOCAB:] = float("-inf")
    targets = row_targets[rows]
    true_lp = torch.log_softmax(z, -1).gather(1, targets[:, None])[:, 0].float()
    g = torch.Generator().manual_seed(seed + 1)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(t, generator=g)  # noqa: E731
    rl = role <= 1
    zeros = torch.zeros(t)
    inputs = TokenInputs(
        targets=targets,
        old_logprobs=torch.where(rl, true_lp + r(-0.5, 0.5), zeros),
        ref_logprobs=torch.where(rl, true_lp + r(-0.3, 0.3), zeros),
        advantages=torch.where(rl, r(-2.0, 2.0), zeros),
        rl_weight=torch.where(rl, r(0.01, 0.05), zeros),
        kl_weight=torch.where(rl, r(0.001, 0.01), zeros),
        entropy_weight=torch.where(role == 0, r(0.001, 0.01), zeros),
        ce_weight=torch.where(role == 2, r(0.02, 0.1), zeros),
    )
    x = torch.eye(t, dtype=dtype)
    w = logits[rows].t().contiguous()  # [PADDED, t]: w[v, i] = logits of token i at v
    return x, w, inputs


def run_head(x, w, inp: TokenInputs, cfg: LossConfig, tiles: TileConfig, device: str = "cpu"):
    """The head's output and (dX, dW) on ``device``, everything handed back on the CPU."""
    xr = x.detach().to(device, copy=True).requires_grad_()
    wr = w.detach().to(device, copy=True).requires_grad_()
    out = fused_loss(xr, wr, TokenInputs(**{k: v.to(device) for k, v in vars(inp).items()}), cfg, tiles)
    out.loss.backward()
    out = HeadOutput(**{k: v.detach().cpu() for k, v in vars(out).items()})
    return out, xr.grad.cpu(), wr.grad.cpu()


def assert_extreme_matches_float64(impl: str, kl: str, dual_clip, dtype, device: str = "cpu") -> None:
    """Log-probs within 2 float32 ulps of float64; loss, entropies and the logits gradient (dW)
    within 1e-6 of float64 evaluated at the head's float32 log-probs; dX within 1e-6 of
    ||dZ|| ||W||, the size of its float32 accumulation error for logits of 1e6."""
    x, w, inp = extreme_problem(dtype)
    cfg = LossConfig(kl_estimator=kl, dual_clip=dual_clip)
    tiles = TileConfig(vocab_size=VOCAB, token_chunk=7, vocab_chunk=5, impl=impl)
    out, dx, dw = run_head(x, w, inp, cfg, tiles, device)
    ref_loss, ref_lp, ref_ent, ref_dx, ref_dw, _ = reference(x, w, inp, cfg, VOCAB, logp_at=out.logprobs)
    ulps = (out.logprobs.double() - ref_lp).abs() / (
        torch.finfo(torch.float32).eps * ref_lp.abs().clamp(min=1)
    )
    assert ulps.max() <= 2, f"log-probs {ulps.max():.1f} ulps from float64"
    assert out.nonfinite.tolist() == [0] * len(NONFINITE_NAMES), describe_nonfinite(out.nonfinite)
    assert out.logprobs.min() < -9999 and out.logprobs.max() > -1e-6, "the rows reach both ends"
    assert_rel(out.loss, ref_loss, 1e-6, "loss")
    assert_rel(out.logprobs, ref_lp, 1e-6, "logprobs")
    assert_rel(out.entropy, ref_ent, 1e-6, "entropy")
    # Gradients come back in the operands' dtype: bf16 rounds them to 2^-9.
    rel = 1e-6 if dtype == torch.float32 else 2**-8
    assert_rel(dw, ref_dw, rel, "dW = dZ^T")
    err = (dx.double() - ref_dx).norm().item()
    bound = rel * ref_dw.norm().item() * w.double().norm().item()
    assert err <= bound, f"dX: error {err:.3e} > {bound:.3e}"
    assert torch.isfinite(dx).all() and torch.isfinite(dw).all()


def test_cross_entropy_token_at_logprob_minus_95_is_finite():
    """The reported case: one cross-entropy token at log-prob -95 gave nan with k3 (the KL
    placeholder ref=0 made e^95 = inf, times a KL weight of 0) and 95.0 with k1."""
    x = torch.ones(1, 1)
    w = torch.tensor([[0.0], [-95.0]])  # logits [0, -95]: log p(1) = -95 in float32
    zero = torch.zeros(1)
    inp = TokenInputs(torch.tensor([1]), zero, zero, zero, zero, zero, zero, torch.ones(1))
    for kl in ("k1", "k3"):
        out, dx, dw = run_head(x, w, inp, LossConfig(kl_estimator=kl), TileConfig(impl="torch"))
        assert out.loss.item() == 95.0, kl
        # dL/dz = -(onehot - p) = [1, -1] (p(1) = e^-95), so dW = [[1], [-1]] and dX = 0 - (-95).
        assert dw.tolist() == [[1.0], [-1.0]] and dx.tolist() == [[95.0]], kl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("kl", ["k1", "k3"])
def test_extreme_logits_match_float64(kl, dual_clip, dtype):
    assert_extreme_matches_float64("torch", kl, dual_clip, dtype)


def test_ratio_and_k3_follow_their_tangent_beyond_exp_max():
    """Up to EXP_MAX the ratio e^x and k3 = e^x - x - 1 are exact (float64 within 1e-6, k3's value
    near 0 within the rounding of x); beyond,
    they continue along their tangent line: finite out to x = 1e8, the gradient keeps the true
    gradient's sign and stays at its value at EXP_MAX (a clamp would zero it)."""
    xs = torch.tensor([-30.0, -1.0, -1e-3, 1e-3, 1.0, 30.0, 63.5, 64.0, 64.5, 100.0, 1e4, 1e8])
    n = len(xs)
    ref = torch.full((n,), -0.5)
    logp = (ref - xs).requires_grad_()  # d = ref - logp = xs (up to float32 rounding)
    one, zero = torch.ones(n), torch.zeros(n)
    for kl in ("k1", "k3"):
        # KL only: the per-token loss is k3(d) with gradient -(e^d - 1) w.r.t. logp.
        inp = TokenInputs(torch.zeros(n, dtype=torch.long), zero, ref, zero, zero, one, zero, zero)
        obj = token_objective(logp, inp, LossConfig(kl_estimator=kl))
        (autograd,) = torch.autograd.grad(obj.loss.sum(), logp)
        assert torch.isfinite(obj.loss).all() and torch.isfinite(obj.g).all(), kl
        assert torch.equal(autograd, obj.g), f"{kl}: autograd and the analytic gradient differ"
    d = ref.double() - logp.detach().double()
    exact = d <= EXP_MAX
    tangent = math.expm1(EXP_MAX) * (d - EXP_MAX) + math.expm1(EXP_MAX) - EXP_MAX
    want = torch.where(exact, torch.expm1(d.clamp(max=EXP_MAX)) - d, tangent)
    want_g = -torch.expm1(d.clamp(max=EXP_MAX))  # dk3/dlogp, the true one where exact
    # Near d = 0, k3 ~ d^2 / 2 is known to the float32 rounding of d (expm1(d) - d cancels).
    tol = 1e-6 * want.abs() + 2 * torch.finfo(torch.float32).eps * d.abs()
    assert ((obj.loss.double() - want).abs() <= tol).all(), (obj.loss, want)
    assert ((obj.g.double() - want_g).abs() <= 1e-6 * want_g.abs()).all(), (obj.g, want_g)
    assert (torch.sign(obj.g) == -torch.sign(xs)).all(), "k3's gradient pulls log p toward ref"

    # The ratio: surrogate only, advantage -1 and no dual clip, so the loss is r itself (unclipped
    # above 1 + clip_high) and its gradient r' = e^x.
    old = torch.full((n,), -0.5)
    logp = (old + xs).requires_grad_()
    inp = TokenInputs(torch.zeros(n, dtype=torch.long), old, zero, -one, one, zero, zero, zero)
    obj = token_objective(logp, inp, LossConfig())
    (autograd,) = torch.autograd.grad(obj.loss.sum(), logp)
    assert torch.equal(autograd, obj.g)
    x = logp.detach().double() - old.double()
    r = torch.where(x <= EXP_MAX, x.exp(), math.exp(EXP_MAX) * (1 + x - EXP_MAX))
    want = torch.maximum(r, r.clamp(0.8, 1.2))
    want_g = torch.where(r >= 0.8, x.clamp(max=EXP_MAX).exp(), 0.0)
    assert ((obj.loss.double() - want).abs() <= 1e-6 * want).all(), (obj.loss, want)
    assert ((obj.g.double() - want_g).abs() <= 1e-6 * want_g).all(), (obj.g, want_g)


def test_placeholders_where_a_weight_is_zero_are_never_evaluated():
    """NaN and infinite old/reference log-probs and advantages on tokens whose weights are 0 change
    nothing: same loss and gradients, bit for bit, as zeros there, and nothing reported."""
    x, w, inp, vocab = make_problem(3)
    cfg = LossConfig(kl_estimator="k3")
    tiles = TileConfig(vocab_size=vocab, token_chunk=8, vocab_chunk=16, impl="torch")
    off_rl, off_kl = inp.rl_weight == 0, inp.kl_weight == 0
    assert off_rl.any() and off_kl.any()
    clean = TokenInputs(
        inp.targets,
        torch.where(off_rl, 0.0, inp.old_logprobs),
        torch.where(off_kl, 0.0, inp.ref_logprobs),
        torch.where(off_rl, 0.0, inp.advantages),
        inp.rl_weight,
        inp.kl_weight,
        inp.entropy_weight,
        inp.ce_weight,
    )
    poisoned = TokenInputs(
        inp.targets,
        torch.where(off_rl, float("nan"), inp.old_logprobs),
        torch.where(off_kl, float("inf"), inp.ref_logprobs),
        torch.where(off_rl, float("-inf"), inp.advantages),
        inp.rl_weight,
        inp.kl_weight,
        inp.entropy_weight,
        inp.ce_weight,
    )
    a, b = run_head(x, w, clean, cfg, tiles), run_head(x, w, poisoned, cfg, tiles)
    assert b[0].nonfinite.sum() == 0, describe_nonfinite(b[0].nonfinite)
    assert torch.equal(a[0].loss, b[0].loss) and torch.isfinite(b[0].loss)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def _poison(name: str, x, inp: TokenInputs) -> tuple[torch.Tensor, TokenInputs]:
    """Make one input non-finite at one token that reads it."""
    rl_tok = int(inp.rl_weight.nonzero()[0, 0])
    ce_tok = int(inp.ce_weight.nonzero()[0, 0])
    fields = dict(vars(inp))
    x = x.clone()
    if name == "logits":  # a NaN hidden state: the logits of that token are NaN
        x[ce_tok] = float("nan")
        return x, inp
    tok = ce_tok if name == "ce_weight" else rl_tok
    fields[name] = fields[name].clone()
    fields[name][tok] = float("nan") if name != "ref_logprobs" else float("inf")
    return x, TokenInputs(**fields)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("advantages", {"advantages": 1, "surrogate": 1}),
        ("old_logprobs", {"old_logprobs": 1, "surrogate": 1}),
        ("ref_logprobs", {"ref_logprobs": 1, "kl": 1}),
        ("ce_weight", {"ce_weight": 1, "cross_entropy": 1}),
        ("logits", {"logits": 1, "cross_entropy": 1}),
    ],
)
def test_nonfinite_inputs_are_counted_by_name(name, expected):
    """One non-finite input at one token: the head names it and the term it reached, nothing else."""
    x, w, inp, vocab = make_problem(4)
    x, inp = _poison(name, x, inp)
    tiles = TileConfig(vocab_size=vocab, token_chunk=8, vocab_chunk=16, impl="torch")
    out = fused_loss(x, w, inp, LossConfig(kl_estimator="k3"), tiles)
    got = {n: c for n, c in zip(NONFINITE_NAMES, out.nonfinite.tolist()) if c}
    assert got == expected
    assert not torch.isfinite(out.loss)
    text = describe_nonfinite(out.nonfinite)
    assert all(f"{n} (1 token)" in text for n in expected), text


def test_describe_nonfinite_reads_as_one_phrase():
    counts = [0] * len(NONFINITE_NAMES)
    assert describe_nonfinite(counts) == ""
    counts[NONFINITE_NAMES.index("ref_logprobs")] = 3
    counts[NONFINITE_NAMES.index("kl")] = 3
    counts[NONFINITE_NAMES.index("entropy")] = 1
    assert (
        describe_nonfinite(counts) == "inputs ref_logprobs (3 tokens); terms kl (3 tokens), entropy (1 token)"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_huge_logits_from_the_gemm_stay_finite(scale, dtype):
    """Hidden states scaled up to logits of ~1e5, old and reference log-probs anywhere in
    [-1e5, 0]: ratio and k3 deep in their tangent regions, every term on. Loss, gradients and
    log-probs finite for k1/k3 with and without dual clip."""
    x, w, inp, vocab = make_problem(11, dtype=dtype)
    x = x * scale
    g = torch.Generator().manual_seed(12)
    far = lambda: -1e5 * torch.rand(x.shape[0], generator=g)  # noqa: E731
    inp = TokenInputs(**{**vars(inp), "old_logprobs": far(), "ref_logprobs": far()})
    for kl in ("k1", "k3"):
        for dual_clip in (None, 3.0):
            cfg = LossConfig(kl_estimator=kl, dual_clip=dual_clip)
            out, dx, dw = run_head(x, w, inp, cfg, TileConfig(vocab_size=vocab, impl="torch"))
            assert out.logprobs.min() < -1e3, "logits are huge"
            assert out.nonfinite.sum() == 0, describe_nonfinite(out.nonfinite)
            assert torch.isfinite(out.loss) and torch.isfinite(out.entropy).all()
            assert torch.isfinite(dx).all() and torch.isfinite(dw).all(), (kl, dual_clip)


def test_skip_cause_names_micro_batches_or_the_backward_pass():
    from megatron_spark.train.session import skip_cause

    notes = [f"update 1 micro-batch {i}/5: terms kl (1 token)" for i in range(1, 6)]
    assert skip_cause(notes[:2]) == " | ".join(notes[:2])
    assert skip_cause(notes) == " | ".join(notes[:3]) + " | and 2 more micro-batches"
    assert "backward pass" in skip_cause([])
