"""The one place that knows how Hugging Face tensors map onto Megatron parameters.

Three layers of knowledge, used by the offline converters, the ``logprobs`` loader and (later) the
rollout weight bridge:

1. *Names*: a Megatron parameter name with a global layer index (``decoder.layers.3.mlp...``) maps
   to one or more Hugging Face names. Transformer Engine fuses the norms into the next linear
   (``self_attention.linear_qkv.layer_norm_weight``); the local spec keeps them separate
   (``input_layernorm.weight``). Both spellings are understood.
2. *Full layout* (the TP=1 tensor) from the Hugging Face tensors and back:
   - QKV: megatron interleaves per query group ``[ng, (np/ng + 2) * hn, H]`` =
     ``[q heads of group g; k_g; v_g]`` for each group; HF keeps q, k, v apart.
   - gate/up: megatron's ``linear_fc1`` is ``[gate; up]`` (2*F rows).
   - vocabulary: megatron's embedding/output rows are padded with zeros to
     ``padded_vocab_size``; HF has ``vocab_size`` rows.
3. *TP shards* of the full layout: rows (column-parallel), columns (row-parallel) or replicated.
   The SwiGLU ``linear_fc1`` shard of rank r is ``[gate_r; up_r]``, not a plain row chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from megatron_spark.model.config import ModelArch

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# Megatron per-layer suffix -> (kind, HF per-layer suffixes, TP split dim or None).
_LAYER_RULES: dict[str, tuple[str, tuple[str, ...], int | None]] = {
    "input_layernorm.weight": ("copy", ("input_layernorm.weight",), None),
    "self_attention.linear_qkv.layer_norm_weight": ("copy", ("input_layernorm.weight",), None),
    "self_attention.linear_qkv.weight": (
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        0,
    ),
    "self_attention.linear_qkv.bias": (
        "qkv",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
        0,
    ),
    "self_attention.linear_proj.weight": ("copy", ("self_attn.o_proj.weight",), 1),
    "pre_mlp_layernorm.weight": ("copy", ("post_attention_layernorm.weight",), None),
    "mlp.linear_fc1.layer_norm_weight": ("copy", ("post_attention_layernorm.weight",), None),
    "mlp.linear_fc1.weight": ("gate_up", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), 0),
    "mlp.linear_fc2.weight": ("copy", ("mlp.down_proj.weight",), 1),
}
_TOP_RULES: dict[str, tuple[str, tuple[str, ...], int | None]] = {
    "embedding.word_embeddings.weight": ("vocab", ("model.embed_tokens.weight",), 0),
    "decoder.final_layernorm.weight": ("copy", ("model.norm.weight",), None),
    "output_layer.weight": ("vocab", ("lm_head.weight",), 0),
}


@dataclass(frozen=True)
class Rule:
    """How one Megatron parameter (global layer index) relates to its HF tensors."""

    megatron_name: str
    kind: str  # copy | qkv | gate_up | vocab
    hf_names: tuple[str, ...]
    tp_dim: int | None


def rule_for(megatron_name: str) -> Rule:
    """The rule for a Megatron parameter name whose layer index is already global."""
    if megatron_name in _TOP_RULES:
        kind, hf, dim = _TOP_RULES[megatron_name]
        return Rule(megatron_name, kind, hf, dim)
    m = _LAYER_RE.match(megatron_name)
    if m and m.group(2) in _LAYER_RULES:
        kind, hf, dim = _LAYER_RULES[m.group(2)]
        prefix = f"model.layers.{m.group(1)}."
        return Rule(megatron_name, kind, tuple(prefix + h for h in hf), dim)
    raise KeyError(f"no Hugging Face mapping for Megatron parameter '{megatron_name}'")


def globalize(local_name: str, layer_offset: int) -> str:
    """Stage-local ``decoder.layers.i`` -> global ``decoder.layers.(offset + i)``."""
    m = _LAYER_RE.match(local_name)
    if not m:
        return local_name
    return f"decoder.layers.{int(m.group(1)) + layer_offset}.{m.group(2)}"


def expected_hf_names(arch: ModelArch) -> list[str]:
    """Every tensor a Hugging Face checkpoint of ``arch`` must hold (tied lm_head excluded)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    suffixes = [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]
    if arch.qkv_bias:
        suffixes += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    for i in range(arch.num_layers):
        names += [f"model.layers.{i}.{s}" for s in suffixes]
    return names


def expected_hf_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """Shape of every expected Hugging Face tensor, for validating a checkpoint before use."""
    h, f, hd = arch.hidden_size, arch.ffn_hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * hd, arch.num_query_groups * hd
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
    }
    shapes = {}
    for name in expected_hf_names(arch):
        if name.startswith("model.layers."):
            shapes[name] = per_layer[name.split(".", 3)[3]]
        elif name == "model.norm.weight":
            shapes[name] = (h,)
        else:
            shapes[name] = (arch.vocab_size, h)
    return shapes


# ----------------------------------------------------------------------------- full layout


