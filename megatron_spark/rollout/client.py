"""The trainer's side of rollout: :class:`RolloutClient`, one engine fed by the weight bridge.

The HF engine lives on each replica's leader (its model-parallel rank 0) and generates that
replica's share of the prompts; the samples are then broadcast to the replica's other ranks, which
all train on them. vLLM runs on every rank of the replica, in lockstep.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_spark.parallel import ParallelContext
from megatron_spark.rollout.protocol import GREEDY_TOP_P, Completion, SamplingParams


class RolloutClient:
    """Generate with the current policy: ``sync`` pushes its weights in, ``sleep`` lets the
    engine give its memory back while the trainer runs."""

    def __init__(self, engine, bridge, par: ParallelContext, tokenizer):
        """``engine``: the rollout engine on the ranks that host one (None elsewhere); ``bridge``:
        the :class:`~megatron_spark.rollout.bridge.WeightBridge` from the trainer's model;
        ``tokenizer``: what prompts are encoded and completions decoded with."""
        self.engine, self.bridge, self.par, self.tokenizer = engine, bridge, par, tokenizer

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Completions of this DP replica's ``prompts`` on every rank of the replica. (With vLLM
        every rank samples in lockstep; the leader's copy makes the replica agree bit for bit.)"""
        if self.engine is not None and not self.par.is_leader:
            self.engine.generate(prompts, params)  # vLLM's TP ranks must take part
        return self.par.on_leader(lambda: self.engine.generate(prompts, params))

    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy responses (texts) to this replica's prompt texts."""
        tok = self.tokenizer
        params = SamplingParams(
            top_p=GREEDY_TOP_P, max_new_tokens=max_new_tokens, stop_token_ids=(tok.eos_id,), seed=0
        )
        completions = self.generate([tok.encode_prompt(p) for p in prompts], params)
        return [tok.decode(c.token_ids) for c in completions]

    def sync(self) -> None:
        """Push the policy's current weights into the engine and wake it (collective over the
        replica)."""
        self.bridge.sync(self.engine)
        if self.engine is not None:
            self.engine.wake()

    def sleep(self) -> None:
        """Let the engine give its memory back while the trainer runs (weights are discarded)."""
        if self.engine is not None:
            self.engine.sleep()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
