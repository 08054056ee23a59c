"""CPU rollout engine: a Hugging Face transformers model with our own prefill + decode loop.

Not ``model.generate``: we need the exact sampling logprob of every token (module docstring of
:mod:`megatron_spark.rollout.protocol`), seeded top-p sampling and per-sequence stop tokens.

How a call runs:

* prompts are sorted by length and cut into chunks of ``max_batch_sequences`` (less padding);
* each chunk is left-padded; the attention mask and explicit position ids (0 at the first real
  token) make a padded row compute the same numbers as the prompt alone;
* prefill runs once per distinct prompt of the chunk and fills a ``DynamicCache``, whose rows are
  then repeated for every copy of that prompt (GRPO samples each prompt n times: the prompt's
  keys and values are computed once, as a prefix cache does);
* each decode step feeds one token per unfinished row;
  rows that hit a stop token are dropped from the batch and the cache (``batch_select_indices``),
  and the loop ends when none is left;
* sampling is inverse-CDF with one uniform per (sequence, step), drawn up front for the whole call
  from ``params.seed``. So the tokens of a sequence depend only on its prompt, its row (index in
  the call plus ``params.first_row``), the seed and the weights -- not on chunking, on which other
  prompts share the batch, or on how a step's prompts were split across data-parallel replicas.

Lifecycle (see the protocol): the engine starts without valid weights; ``update_weights`` must
deliver every parameter before ``generate``. ``sleep`` frees the parameter storage (the trainer
shares this memory) and so discards the weights; ``wake`` only marks the engine usable again.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from megatron_spark import platform
from megatron_spark.errors import UserError
from megatron_spark.rollout.protocol import Completion, SamplingParams

_PAD_ID = 0
"""Id placed in padding slots; any valid id works, the attention mask hides it."""
_CONFIG_KEYS_TO_DROP = ("architectures", "transformers_version")
"""Keys of a saved config.json that ``AutoConfig.for_model`` does not take."""


DECODE_ATTENTION = "megatron_spark_decode"
"""The engine's default attention: transformers' SDPA, except for one-token decode steps
(:func:`decode_attention`)."""


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of a one-token decode step as two small matrix products; any other call goes to
    transformers' SDPA function unchanged.

    A decode step asks for ``[B, H, 1, d]`` queries against ``[B, G, L, d]`` cached keys. SDPA's
    CPU kernels tile such a call per row and head; folding the ``H / G`` query heads of each
    key/value group into one ``[H / G, d] @ [d, L]`` product does the same arithmetic in one
    batched GEMM: 1.9x faster than SDPA on the tiny recipe's shapes (256 rows, 8 heads over 4
    groups, 40 keys; ``docs/performance.md``). Softmax runs in float32. Calls with features this
    path does not cover (sliding window, soft-capping, sinks, dropout) take SDPA's path.
    """
    b, h, q_len, d = query.shape
    g = key.shape[1]
    special = any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux", "position_bias"))
    if q_len != 1 or special or dropout or h % g:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else d**-0.5
    q = query.reshape(b, g, h // g, d)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [B, G, H/G, L]
    if attention_mask is not None:  # [B, 1, 1, L]: True (or 0) where a key may be seen
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # [B, G, H/G, d]
    return out.reshape(b, 1, h, d), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the masks SDPA gets


def build_hf_model(hf_config: dict[str, Any], dtype: torch.dtype, device: str, attn_implementation: str):
    """A randomly initialised transformers CausalLM for ``hf_config`` (no hub access), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if attn_implementation == DECODE_ATTENTION:
        _register_decode_attention()

    cfg = {k: v for k, v in hf_config.items() if k not in _CONFIG_KEYS_TO_DROP}
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device).eval().requires_grad_(False)


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache by: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (5.24+ still take the old name but warn on every call)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def left_pad(
    sequences: Sequence[Sequence[int]], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to the longest sequence: ``(input_ids, attention_mask, position_ids)``, each
    ``[batch, longest]``; positions count real tokens from 0 (pads get 0, they are masked)."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), _PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, longest - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, longest - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def sample_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverse CDF; return ``(tokens [B], logprobs [B])``.

    ``logits`` [B, V]; ``uniforms`` [B] in [0, 1). The reported logprob is
    ``log_softmax(logits / temperature)`` at the drawn token, before top-p (protocol convention).
    Top-p keeps the most likely tokens until the mass *before* a token reaches ``top_p``, so the
    most likely token is always kept (top_p -> 0 is greedy).
    """
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, V]
    probs = logprobs.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)  # [B, V], unnormalised when top-p cut the tail
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # [B, 1]
    # right=True: the first index whose cdf exceeds the target, so zero-probability tokens are skipped.
    picked = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)  # [B, 1]
    tokens = picked if order is None else order.gather(-1, picked)
    return tokens[:, 0], logprobs.gather(-1, tokens)[:, 0]


