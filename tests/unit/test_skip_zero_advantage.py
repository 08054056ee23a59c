"""``grpo.skip_zero_advantage``: the samples it leaves out are exactly those whose tokens add 0 to
the loss head's loss and gradients (checked through the real head, not restated), and what
``grpo.to_train`` keeps."""

import pytest
import torch

from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.train.batch import Sample, build_micro_batches
from megatron_spark.train.grpo import to_train
from megatron_spark.train.loss import LossCoefficients, LossConfig, adds_nothing, fused_loss, token_inputs

SAMPLES = {
    "rl, advantage 0": Sample([1, 2, 3], [4, 5, 6], rollout_logprobs=[-1.0, -2.0, -0.5], advantage=0.0),
    "rl, advantage 0.7": Sample([1, 2, 3], [4, 5, 6], rollout_logprobs=[-1.0, -2.0, -0.5], advantage=0.7),
    "rl, advantage 0, weight 0.3": Sample(
        [1, 2], [4, 5], rollout_logprobs=[-1.0, -2.0], advantage=0.0, weight=0.3
    ),
    "ce": Sample([1, 2, 3], [4, 5], objective="ce"),
}
COEFS = {
    "no kl, no entropy": LossCoefficients(),
    "kl": LossCoefficients(kl=0.05),
    "entropy": LossCoefficients(entropy=0.01),
}


@pytest.mark.parametrize("coef_name", list(COEFS))
@pytest.mark.parametrize("sample_name", list(SAMPLES))
def test_skipped_exactly_when_the_head_gives_it_no_loss_and_no_gradient(sample_name, coef_name):
    sample, coef = SAMPLES[sample_name], COEFS[coef_name]
    (mb,) = build_micro_batches([sample], 64)
    k = mb.batch.num_head_rows
    gen = torch.Generator().manual_seed(0)
    mb.old_logprobs = -torch.rand(k, generator=gen) - 0.5
    if coef.kl:
        mb.ref_logprobs = -torch.rand(k, generator=gen) - 0.5
    inputs = token_inputs(mb, coef, torch.tensor([10.0, 10.0], dtype=torch.float64))
    inputs.targets = torch.randint(0, 16, (k,), generator=gen)
    hidden = torch.randn(k, 8, generator=gen, requires_grad=True)
    weight = torch.randn(16, 8, generator=gen, requires_grad=True)
    out = fused_loss(hidden, weight, inputs, LossConfig(), TileConfig(impl="torch"))
    out.loss.backward()
    silent = out.loss.item() == 0.0 and not hidden.grad.any() and not weight.grad.any()
    assert adds_nothing(sample, coef) == silent


def test_to_train_drops_only_what_adds_nothing_and_keeps_one_sample():
    zero = [Sample([1], [2] * n, advantage=0.0) for n in (5, 2, 7)]
    live = Sample([1], [2, 2], advantage=-0.4)
    ce = Sample([1], [2, 2, 2], objective="ce")
    coef = LossCoefficients()
    assert to_train([*zero, live, ce], coef, skip=True) == [live, ce]
    assert to_train([*zero, live, ce], coef, skip=False) == [*zero, live, ce]
    # Nothing would be left: the shortest sample stays, so the rank still takes part in the step.
    assert to_train(zero, coef, skip=True) == [zero[1]]
    # With KL or entropy on, a zero advantage still trains.
    assert to_train(zero, LossCoefficients(kl=0.1), skip=True) == zero
    assert to_train(zero, LossCoefficients(entropy=0.1), skip=True) == zero