def hf_to_full(arch: ModelArch, rule: Rule, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The TP=1 Megatron tensor for ``rule``, built from HF tensors fetched by ``get``."""
    if rule.kind == "copy":
        return get(rule.hf_names[0])
    if rule.kind == "vocab":
        src = get(rule.hf_names[0])  # [V, H] -> [V_padded, H], zero rows appended
        out = src.new_zeros((arch.padded_vocab_size,) + tuple(src.shape[1:]))
        out[: src.shape[0]] = src
        return out
    if rule.kind == "gate_up":
        return torch.cat([get(rule.hf_names[0]), get(rule.hf_names[1])], dim=0)
    if rule.kind == "qkv":
        ng, hd = arch.num_query_groups, arch.head_dim
        q, k, v = (get(n) for n in rule.hf_names)
        tail = tuple(q.shape[1:])  # (H,) for weights, () for biases
        per_group = [q.reshape((ng, -1, hd) + tail).flatten(1, 2)]  # [ng, qpg*hd, ...]
        per_group += [t.reshape((ng, hd) + tail) for t in (k, v)]
        return torch.cat(per_group, dim=1).reshape((-1,) + tail)
    raise AssertionError(rule.kind)


def full_to_hf(arch: ModelArch, rule: Rule, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Inverse of :func:`hf_to_full`: HF-named tensors (views where possible) from a full tensor."""
    if rule.kind == "copy":
        return [(rule.hf_names[0], full)]
    if rule.kind == "vocab":
        return [(rule.hf_names[0], full[: arch.vocab_size])]
    if rule.kind == "gate_up":
        gate, up = full.chunk(2, dim=0)
        return [(rule.hf_names[0], gate), (rule.hf_names[1], up)]
    if rule.kind == "qkv":
        ng, hd = arch.num_query_groups, arch.head_dim
        qpg = arch.num_attention_heads // ng
        tail = tuple(full.shape[1:])
        grouped = full.reshape((ng, (qpg + 2) * hd) + tail)
        q, k, v = grouped.split([qpg * hd, hd, hd], dim=1)
        return [(name, t.reshape((-1,) + tail)) for name, t in zip(rule.hf_names, (q, k, v))]
    raise AssertionError(rule.kind)


# ----------------------------------------------------------------------------- TP shards


def shard(rule: Rule, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's slice of the full layout (a view)."""
    if rule.tp_dim is None or tp_size == 1:
        return full
    if rule.kind == "gate_up":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=rule.tp_dim)[tp_rank]


def unshard(rule: Rule, shards: list[torch.Tensor]) -> torch.Tensor:
    """Reassemble the full layout from every TP rank's shard (in rank order)."""
    if rule.tp_dim is None or len(shards) == 1:
        return shards[0]
    if rule.kind == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=rule.tp_dim)


# ----------------------------------------------------------------------------- live models


def _named_tensors(model, use_grad: bool) -> Iterator[tuple[str, torch.Tensor]]:
    for name, param in model.named_parameters():
        if use_grad:
            grad = getattr(param, "main_grad", None)
            grad = param.grad if grad is None else grad
            yield name, (torch.zeros_like(param) if grad is None else grad)
        else:
            yield name, param


def _owns_storage(t: torch.Tensor) -> bool:
    """True when ``t`` is the whole of its (contiguous) storage, i.e. not a view into another tensor."""
    return t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def is_tied_output_copy(arch: ModelArch, megatron_name: str) -> bool:
    """The last stage's output layer is a copy of the embedding when embeddings are tied."""
    return arch.tie_word_embeddings and megatron_name == "output_layer.weight"


def load_hf_into_model(
    model, arch: ModelArch, get: Callable[[str], torch.Tensor], tp_rank: int, tp_size: int
) -> None:
    """Fill this rank's parameters from HF tensors (each rank takes its own TP shard)."""
    from megatron_spark.model.builder import layer_offset

    offset = layer_offset(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            gname = globalize(name, offset)
            rule = rule_for(gname)
            if is_tied_output_copy(arch, gname):
                rule = rule_for("embedding.word_embeddings.weight")
            full = hf_to_full(arch, rule, get)
            local = shard(rule, full, tp_rank, tp_size)
            if local.shape != param.shape:
                raise ValueError(f"{gname}: shard {tuple(local.shape)} != {tuple(param.shape)}")
            if (
                local is full
                and _owns_storage(full)
                and full.dtype == param.dtype
                and full.device == param.device
            ):
                # A freshly read/assembled tensor of exactly the parameter's shape: adopt its
                # storage instead of copying (before any DDP buffer exists, so nothing aliases it).
                param.data = full
            else:
                param.copy_(local)


def export_hf_tensors(
    model, arch: ModelArch, tp_group=None, *, grads: bool = False, include_tied_copy: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream this pipeline stage's parameters (or gradients) as full HF-named tensors.

    Every TP rank of the stage must iterate (the TP all-gather is collective); every rank gets the
    full tensors. The last stage's tied output-layer copy is skipped unless ``include_tied_copy``
    (it is then yielded as ``lm_head.weight``; gradients of tied embeddings are the sum of both).
    """
    import torch.distributed as dist

    from megatron_spark.model.builder import layer_offset

    tp_size = dist.get_world_size(tp_group) if tp_group is not None else 1
    offset = layer_offset(model)
    for name, tensor in _named_tensors(model, grads):
        gname = globalize(name, offset)
        if is_tied_output_copy(arch, gname) and not include_tied_copy:
            continue
        rule = rule_for(gname)
        if tp_size > 1 and rule.tp_dim is not None:
            shards = [torch.empty_like(tensor) for _ in range(tp_size)]
            # Gather every TP rank's shard of this parameter (TP group).
            dist.all_gather(shards, tensor.detach().contiguous(), group=tp_group)
            full = unshard(rule, shards)
        else:
            full = tensor.detach()
        yield from full_to_hf(arch, rule, full)
