"""Group-relative advantages (GRPO).

For a prompt with n sampled responses and rewards :math:`r_1..r_n`:

* ``std``:  :math:`A_i = (r_i - \\bar r) / (\\sigma_r + \\epsilon)` (population std of the group)
* ``mean``: :math:`A_i = r_i - \\bar r` (no std scaling: a group whose rewards barely differ is not
  amplified; the "Dr. GRPO" variant)

Every token of response i gets :math:`A_i`. A group with identical rewards has zero advantage and
contributes no policy gradient.
"""

from __future__ import annotations

from typing import Literal

import torch


def group_advantages(
    rewards: torch.Tensor, scale: Literal["std", "mean"] = "std", eps: float = 1e-6
) -> torch.Tensor:
    """``rewards`` ``[groups, n]`` -> advantages ``[groups, n]`` (float64 math, float32 result)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, samples], got shape {tuple(rewards.shape)}")
    r = rewards.double()
    centered = r - r.mean(dim=1, keepdim=True)
    if scale == "mean":
        return centered.float()
    if scale == "std":
        return (centered / (r.std(dim=1, unbiased=False, keepdim=True) + eps)).float()
    raise ValueError(f"scale must be 'std' or 'mean', got {scale!r}")
