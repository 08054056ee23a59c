"""Rollout engine on vLLM, colocated with the trainer in every torchrun process.

Run and tested against vLLM 0.32.0's CPU build (``tools/vllm_tests.sh``: contract, log-probs
against float64 transformers, GRPO fed by the weight bridge at TP 1 and 2 and DP 2); NOT run on
CUDA, where sleep mode comes into play (docs/rollout.md). Read from vLLM's source:
``vllm/entrypoints/llm.py`` (``LLM``, ``generate``, ``sleep``, ``wake_up(tags)``,
``collective_rpc``, ``reset_prefix_cache``), ``model_executor/model_loader/reload`` (in-place
reload), ``v1/sample`` (what ``logprobs_mode`` returns) and ``v1/executor/uniproc_executor.py``
(the external launcher). ``tests/unit/test_vllm_contract.py`` checks the names below against the
installed vLLM.

How it is colocated. ``distributed_executor_backend="external_launcher"`` makes each torchrun
process own exactly one vLLM worker in-process (no extra processes; it reuses the env:// world that
torchrun set up). vLLM lays the world out as (external data-parallel) x PP x TP, so consecutive
ranks form one rollout tensor-parallel group; its ranks must call ``generate`` with the same
prompts and seeds, and every group is an independent data-parallel replica.

Weights. The engine starts from ``load_format="dummy"`` (random weights, nothing read from disk),
so ``update_weights`` must run before the first ``generate``. It streams the Hugging Face-named,
full tensors into vLLM's in-place reload, ``collective_rpc("reload_weights")`` (each rank's worker
lives in this process, so the tensors are passed by reference, never serialised): the reload puts
back the checkpoint layout of each layer, runs the model's ``load_weights`` (vLLM's loaders cut
this rank's tensor-parallel shard) and then the layer's post-load processing (the CPU backend
repacks its linear weights there, so a bare second ``load_weights`` fails). Afterwards the prefix
cache is reset: its KV blocks were computed with the old weights.

Logprobs. ``logprobs_mode="processed_logprobs"`` returns log_softmax of the logits after
temperature AND after top-k/top-p masking; ``"raw_logprobs"`` returns them before temperature.
Neither is "temperature applied, top-p not" (our convention). With ``top_p = 1`` and no top-k the
processed logprobs are exactly ours, so this engine requires ``top_p == 1`` and says so when it is
not; there is no exact match in vLLM for ``top_p < 1``. Greedy decoding (the protocol's
``GREEDY_TOP_P``) is vLLM's temperature 0, whose log-probs are temperature 1's; so greedy runs at
temperature 1 only.

Seeds. Every request gets its own seed derived from ``(params.seed, replica_index, row)``, the row
counted from ``params.first_row``: equal
prompts in one call (GRPO's n samples per prompt) draw independent samples, ranks of a TP group
draw the same ones, and the same call repeats.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from megatron_spark.checkpoint.mapping import expected_hf_names
from megatron_spark.errors import UserError
from megatron_spark.model.config import SUPPORTED_MODEL_TYPES, arch_from_hf_config
from megatron_spark.rollout.protocol import GREEDY_TOP_P, Completion, SamplingParams

# Every vLLM callable this module uses, with the keyword arguments it passes. The contract test
# checks each against an installed vLLM, so the two cannot drift apart. ``vllm.LLM`` forwards
# keywords it does not name to ``vllm.engine.arg_utils.EngineArgs``; the test accepts either.
VLLM_CALLS: dict[str, tuple[str, ...]] = {
    "vllm.LLM": (
        "model",
        "tensor_parallel_size",
        "dtype",
        "seed",
        "gpu_memory_utilization",
        "skip_tokenizer_init",
        "distributed_executor_backend",
        "enable_sleep_mode",
        "load_format",
        "logprobs_mode",
        "generation_config",
        "max_model_len",
        "enable_prefix_caching",
        "enforce_eager",
    ),
    "vllm.LLM.generate": ("prompts", "sampling_params", "use_tqdm"),
    "vllm.LLM.sleep": ("level",),
    "vllm.LLM.wake_up": ("tags",),
    # collective_rpc("reload_weights") runs the worker's reload_weights, which hands its
    # keywords to the model runner's (the CPU runner inherits the GPU one).
    "vllm.LLM.collective_rpc": ("method", "kwargs"),
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.reload_weights": (
        "weights_iterator",
        "is_checkpoint_format",
    ),
    "vllm.LLM.reset_prefix_cache": (),
    "vllm.SamplingParams": (
        "temperature",
        "top_p",
        "max_tokens",
        "stop_token_ids",
        "seed",
        "logprobs",
        "ignore_eos",
        "detokenize",
    ),
    "vllm.inputs.TokensPrompt": ("prompt_token_ids",),
}


@dataclass(frozen=True)
class VLLMConfig:
    """How to build the colocated vLLM engine; one per torchrun process."""

    tensor_parallel_size: int = 1
    """Rollout tensor-parallel size; the torchrun world size must be a multiple of it."""
    gpu_memory_utilization: float = 0.5
    """Share of each GPU's memory vLLM may take for weights + KV cache while awake. The trainer's
    resident memory (parameters, gradients, optimiser state) must fit in the rest."""
    dtype: str = "bfloat16"
    """Weight and activation dtype in vLLM ("bfloat16", "float16", "float32")."""
    seed: int = 0
    """vLLM's engine seed; must be equal on the ranks of one tensor-parallel group."""
    replica_index: int | None = None
    """This tensor-parallel group's index among data-parallel replicas, mixed into every request
    seed so replicas given the same prompt draw different samples. None: global rank // TP size
    (vLLM groups consecutive ranks into one tensor-parallel group)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; None takes the model config's maximum."""
    sleep_level: int = 2
    """vLLM sleep level: 2 discards the weights (they are replaced after training anyway, and no
    host copy is kept); 1 keeps a host-memory copy of them."""
    sleep_mode: bool = True
    """Build vLLM with sleep mode, so ``sleep`` frees its GPU memory for training. vLLM's CPU
    backend has no sleep mode: there ``sleep`` and ``wake`` keep everything in place (the weights
    stay valid)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (GRPO's n samples per prompt); reset on every
    weight update."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower decoding, faster start, less memory)."""


