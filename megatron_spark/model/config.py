"""Model architecture: parsed from a Hugging Face ``config.json`` or taken from a tiny preset.

:class:`ModelArch` is the one description of the network that the builder, the checkpoint mapping
and the exporters share. It keeps the original Hugging Face config dict so that an exported
checkpoint carries the user's config back unchanged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_spark.errors import UserError

SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
VOCAB_PAD_MULTIPLE = 128
"""The vocabulary is padded to a multiple of this, independent of TP, so one checkpoint loads at
every power-of-two tensor-parallel size up to 128."""

# Tiny presets: Hugging Face configs, so a preset model exports like any other.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    },
    "tiny-qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    },
}


@dataclass(frozen=True)
class ModelArch:
    """A decoder-only Llama/Qwen2 network, in the units megatron-core uses."""

    model_type: str
    """Hugging Face ``model_type``: one of ``SUPPORTED_MODEL_TYPES``."""
    vocab_size: int
    """Real vocabulary size (rows of the Hugging Face embedding)."""
    hidden_size: int
    """Model width."""
    ffn_hidden_size: int
    """SwiGLU inner width (Hugging Face ``intermediate_size``)."""
    num_layers: int
    """Decoder layers."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (grouped-query attention)."""
    head_dim: int
    """Width of one attention head (megatron ``kv_channels``)."""
    max_position_embeddings: int
    """Longest sequence the model is configured for, in tokens."""
    norm_eps: float
    """RMSNorm epsilon."""
    rope_theta: float
    """RoPE base."""
    rope_llama3_factor: float | None
    """Llama-3.1 RoPE frequency scaling factor, or None for plain RoPE."""
    qkv_bias: bool
    """Whether the query/key/value projections carry a bias (Qwen2)."""
    tie_word_embeddings: bool
    """Whether the output layer shares the input embedding."""
    hf_config: dict[str, Any] = field(compare=False, repr=False)
    """The Hugging Face config this was parsed from, written back on export."""

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary padded to ``VOCAB_PAD_MULTIPLE`` (the extra rows are zero and masked out)."""
        m = VOCAB_PAD_MULTIPLE
        return (self.vocab_size + m - 1) // m * m

    @property
    def hf_architecture(self) -> str:
        return SUPPORTED_MODEL_TYPES[self.model_type]

    def check_parallel(self, tensor_parallel_size: int, pipeline_parallel_size: int) -> None:
        """Raise a UserError if this network cannot be split as asked."""
        tp, pp = tensor_parallel_size, pipeline_parallel_size
        if tp < 1 or pp < 1:
            raise UserError(f"tensor/pipeline parallel sizes must be >= 1, got tp={tp} pp={pp}")
        for what, count in (
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_query_groups),
            ("intermediate_size", self.ffn_hidden_size),
            ("padded vocab size", self.padded_vocab_size),
        ):
            if count % tp:
                raise UserError(
                    f"{what}={count} is not divisible by tensor parallel size {tp}; "
                    f"choose a tp that divides it"
                )
        if self.num_layers % pp:
            raise UserError(
                f"num_hidden_layers={self.num_layers} is not divisible by pipeline parallel size "
                f"{pp}; choose a pp that divides it"
            )


def _require(cfg: dict[str, Any], key: str, source: str) -> Any:
    if key not in cfg:
        raise UserError(f"{source}: missing field '{key}'")
    return cfg[key]


def _rope(cfg: dict[str, Any], source: str) -> tuple[float, float | None]:
    """RoPE base and Llama-3 scaling factor from a v4 (``rope_theta``/``rope_scaling``) or v5
    (``rope_parameters``) config."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3":
        # megatron-core implements Llama-3.1 scaling with these constants only.
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
        for k, v in expected.items():
            if float(scaling.get(k, v)) != v:
                raise UserError(f"{source}: rope scaling {k}={scaling[k]} unsupported (only {v})")
        if int(scaling.get("original_max_position_embeddings", 8192)) != 8192:
            raise UserError(f"{source}: rope scaling original_max_position_embeddings must be 8192")
        return theta, float(scaling.get("factor", 8.0))
    raise UserError(f"{source}: rope type '{rope_type}' is not supported (supported: default, llama3)")


def arch_from_hf_config(cfg: dict[str, Any], source: str = "config.json") -> ModelArch:
    """Parse a Hugging Face config dict; ``source`` names it in error messages."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{source}: model_type '{model_type}' is not supported; supported model types: "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{source}: hidden_act '{act}' is not supported (expected silu)")
    if model_type == "llama" and cfg.get("mlp_bias", False):
        raise UserError(f"{source}: mlp_bias=true is not supported")
    if model_type == "qwen2" and cfg.get("use_sliding_window", False):
        raise UserError(f"{source}: use_sliding_window=true is not supported")
    hidden = int(_require(cfg, "hidden_size", source))
    heads = int(_require(cfg, "num_attention_heads", source))
    theta, llama3 = _rope(cfg, source)
    head_dim = cfg.get("head_dim") or hidden // heads
    return ModelArch(
        model_type=model_type,
        vocab_size=int(_require(cfg, "vocab_size", source)),
        hidden_size=hidden,
        ffn_hidden_size=int(_require(cfg, "intermediate_size", source)),
        num_layers=int(_require(cfg, "num_hidden_layers", source)),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_llama3_factor=llama3,
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hf_config=copy.deepcopy(cfg),
    )


def load_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """Read ``hf_dir/config.json`` with a one-line error for every way it can be wrong."""
    path = Path(hf_dir)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a Hugging Face model directory)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    return cfg


def arch_from_preset(name: str) -> ModelArch:
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'; presets: {', '.join(sorted(PRESETS))}")
    return arch_from_hf_config(PRESETS[name], source=f"preset {name}")


def arch_from_hf_dir(hf_dir: str | Path) -> ModelArch:
    return arch_from_hf_config(load_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
