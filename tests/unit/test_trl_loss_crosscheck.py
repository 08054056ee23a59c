"""Cross-check against a peer: our fused loss head and TRL's GRPO loss on the same per-token inputs.

TRL is a benchmark-only dependency (not installed by megatron_spark or CI), so this test is skipped
unless TRL is importable. Run it where tools/trl_side.py's venv exists:

    /work/venvs/trl/bin/python -m pytest -q tests/unit/test_trl_loss_crosscheck.py

Same tiny random Llama, same prompts and completions (ragged, masked), same old and reference
log-probs and advantages, and the same current log-probs (TRL's log-prob function is replaced by
a plain float32 log-softmax, see below). TRL's ``bnpo`` loss is the token-level clipped surrogate plus beta times
the k3 KL, averaged over all completion tokens of the batch: our head with rl_weight = 1/N and
kl_weight = beta/N per token. Compared: the loss and the gradient of the output layer's weight.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (benchmark-only; see tools/trl_side.py)")

from datasets import Dataset  # noqa: E402  (TRL brings it)
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from megatron_spark.train.kernels.fused_head import HeadConfig, TokenInputs, fused_head_loss  # noqa: E402
from tools.trl_side import make_tiny_llama  # noqa: E402

BETA, CLIP_LOW, CLIP_HIGH = 0.04, 0.2, 0.28


def test_clipped_surrogate_and_k3_kl_equal_trl_grpo_loss(tmp_path):
    path = make_tiny_llama(str(tmp_path / "model"), num_layers=2, seed=3)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        loss_type="bnpo",
        beta=BETA,
        use_bias_correction_kl=False,  # TRL 1.16's default weights the KL by the ratio; ours does not
        epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["w20 w21 w22"] * 4}),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we skip
    model = trainer.model.train()

    def exact_logps(model, input_ids, attention_mask, logits_to_keep, compute_entropy=False, **_):
        # The same per-token inputs for both losses: plain float32 log-softmax of the model's
        # logits, differentiable into lm_head. TRL 1.16's own log-prob path (its fused LM head)
        # gave log-probs up to 3e-3 away from a float64 reference on this CPU; a plain float32
        # log-softmax, 3e-7 (measured once by hand; our head must match it, asserted below).
        h = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = model.lm_head(h[:, -logits_to_keep - 1 : -1]).float()
        logp = torch.log_softmax(logits, -1)
        target = logp.gather(-1, input_ids[:, -logits_to_keep:, None])[..., 0]
        entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
        return target, entropy, None

    trainer._get_per_token_logps_and_entropies = exact_logps

    gen = torch.Generator().manual_seed(0)
    batch, prompt_len, completion_len = 4, 5, 8
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (batch, prompt_len), generator=gen)
    completion_ids = torch.randint(3, vocab, (batch, completion_len), generator=gen)
    lengths = torch.tensor([8, 8, 5, 2])  # ragged completions: the rest is masked out
    completion_mask = (torch.arange(completion_len) < lengths[:, None]).long()
    advantages = torch.rand(batch, generator=gen) * torch.tensor([1.0, -1.0, 1.0, -1.0])

    with torch.no_grad():  # current log-probs, to place old/ref log-probs around them
        logits = model(torch.cat([prompt_ids, completion_ids], 1)).logits[:, prompt_len - 1 : -1]
        current = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids[..., None])[..., 0]
    # Ratios r = p / p_old on a grid that puts tokens of both advantage signs below 1 - eps_low,
    # between 1 + eps_low and 1 + eps_high (where clip-higher differs from a symmetric clip),
    # above 1 + eps_high and in between.
    grid = torch.tensor([0.5, 0.75, 0.9, 1.0, 1.1, 1.24, 1.5, 2.0])
    ratio = torch.stack([grid[torch.randperm(completion_len, generator=gen)] for _ in range(batch)])
    old = current - ratio.log()
    ref = current + 0.5 * torch.randn(current.shape, generator=gen)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }

    model.zero_grad()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grad = model.lm_head.weight.grad.clone()

    # Ours: the hidden states that feed lm_head at every completion position that counts.
    model.zero_grad()
    with torch.no_grad():
        hidden = model.model(input_ids=torch.cat([prompt_ids, completion_ids], 1)).last_hidden_state
    keep = completion_mask.bool()
    x = hidden[:, prompt_len - 1 : -1][keep].detach()
    n = float(keep.sum())
    per_token = torch.full((x.shape[0],), 1.0 / n)
    ours = fused_head_loss(
        x,
        model.lm_head.weight,
        TokenInputs(
            targets=completion_ids[keep],
            old_logprobs=old[keep].float(),
            ref_logprobs=ref[keep].float(),
            advantages=advantages[:, None].expand(-1, completion_len)[keep].float(),
            rl_weight=per_token,
            kl_weight=BETA * per_token,
            entropy_weight=torch.zeros_like(per_token),
            ce_weight=torch.zeros_like(per_token),
        ),
        HeadConfig(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, kl_estimator="k3"),
    )
    r, a = ratio[keep], advantages[:, None].expand(-1, completion_len)[keep]
    for lo, hi in ((0, 1 - CLIP_LOW), (1 + CLIP_LOW, 1 + CLIP_HIGH), (1 + CLIP_HIGH, 9), (0.85, 1.15)):
        for sign in (1, -1):
            assert ((r > lo) & (r < hi) & (sign * a > 0)).any(), (lo, hi, sign)
    (grad,) = torch.autograd.grad(ours.loss, model.lm_head.weight)

    assert float(ours.loss.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5, abs=1e-7)
    assert torch.allclose(ours.logprobs, current[keep], rtol=0, atol=1e-5)
    assert torch.allclose(grad, trl_grad, rtol=1e-4, atol=1e-7)
    assert trl_grad.abs().sum() > 0
