"""Builders shared by training and scoring: the task's data, the model named by ``model.init``
and the rollout engine behind the weight bridge."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from megatron_spark import platform
from megatron_spark.checkpoint.io import TOKENIZER_FILES
from megatron_spark.errors import UserError
from megatron_spark.model.config import PRESETS, ModelArch, arch_from_hf_config
from megatron_spark.parallel import ParallelContext

if TYPE_CHECKING:  # the config tree sits above every component it configures
    from megatron_spark.train.config import RunConfig


def build_data(cfg: RunConfig):
    """Tokenizer, task (every row of a dataset checked), sampler and verifier."""
    from megatron_spark.data.datasets import load_task
    from megatron_spark.data.tasks import ProblemSampler
    from megatron_spark.data.tokenizer import load_tokenizer
    from megatron_spark.reward.verifiers import make_verifier

    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.task.system_prompt)
    task = load_task(cfg.task.source_config())
    v = cfg.task.verifier
    verifier = make_verifier(v.kind, box=v.box, timeout_s=v.timeout_s, function=v.function)
    return tokenizer, task, ProblemSampler(task, seed=cfg.seed), verifier


def max_positions(cfg: RunConfig, tokenizer) -> int | None:
    """The model's ``max_position_embeddings``, read from its config before any weight is loaded;
    None when ``model.init`` names nothing (loading it reports that)."""
    from megatron_spark.checkpoint.convert import read_arch

    init = cfg.model.init
    if init.startswith("preset:"):
        return preset_arch(init.removeprefix("preset:"), tokenizer).max_position_embeddings
    if not Path(init).exists():
        return None
    return read_arch(init).max_position_embeddings


def tokenizer_files(spec: str) -> list[Path]:
    """The files of tokenizer ``spec`` that checkpoints copy beside the weights."""
    from megatron_spark.data.tokenizer import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        return [BUILTIN_MODELS[spec]]
    path = Path(spec)
    if path.is_file():
        return [path]
    return [path / n for n in TOKENIZER_FILES if (path / n).is_file()]


def preset_arch(name: str, tokenizer) -> ModelArch:
    """A preset network sized to ``tokenizer``'s vocabulary and special ids."""
    if name not in PRESETS:
        raise UserError(f"model.init: unknown preset '{name}'; presets: {', '.join(sorted(PRESETS))}")
    hf = copy.deepcopy(PRESETS[name])
    hf["vocab_size"] = tokenizer.vocab_size
    hf["eos_token_id"] = tokenizer.eos_id
    hf["bos_token_id"] = tokenizer.bos_id
    hf["pad_token_id"] = tokenizer.pad_id
    return arch_from_hf_config(hf, source=f"preset {name}")


def load_model(cfg: RunConfig, tokenizer, parallel: platform.ParallelConfig):
    """``model.init``'s network (a preset with seeded random weights, or loaded weights) in the
    layout ``parallel`` asks for, and its arch."""
    from megatron_spark.checkpoint.convert import load_pretrained
    from megatron_spark.model.builder import build_model

    init = cfg.model.init
    if init.startswith("preset:"):
        arch = preset_arch(init.removeprefix("preset:"), tokenizer)
        # Seeded by platform.setup: the same seed gives the same initial weights.
        return build_model(arch, parallel, cfg.precision), arch
    if not Path(init).exists():
        raise UserError(f"model.init: '{init}' is neither preset:NAME nor an existing directory")
    model, arch = load_pretrained(init, parallel, cfg.precision)
    if tokenizer.vocab_size > arch.vocab_size:
        raise UserError(
            f"model.tokenizer has {tokenizer.vocab_size} ids but {init} has a vocabulary of {arch.vocab_size}"
        )
    return model, arch


def build_engine(cfg: RunConfig, model, arch: ModelArch, par: ParallelContext):
    """The rollout engine on the ranks that host one (None elsewhere) and the weight bridge."""
    from megatron_spark.rollout.bridge import WeightBridge

    kind = cfg.rollout.engine
    if kind == "vllm" and not platform.use_cuda() and not platform.vllm_cpu_build():
        raise UserError(
            "rollout.engine=vllm on the CPU needs vLLM's CPU build (docs/rollout.md); "
            "use rollout.engine=hf on this machine"
        )
    hosts = kind == "vllm" or par.is_leader  # an HF engine: one per replica, on its leader
    dtype = cfg.precision.torch_dtype
    engine = None
    if hosts and kind == "hf":
        from megatron_spark.rollout.hf_engine import HFEngine

        engine = HFEngine(
            arch.hf_config,
            dtype=dtype,
            device=str(platform.device()),
            max_batch_sequences=cfg.rollout.max_batch_sequences,
        )
    elif hosts:
        from megatron_spark.rollout.vllm_engine import VLLMConfig, VLLMEngine

        vllm_cfg = VLLMConfig(
            tensor_parallel_size=cfg.parallel.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            dtype=cfg.precision.params_dtype,
            seed=cfg.seed,
            replica_index=par.dp_rank,  # every engine of one model replica samples alike
            sleep_mode=platform.use_cuda(),  # vLLM's CPU backend has no sleep mode
            enforce_eager=not platform.use_cuda(),
        )
        engine = VLLMEngine(arch.hf_config, vllm_cfg)
    bridge = WeightBridge(
        model,
        arch,
        receive=hosts,
        dtype=dtype,
        config=cfg.rollout.bridge,
        tp_group=par.tp_group,
        pp_group=par.pp_group,
    )
    torch.manual_seed(cfg.seed)  # engine construction draws random init: reset for the loop
    return engine, bridge