class HFEngine:
    """Rollout engine on a transformers model of the policy's architecture (CPU, tiny models)."""

    def __init__(
        self,
        hf_config: dict[str, Any],
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        max_batch_sequences: int = 256,
        attn_implementation: str = DECODE_ATTENTION,
    ):
        """``hf_config``: the policy's Hugging Face config dict. ``max_batch_sequences``: most
        sequences decoded together (a longer prompt list runs in chunks). ``attn_implementation``:
        :data:`DECODE_ATTENTION` (SDPA, with one-token decode steps as two matrix products), or
        transformers' "sdpa" or "eager"; all match an unpadded forward to ~1e-6 in float32 with
        left padding. "sdpa" was ~15% faster than "eager" on the tiny presets (eager copies the
        grouped K/V heads on every step)."""
        if max_batch_sequences < 1:
            raise UserError(f"max_batch_sequences must be >= 1, got {max_batch_sequences}")
        self.model = build_hf_model(hf_config, dtype, device, attn_implementation)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_sequences = max_batch_sequences
        self.max_positions = int(self.model.config.max_position_embeddings)
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        # One entry per distinct parameter: a tied lm_head is the embedding and is not listed.
        self._params: dict[str, torch.nn.Parameter] = dict(self.model.named_parameters())
        self._shapes = {name: p.shape for name, p in self._params.items()}
        self._cache_kwarg = cache_keyword(self.model)
        self._weights_valid = False
        self._storage_freed = False
        self._awake = True

    # ---- weights -------------------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy every parameter from the stream (one call carries all of them; see the protocol).

        A tied ``lm_head.weight`` is accepted (shape-checked) and skipped: the embedding is the
        output layer. Unknown names, wrong shapes or dtypes, duplicates and missing names raise a
        UserError naming the tensor; the engine then stays without valid weights.
        """
        self._weights_valid = False
        if self._storage_freed:
            self._allocate_storage()
        received: set[str] = set()
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = self._check_incoming(name, tensor, received)
                if target is not None and not _same_memory(target, tensor):  # not written in place
                    target.copy_(tensor)
                received.add(name)
        missing = sorted(set(self._params) - received)
        if missing:
            raise UserError(
                f"update_weights: {len(missing)} of {len(self._params)} parameters were not sent, "
                f"e.g. {', '.join(missing[:4])}"
            )
        self._weights_valid = True

    def _check_incoming(self, name: str, tensor: torch.Tensor, received: set[str]) -> torch.Tensor | None:
        """The parameter ``name`` must be copied into, or None for a tied ``lm_head.weight``."""
        if name in received:
            raise UserError(f"update_weights: tensor '{name}' was sent twice")
        if name in self._params:
            target, shape = self._params[name].data, self._shapes[name]
        elif self.tied and name == "lm_head.weight":
            target, shape = None, self._shapes["model.embed_tokens.weight"]
        else:
            raise UserError(
                f"update_weights: unknown tensor '{name}' (not a parameter of this "
                f"{type(self.model).__name__}; expected Hugging Face names)"
            )
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(
                f"update_weights: tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        if tensor.dtype != self.dtype:
            raise UserError(
                f"update_weights: tensor '{name}' has dtype {tensor.dtype}, expected {self.dtype}"
            )
        return target

    def weight_targets(self) -> dict[str, torch.Tensor]:
        """This engine's parameters by HF name, for a weight bridge in the same process to write
        into directly (see the protocol); the tied ``lm_head.weight`` is not among them. Brings
        the storage back after ``sleep``. The weights count as valid only after the
        ``update_weights`` call that streams them."""
        if self._storage_freed:
            self._allocate_storage()
        return {name: p.data for name, p in self._params.items()}

    def _allocate_storage(self) -> None:
        for name, p in self._params.items():
            p.data = torch.empty(self._shapes[name], dtype=self.dtype, device=self.device)
        self._storage_freed = False

    def sleep(self) -> None:
        """Free the parameter storage; the weights are discarded until the next ``update_weights``."""
        for p in self._params.values():
            p.data = torch.empty(0, dtype=self.dtype, device=self.device)
        self._storage_freed = True
        self._weights_valid = False
        self._awake = False

    def wake(self) -> None:
        """Make the engine usable again; parameter storage returns with ``update_weights``."""
        self._awake = True

    def close(self) -> None:
        """Free the weights for good (this engine holds no process groups)."""
        self.sleep()

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Sample one completion per prompt; the same call (seed, weights) gives the same result."""
        self._check_ready(prompts, params.max_new_tokens)
        # One uniform per (sequence, step), drawn once: results do not depend on chunking. Rows
        # before ``first_row`` are drawn and dropped, so a share of a batch samples as in one call.
        gen = torch.Generator().manual_seed(params.seed)
        shape = (params.first_row + len(prompts), params.max_new_tokens)
        uniforms = torch.rand(shape, generator=gen, dtype=torch.float64)[params.first_row :]
        out: list[Completion | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.max_batch_sequences):
            rows = order[start : start + self.max_batch_sequences]
            chunk = [list(prompts[i]) for i in rows]
            tokens, logprobs, lengths, stopped = self._generate_chunk(
                chunk, uniforms[rows].to(self.device), params
            )
            for j, i in enumerate(rows):
                n = lengths[j]
                out[i] = Completion(
                    prompt_ids=chunk[j],
                    token_ids=tokens[j][:n],
                    logprobs=logprobs[j][:n],
                    finish_reason="stop" if stopped[j] else "length",
                )
        return out  # type: ignore[return-value]

    def _check_ready(self, sequences: Sequence[Sequence[int]], new_tokens: int) -> None:
        if not self._awake:
            raise RuntimeError("HFEngine is asleep: call wake() before generating")
        if not self._weights_valid:
            raise RuntimeError("HFEngine has no valid weights: call update_weights() with every tensor first")
        if any(len(s) == 0 for s in sequences):
            raise UserError("every prompt needs at least one token")
        longest = max((len(s) for s in sequences), default=0) + new_tokens
        if longest > self.max_positions:
            raise UserError(
                f"prompt plus new tokens reach {longest} positions, more than the model's "
                f"max_position_embeddings={self.max_positions}"
            )

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """Logits of the last position of every row, [B, V]; the cache grows by ``ids.shape[1]``."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        return out.logits[:, -1]

    @torch.inference_mode()
    @platform.unpatched_ops()  # transformers' model never asks for CUDA here
    def _generate_chunk(
        self, prompts: list[list[int]], uniforms: torch.Tensor, params: SamplingParams
    ) -> tuple[list[list[int]], list[list[float]], list[int], list[bool]]:
        """Prefill + decode for one chunk; per row: tokens, logprobs, length, stopped-by-token."""
        from transformers import DynamicCache

        steps = params.max_new_tokens
        n = len(prompts)
        distinct: dict[tuple[int, ...], int] = {}
        copy_of = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts])
        ids, mask, positions = left_pad([list(p) for p in distinct], self.device)
        cache = DynamicCache(config=self.model.config)
        tokens_out = torch.zeros((n, steps), dtype=torch.long)
        logprobs_out = torch.zeros((n, steps), dtype=torch.float32)
        lengths = torch.full((n,), steps, dtype=torch.long)
        stopped = torch.zeros(n, dtype=torch.bool)
        stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=self.device)
        live = torch.arange(n)  # chunk rows still decoding, in cache order
        logits = self._forward(ids, mask, positions, cache)
        if len(distinct) < n:  # one row per prompt copy
            rows = copy_of.to(self.device)
            cache.batch_select_indices(rows)
            logits, mask, positions = logits[rows], mask[rows], positions[rows]
        next_pos = positions[:, -1] + 1  # [live]
        for step in range(steps):
            tok, lp = sample_tokens(logits, uniforms[live, step], params.temperature, params.top_p)
            tokens_out[live, step] = tok.cpu()
            logprobs_out[live, step] = lp.float().cpu()
            done = torch.isin(tok, stop_ids).cpu()  # [live]
            lengths[live[done]] = step + 1
            stopped[live[done]] = True
            if step == steps - 1 or bool(done.all()):
                break
            if done.any():  # drop finished rows from the batch and the cache
                keep = (~done).nonzero()[:, 0]
                live, tok, next_pos, mask = live[keep], tok[keep], next_pos[keep], mask[keep]
                cache.batch_select_indices(keep.to(self.device))
            mask = torch.cat([mask, mask.new_ones((live.numel(), 1))], dim=1)
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
        return tokens_out.tolist(), logprobs_out.tolist(), lengths.tolist(), stopped.tolist()

    # ---- scoring -------------------------------------------------------------------------------

    @torch.inference_mode()
    @platform.unpatched_ops()
    def logprobs(
        self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], temperature: float = 1.0
    ) -> list[list[float]]:
        """Teacher-forced ``log_softmax(logits / temperature)`` of every token after the prompt,
        per sequence (one padded forward per chunk of ``max_batch_sequences``)."""
        self._check_ready(sequences, 0)
        out: list[list[float]] = []
        for start in range(0, len(sequences), self.max_batch_sequences):
            chunk = [list(s) for s in sequences[start : start + self.max_batch_sequences]]
            ids, mask, positions = left_pad(chunk, self.device)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            lp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # [B, L-1, V]
            lp = lp.gather(-1, ids[:, 1:, None])[..., 0].cpu()  # [B, L-1]: position j predicts j+1
            width = ids.shape[1]
            for row, seq in enumerate(chunk):
                first = width - len(seq) + prompt_lens[start + row]  # first completion column
                out.append(lp[row, first - 1 :].tolist())
        return out


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same elements (a tensor streamed back after being written in place)."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape
