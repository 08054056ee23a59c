"""Hugging Face transformers as the reference implementation: random models and their log-probs.

Used by the parity tests and tools/bench_vs_trl.py; the builds are seeded and need no hub access.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def make_random_hf_model(hf_config: dict[str, Any], out_dir: str | Path, seed: int = 0, std: float = 0.1):
    """Build a transformers model from ``hf_config``, randomise it (norm weights near 1, every other
    tensor ~ N(0, std), so that no layer is an identity), ``save_pretrained`` it, and return it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in hf_config.items() if k not in ("architectures", "transformers_version")}
    config = AutoConfig.for_model(**cfg)
    gen = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    model.eval()
    model.save_pretrained(str(out_dir))
    return model


@torch.no_grad()
def reference_logprobs(model, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """float64 log p(tokens[i+1] | tokens[:i+1]) per sequence, one sequence at a time."""
    out = []
    for seq in sequences:
        ids = torch.tensor([list(seq)])
        logits = model(ids).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)[:-1]
        out.append(lp.gather(-1, ids[0, 1:, None])[:, 0])
    return out
