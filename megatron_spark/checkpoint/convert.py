"""Hugging Face <-> Megatron checkpoint conversion, and loading either kind into a live model.

Both converters run in one process at TP=1/PP=1: the dist checkpoint they write or read is
resharded to any layout by megatron on load. Tensors stream one at a time (HF -> Megatron) or one
output shard at a time (Megatron -> HF), so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist

from megatron_spark import platform
from megatron_spark.checkpoint import dist as mckpt
from megatron_spark.checkpoint.io import (
    HFCheckpointReader,
    atomic_output_dir,
    copy_tokenizer_files,
    dtype_name,
    parse_size,
    save_hf_tensors,
)
from megatron_spark.checkpoint.mapping import export_hf_tensors, load_hf_into_model
from megatron_spark.errors import UserError
from megatron_spark.model.builder import PrecisionConfig
from megatron_spark.model.config import ModelArch, arch_from_hf_dir
from megatron_spark.outputs import check_output

SINGLE = platform.ParallelConfig(tensor_parallel_size=1, pipeline_parallel_size=1)


def _single_process() -> None:
    platform.setup(SINGLE)
    if dist.get_world_size() != 1:
        raise UserError("checkpoint conversion runs as one process; run it without torchrun")


def hf_to_megatron(hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert a Hugging Face directory into a megatron_spark checkpoint at ``out``."""
    hf_dir = Path(hf_dir)
    inputs = [("--hf", hf_dir)]
    check_output(Path(out), overwrite, inputs, want_dir=True)  # before reading gigabytes
    arch = arch_from_hf_dir(hf_dir)
    reader = HFCheckpointReader(hf_dir, arch)
    with atomic_output_dir(out, overwrite, inputs) as tmp:
        from megatron_spark.model.builder import build_model

        _single_process()
        precision = PrecisionConfig(params_dtype=dtype_name(reader.dtype))
        model = build_model(arch, SINGLE, precision, init_weights=False)
        load_hf_into_model(model, arch, reader.get, tp_rank=0, tp_size=1)
        mckpt.save_model(model, tmp / "model")
        del model
        hf_aux = tmp / "hf"
        hf_aux.mkdir()
        shutil.copy2(hf_dir / "config.json", hf_aux / "config.json")
        if (hf_dir / "generation_config.json").is_file():
            shutil.copy2(hf_dir / "generation_config.json", hf_aux / "generation_config.json")
        copy_tokenizer_files(hf_dir, hf_aux)
        mckpt.write_meta(
            tmp,
            mckpt.CheckpointMeta(
                hf_config=arch.hf_config,
                params_dtype=precision.params_dtype,
                padded_vocab_size=arch.padded_vocab_size,
            ),
        )
    return Path(out)


def _generation_config(arch: ModelArch) -> dict:
    cfg = arch.hf_config
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    return {**gen, "transformers_version": cfg.get("transformers_version", "")}


def megatron_to_hf(
    ckpt: str | Path, out: str | Path, overwrite: bool = False, max_shard_size: str = "2GB"
) -> Path:
    """Export a megatron_spark checkpoint as a Hugging Face directory at ``out``."""
    ckpt = Path(ckpt)
    inputs = [("--ckpt", ckpt)]
    check_output(Path(out), overwrite, inputs, want_dir=True)
    meta = mckpt.read_meta(ckpt)
    arch = meta.arch(str(ckpt / mckpt.META_NAME))
    max_bytes = parse_size(max_shard_size)
    with atomic_output_dir(out, overwrite, inputs) as tmp:
        from megatron_spark.model.builder import build_model

        _single_process()
        model = build_model(arch, SINGLE, PrecisionConfig(params_dtype=meta.params_dtype), init_weights=False)
        mckpt.load_model(model, ckpt / "model")
        # megatron's torch RMSNorm keeps its weight in float32 whatever params_dtype is: cast every
        # tensor back to the checkpoint's dtype (lossless: the values came from that dtype).
        dtype = PrecisionConfig(params_dtype=meta.params_dtype).torch_dtype
        save_hf_tensors(((n, t.to(dtype)) for n, t in export_hf_tensors(model, arch)), tmp, max_bytes)
        del model
        config = dict(arch.hf_config)
        config["architectures"] = [arch.hf_architecture]
        for key in ("torch_dtype", "dtype"):  # transformers v4 writes torch_dtype, v5 dtype
            if key in config:
                config[key] = meta.params_dtype
        config.setdefault("torch_dtype", meta.params_dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        src_gen = ckpt / "hf" / "generation_config.json"
        if src_gen.is_file():
            shutil.copy2(src_gen, tmp / "generation_config.json")
        else:
            gen = _generation_config(arch)
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        copy_tokenizer_files(ckpt / "hf", tmp)
    return Path(out)


def read_arch(source: str | Path) -> ModelArch:
    """The network described by an HF directory or a megatron_spark checkpoint (no weights read)."""
    source = Path(source)
    if mckpt.is_megatron_checkpoint(source):
        return mckpt.read_meta(source).arch(str(source / mckpt.META_NAME))
    return arch_from_hf_dir(source)


def load_pretrained(
    source: str | Path, parallel: platform.ParallelConfig, precision: PrecisionConfig | None = None
):
    """Build this rank's stage and fill it from an HF directory or a megatron_spark checkpoint.

    Parallel groups must already be set up for ``parallel``. Returns ``(model, arch)``.
    ``precision`` defaults to the checkpoint's own dtype.
    """
    from megatron.core import parallel_state

    from megatron_spark.model.builder import build_model

    source = Path(source)
    if mckpt.is_megatron_checkpoint(source):
        meta = mckpt.read_meta(source)
        arch = meta.arch(str(source / mckpt.META_NAME))
        precision = precision or PrecisionConfig(params_dtype=meta.params_dtype)
        model = build_model(arch, parallel, precision, init_weights=False)
        mckpt.load_model(model, source / "model")
        return model, arch
    arch = arch_from_hf_dir(source)
    reader = HFCheckpointReader(source, arch)
    precision = precision or PrecisionConfig(params_dtype=dtype_name(reader.dtype))
    model = build_model(arch, parallel, precision, init_weights=False)
    load_hf_into_model(
        model,
        arch,
        lambda n: reader.get(n).to(precision.torch_dtype),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel.tensor_parallel_size,
    )
    return model, arch
