"""Progress of ``eval`` and ``generate``: the sequences generated so far, per phase.

These commands run no training steps; what takes their time is generation. Every generation of a
command goes through its rollout client's ``generate`` (greedy answers, samples, judge verdicts,
reflections, the frozen answer pool), so :class:`GenerationProgress` replaces that one method on
the client object with a counting one. It cuts each call into pieces of
``rollout.max_batch_sequences`` prompts (what the HF engine decodes together anyway), passing each
piece its ``SamplingParams.first_row`` so that every sample is drawn as in one call, and advances
the phase's bar (``eval reasoning``, ``generate self-reflect``, ...) after each piece. A phase that
generates in several rounds (self-reflection) learns its total as the rounds are asked for: the
bar shows the sequences generated out of those requested so far, and ends at N/N.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from megatron_spark.progress import ProgressReport
from megatron_spark.rollout.protocol import Completion, SamplingParams


class GenerationProgress:
    """Counts a rollout client's generated sequences on rank 0, one bar per phase."""

    def __init__(self, client, cfg, command: str, phase: str | None = None, stderr: bool = False):
        """``client``: a :class:`~megatron_spark.rollout.client.RolloutClient`; ``cfg``: the
        run's config (``rollout.max_batch_sequences``, ``metrics.progress_every_s``);
        ``command``: the bar's first word; ``stderr``: report there (``generate``'s stdout holds
        its rows)."""
        self.command, self.stderr = command, stderr
        self.chunk = cfg.rollout.max_batch_sequences
        self.every_s = cfg.metrics.progress_every_s
        self.enabled = client.par.rank == 0
        self._client, self._generate = client, client.generate
        self._label = command
        self._bar: ProgressReport | None = None
        client.generate = self.generate
        self.phase(phase)

    def phase(self, name: str | None) -> None:
        """End the current phase's bar; the next generation starts a bar labelled ``name``."""
        self._close_bar()
        self._label = f"{self.command} {name}" if name else self.command

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """The client's ``generate``, counted."""
        bar = self._bar_for(len(prompts))
        out: list[Completion] = []
        for start in range(0, len(prompts), self.chunk):
            piece = prompts[start : start + self.chunk]
            out += self._generate(piece, dataclasses.replace(params, first_row=params.first_row + start))
            if bar is not None:
                bar.update(advance=len(piece))
        return out

    def close(self) -> None:
        """End the last bar and give the client its own ``generate`` back."""
        self._close_bar()
        self._client.generate = self._generate

    def _bar_for(self, requested: int) -> ProgressReport | None:
        if not self.enabled:
            return None
        if self._bar is None:
            self._bar = ProgressReport(
                self._label, requested, unit="sequences", every_s=self.every_s, stderr=self.stderr
            )
        else:
            self._bar.update(total=self._bar.total + requested)
        return self._bar

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
