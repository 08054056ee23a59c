"""Build megatron-core ``GPTModel`` pipeline stages from a :class:`ModelArch`.

Layer spec: Transformer Engine's when it is importable and we run on CUDA (FP8 switchable), else
megatron's local layers with :class:`SDPACoreAttention` as the core attention, which runs on the
CPU and understands packed (THD) sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from megatron_spark import platform
from megatron_spark.errors import UserError
from megatron_spark.model.config import ModelArch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PrecisionConfig:
    """Numerics of the Megatron model."""

    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage and compute dtype of the parameters."""
    fp8: Literal["hybrid", "e4m3"] | None = None
    """FP8 GEMMs through Transformer Engine (CUDA + TE only): ``hybrid`` = E4M3 forward, E5M2
    backward; None disables FP8."""
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"
    """FP8 scaling recipe: delayed (amax history) or per-tensor current scaling."""

    def __post_init__(self) -> None:
        if self.params_dtype not in DTYPES:
            raise UserError(f"params_dtype '{self.params_dtype}' invalid; choose from {sorted(DTYPES)}")
        if self.fp8 not in (None, "hybrid", "e4m3"):
            raise UserError(f"fp8 '{self.fp8}' invalid; choose from hybrid, e4m3 or null")
        if self.fp8_recipe not in ("delayed", "tensorwise"):
            raise UserError(f"fp8_recipe '{self.fp8_recipe}' invalid; choose delayed or tensorwise")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.params_dtype]


def transformer_engine_available() -> bool:
    """TE is used only on CUDA and only when it imports."""
    if not platform.use_cuda():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


# megatron-core 0.16 warns about its own default cuda_graph_scope ("full") on every config.
@platform.silenced("full scope is deprecated")
def transformer_config(
    arch: ModelArch,
    parallel: platform.ParallelConfig,
    precision: PrecisionConfig = PrecisionConfig(),
    init_weights: bool = True,
):
    """The megatron ``TransformerConfig`` for ``arch`` split as ``parallel``."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch.check_parallel(parallel.tensor_parallel_size, parallel.pipeline_parallel_size)
    dtype = precision.torch_dtype
    if precision.fp8 and not transformer_engine_available():
        raise UserError("fp8 needs Transformer Engine on CUDA; set fp8: null on this machine")
    fp8_kwargs = {}
    if precision.fp8:
        fp8_kwargs = {"fp8": precision.fp8, "fp8_recipe": precision.fp8_recipe}
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tensor_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        attention_softmax_in_fp32=True,
        # Kernel fusions that need apex/TE/CUDA; the local spec runs the unfused math.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        # Fresh weights are always drawn on the CPU (megatron draws each full weight, then keeps
        # this rank's slice), so one seed gives the same initial model on CPU and CUDA and at
        # every TP size. Weights that a checkpoint will fill are allocated on the GPU directly.
        use_cpu_initialization=init_weights or not platform.use_cuda(),
        perform_initialization=init_weights,
        init_method_std=float(arch.hf_config.get("initializer_range", 0.02)),
        # Packed micro-batches differ in length; the PP schedule must exchange shapes.
        variable_seq_lengths=True,
        moe_token_dispatcher_type="alltoall",
        # Losses arrive already normalised by global token counts: no per-micro-batch averaging.
        calculate_per_token_loss=True,  # dense model; allgather rejects variable lengths
        **fp8_kwargs,
    )


class TorchNorm:
    """megatron's local norm (torch ``RMSNorm`` / ``LayerNorm``), also under sequence parallelism.

    megatron-core's own ``WrappedTorchNorm`` refuses sequence parallelism, although a norm is
    per token and runs unchanged on a sequence shard: what SP needs is that the weight's
    gradient, computed from this rank's tokens only, is summed over the TP group. megatron's
    ``finalize_model_grads`` does that for parameters marked ``sequence_parallel``, as its apex
    and Transformer Engine norms are.
    """

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_unused):
        kinds = {"RMSNorm": torch.nn.RMSNorm, "LayerNorm": torch.nn.LayerNorm}
        if config.normalization not in kinds:
            raise ValueError(f"normalization {config.normalization!r} is not supported")
        norm = kinds[config.normalization](normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def layer_spec(use_te: bool):
    """Transformer layer ModuleSpec: TE layers, or local layers with our core attention and norm."""
    from megatron.core.models.gpt import gpt_layer_specs

    from megatron_spark.model.attention import SDPACoreAttention

    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    spec.submodules.input_layernorm = TorchNorm
    spec.submodules.pre_mlp_layernorm = TorchNorm
    return spec


def decoder_spec(config, use_te: bool):
    """The decoder's spec: TE's layer spec as it is; local layers as a block whose final norm is
    :class:`TorchNorm` too (megatron would pick its own for a layer spec)."""
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    layer = layer_spec(use_te)
    if use_te:
        return layer
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config), layer_norm=TorchNorm
    )


def build_model(
    arch: ModelArch,
    parallel: platform.ParallelConfig,
    precision: PrecisionConfig = PrecisionConfig(),
    init_weights: bool = True,
):
    """This rank's pipeline stage of the model (parallel groups must already be set up)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_model import GPTModel

    config = transformer_config(arch, parallel, precision, init_weights)
    model = GPTModel(
        config=config,
        transformer_layer_spec=decoder_spec(config, transformer_engine_available()),
        vocab_size=arch.padded_vocab_size,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        rope_scaling=arch.rope_llama3_factor is not None,
        rope_scaling_factor=arch.rope_llama3_factor or 8.0,
    )
    if not init_weights:
        mark_tensor_parallel_weights(model)
    return model.to(platform.device())


def mark_tensor_parallel_weights(model) -> None:
    """Set megatron's tensor-parallel attributes on split weights that lack them.

    megatron-core sets ``tensor_model_parallel`` / ``partition_dim`` on a split weight only while
    initialising it, so a model built with ``perform_initialization=False`` (to load a checkpoint)
    has unmarked shards. Everything that asks "is this a TP duplicate?" then gets it wrong: the
    global gradient norm counted only TP rank 0's shards (TP=2 reported about half the norm,
    clipped too little, and could miss a non-finite gradient on rank 1's shards).
    """
    from megatron.core.tensor_parallel import layers

    dims = {
        layers.ColumnParallelLinear: 0,
        layers.RowParallelLinear: 1,
        layers.VocabParallelEmbedding: 0,
    }
    for module in model.modules():
        dim = next((d for cls, d in dims.items() if isinstance(module, cls)), None)
        if dim is None:  # Transformer Engine layers say which way they split
            dim = {"column": 0, "row": 1}.get(getattr(module, "parallel_mode", None))
        weight = getattr(module, "weight", None)
        unmarked = isinstance(weight, torch.nn.Parameter) and not hasattr(weight, "tensor_model_parallel")
        if dim is not None and unmarked:
            layers.set_tensor_model_parallel_attributes(weight, True, dim, 1)


def layer_offset(model) -> int:
    """Global index of this stage's first decoder layer."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(model.config)