def request_seed(seed: int, replica_index: int, row: int) -> int:
    """A 63-bit seed for one request, distinct for every (call seed, replica, row)."""
    digest = hashlib.blake2b(f"{seed}/{replica_index}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _ReloadStream:
    """The weight stream as vLLM's in-place reload needs it.

    * Every tensor is copied: the reload holds on to a layer's pieces (q, k and v of one fused
      matrix, say) until the layer is complete, while the bridge reuses its buckets for the next
      tensors.
    * A tied model gets ``lm_head.weight`` (the embedding) when the stream leaves it out, as the
      bridge does: vLLM's output layer is a layer of its own, and a layer that receives nothing
      keeps its old weights.
    * The name of the tensor last handed out is kept, so a failure inside vLLM's loader can be
      reported with the tensor that caused it, and every name seen, to report what was missing.
    """

    def __init__(self, named_tensors: Iterable[tuple[str, torch.Tensor]], tied: bool):
        self._stream = iter(named_tensors)
        self._tied = tied
        self.last_name: str | None = None
        self.names: set[str] = set()

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        embedding = None
        for name, tensor in self._stream:
            self.last_name = name
            self.names.add(name)
            tensor = tensor.clone()
            if name == "model.embed_tokens.weight":
                embedding = tensor
            yield name, tensor
        if self._tied and embedding is not None and "lm_head.weight" not in self.names:
            self.last_name = "lm_head.weight (the tied embedding)"
            yield "lm_head.weight", embedding


def write_model_dir(hf_config: dict[str, Any]) -> str:
    """A fresh process-local directory holding ``hf_config`` as config.json: all vLLM reads from
    disk (weights arrive through ``update_weights``; prompts are token ids, so no tokenizer)."""
    cfg = dict(hf_config)
    if not cfg.get("architectures"):  # vLLM picks its model class from this field
        cfg["architectures"] = [SUPPORTED_MODEL_TYPES[cfg["model_type"]]]
    model_dir = tempfile.mkdtemp(prefix="megatron_spark_vllm_")
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    return model_dir


def _replica_index(config: VLLMConfig) -> int:
    if config.replica_index is not None:
        return config.replica_index
    if not torch.distributed.is_initialized():
        return 0
    return torch.distributed.get_rank() // config.tensor_parallel_size


class VLLMEngine:
    """:class:`~megatron_spark.rollout.protocol.RolloutEngine` on a colocated vLLM ``LLM``."""

    def __init__(self, hf_config: dict[str, Any], config: VLLMConfig | None = None):
        """``hf_config``: the policy's Hugging Face config dict (as for :class:`HFEngine`)."""
        # The external launcher runs the engine core in this process (vLLM asserts this).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if torch.distributed.is_initialized() and "RANK" not in os.environ:
            # A plain process (no torchrun) that set up its own world of one: vLLM's external
            # launcher reads the rank from the environment, as torchrun would have set it.
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        import vllm

        config = config or VLLMConfig()
        self.config = config
        self.llm = vllm.LLM(
            model=write_model_dir(hf_config),
            tensor_parallel_size=config.tensor_parallel_size,
            dtype=config.dtype,
            seed=config.seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            skip_tokenizer_init=True,
            distributed_executor_backend="external_launcher",
            enable_sleep_mode=config.sleep_mode,
            load_format="dummy",
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # ignore a generation_config.json's sampling defaults
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=config.enforce_eager,
        )
        self._replica = _replica_index(config)
        arch = arch_from_hf_config(hf_config)
        self._expected_names = set(expected_hf_names(arch))
        self._tied = arch.tie_word_embeddings
        self._weights_valid = False  # dummy weights until the first update
        self._weights_awake = True
        self._kv_awake = True

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load every tensor (HF names, full tensors, one call); wakes only the weight memory if
        asleep, so the KV cache is not allocated while the trainer's buffers are still live."""
        self._weights_valid = False
        if not self._weights_awake:
            if self.config.sleep_mode:
                self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        stream = _ReloadStream(named_tensors, tied=self._tied)
        try:
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True}
            )
        except (KeyError, ValueError, AssertionError, RuntimeError, AttributeError) as e:
            raise UserError(f"update_weights: vLLM rejected tensor '{stream.last_name}': {e!r}") from e
        missing = sorted(self._expected_names - stream.names)
        if missing:
            raise UserError(
                f"update_weights: {len(missing)} of {len(self._expected_names)} tensors were not "
                f"sent, e.g. {', '.join(missing[:4])}"
            )
        self.llm.reset_prefix_cache()
        self._weights_valid = True

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order; ``params.top_p`` must be 1 (module docstring)."""
        vllm_params = self._sampling_params(len(prompts), params)
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, vllm_params, use_tqdm=False)
        return [_to_completion(list(p), out.outputs[0]) for p, out in zip(prompts, outputs)]

    def _sampling_params(self, num_prompts: int, params: SamplingParams) -> list[Any]:
        if not (self._weights_awake and self._kv_awake):
            raise RuntimeError("VLLMEngine is asleep: call wake() before generating")
        if not self._weights_valid:
            raise RuntimeError(
                "VLLMEngine has no valid weights: call update_weights() with every tensor first"
            )
        greedy = params.top_p <= GREEDY_TOP_P
        if params.top_p != 1.0 and not greedy:
            raise UserError(
                f"top_p={params.top_p}: vLLM can only report logprobs after top-p truncation, "
                "not before it as the trainer expects; use top_p=1 with the vLLM engine"
            )
        if greedy and params.temperature != 1.0:
            raise UserError(
                f"greedy decoding at temperature {params.temperature}: vLLM's greedy log-probs are "
                "those of temperature 1; decode greedily at temperature 1 with the vLLM engine"
            )
        import vllm

        return [
            vllm.SamplingParams(
                temperature=0.0 if greedy else params.temperature,  # 0: vLLM's greedy decoding
                top_p=1.0,
                max_tokens=params.max_new_tokens,
                stop_token_ids=list(params.stop_token_ids),
                seed=request_seed(params.seed, self._replica, params.first_row + row),
                logprobs=0,  # only the sampled token's logprob
                ignore_eos=True,  # end on our stop ids only, never on the config's eos
                detokenize=False,
            )
            for row in range(num_prompts)
        ]

    def sleep(self) -> None:
        """Free the KV cache and the weights (level 2) or move the weights to host memory (level 1).
        Without sleep mode (vLLM's CPU backend) nothing is freed and the weights stay valid; the
        engine still refuses to generate until ``wake``, as the protocol says."""
        if self.config.sleep_mode:
            self.llm.sleep(level=self.config.sleep_level)
            if self.config.sleep_level >= 2:
                self._weights_valid = False
        self._weights_awake = self._kv_awake = False

    def wake(self) -> None:
        """Reallocate what ``update_weights`` has not already woken."""
        if self._kv_awake:
            return
        if self.config.sleep_mode:
            self.llm.wake_up(tags=None if not self._weights_awake else ["kv_cache"])
        self._weights_awake = self._kv_awake = True

    def close(self) -> None:
        """Shut vLLM down: drop the engine, then destroy vLLM's process groups and the default one
        it shares with the trainer (vLLM would otherwise destroy them at exit, after the trainer
        has, and fail). A second call does nothing."""
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        if self.llm is None:
            return
        self.llm = None
        destroy_model_parallel()
        destroy_distributed_environment()
        self._weights_valid = False
        self._weights_awake = self._kv_awake = False


def _to_completion(prompt: list[int], out: Any) -> Completion:
    """Our Completion from one vLLM ``CompletionOutput`` (``logprobs``: per position a dict
    token id -> Logprob, holding the sampled token since we asked for 0 extra)."""
    tokens = list(out.token_ids)
    logprobs = [float(position[token].logprob) for position, token in zip(out.logprobs, tokens)]
    return Completion(
        prompt_ids=prompt,
        token_ids=tokens,
        logprobs=logprobs,
        finish_reason="stop" if out.finish_reason == "stop" else "length",
    )
