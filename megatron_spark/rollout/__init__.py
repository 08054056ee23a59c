"""Rollout: the engine protocol, the CPU (transformers) and GPU (vLLM) engines, the weight bridge.

The engines are imported lazily: importing this package pulls in neither transformers nor vLLM.
"""

from __future__ import annotations

from typing import Any

from megatron_spark.errors import UserError
from megatron_spark.rollout.protocol import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams", "make_engine"]


def make_engine(kind: str, hf_config: dict[str, Any], **options: Any) -> RolloutEngine:
    """The engine ``kind`` for the policy described by ``hf_config``. ``"hf"``: :class:`HFEngine`,
    ``options`` are its keywords; ``"vllm"``: :class:`VLLMEngine`, ``options`` are
    :class:`VLLMConfig` fields."""
    if kind == "hf":
        from megatron_spark.rollout.hf_engine import HFEngine

        return HFEngine(hf_config, **options)
    if kind == "vllm":
        from megatron_spark.rollout.vllm_engine import VLLMConfig, VLLMEngine

        return VLLMEngine(hf_config, VLLMConfig(**options))
    raise UserError(f"unknown rollout engine '{kind}' (expected 'hf' or 'vllm')")
