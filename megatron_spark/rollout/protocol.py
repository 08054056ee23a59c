"""The rollout engine protocol: what the trainer asks of any generator (HF on the CPU, vLLM on GPUs).

Logprob convention
------------------
``Completion.logprobs[i]`` is ``log softmax(logits / temperature)[token_ids[i]]``: the temperature
is applied, top-p truncation is NOT. The trainer reproduces exactly this number (it divides its
logits by the same temperature and takes the full-vocabulary log-softmax), so that the importance
ratio ``pi_theta / pi_old`` is 1 at the first optimiser step. Top-p only decides which token is
drawn; it never renormalises the reported probability. With ``top_p = 1`` (the usual RL setting)
this is also the exact probability the token was sampled with.

Lifecycle, once per training step::

    completions = engine.generate(prompts, params)   # awake, weights valid
    engine.sleep()                                   # trainer takes the memory; weights may be dropped
    ... train ...
    engine.update_weights(bridge.named_tensors())    # one call, every tensor
    engine.wake()
    completions = engine.generate(...)

An engine that runs in the trainer's process may also offer ``weight_targets() -> dict[str,
Tensor]``: its own full HF-layout weights, which a weight bridge then fills in place (no bucket,
no second copy) before streaming those same tensors to ``update_weights`` (which must not copy a
tensor onto itself). The HF engine does; vLLM's weight loaders need the stream.

``update_weights`` may be called asleep or awake (an engine wakes only what loading needs, so the
KV cache need not coexist with the incoming tensors). After ``sleep`` the weights count as
discarded: ``generate`` raises until ``update_weights`` has delivered a complete set again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


GREEDY_TOP_P = 1e-6
"""top_p that keeps only the most likely token: greedy decoding (evaluation, test-time scaling)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; one set for every prompt of a ``generate`` call."""

    temperature: float = 1.0
    """Logits are divided by this before the softmax; > 0 (greedy is ``top_p`` near 0)."""
    top_p: float = 1.0
    """Nucleus sampling: draw only from the smallest set of most likely tokens whose probability
    reaches ``top_p``; in (0, 1]. Does not change the reported logprobs (see module docstring)."""
    max_new_tokens: int = 32
    """Most tokens generated per sequence (the stop token counts)."""
    stop_token_ids: tuple[int, ...] = ()
    """A sequence ends right after it emits one of these; the stop token is kept in the output."""
    seed: int = 0
    """Seeds the sampling: the same call with the same seed and weights gives the same tokens."""
    first_row: int = 0
    """Index of the call's first prompt in a wider batch that was split across calls (a
    data-parallel replica's share of a step): prompt ``i`` is sampled exactly as row
    ``first_row + i`` of one call over the whole batch with the same seed would be, so the
    samples do not depend on how the batch was split."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Completion:
    """One generated continuation of one prompt."""

    prompt_ids: list[int]
    """The prompt, as given."""
    token_ids: list[int]
    """Generated ids, the stop token included when one was hit."""
    logprobs: list[float]
    """Per generated token: log p under softmax(logits / temperature), before top-p truncation."""
    finish_reason: FinishReason
    """``"stop"`` when a stop token ended it, ``"length"`` when ``max_new_tokens`` did."""


@runtime_checkable
class RolloutEngine(Protocol):
    """A generator whose weights the trainer replaces after every optimiser step."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace every weight. Hugging Face names and layouts (``model.layers.0.self_attn.
        q_proj.weight``), full unsharded tensors, streamed in any order, all of them in ONE call;
        the engine raises if a parameter is missing, unknown, or of the wrong shape. A streamed
        tensor may be a view of a buffer the stream reuses: copy it before taking the next one."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in prompt order."""
        ...

    def sleep(self) -> None:
        """Give memory back while the trainer runs; the weights may be discarded."""
        ...

    def wake(self) -> None:
        """Take the memory back before ``generate``."""
        ...

    def close(self) -> None:
        """Release the engine for good, before the trainer destroys its process groups."""
        ...
