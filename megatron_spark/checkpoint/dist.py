"""Megatron distributed checkpoints of the model, loadable at any TP/PP.

Layout of a checkpoint directory ``CKPT``::

    CKPT/megatron_spark.json   what the network is (HF config), dtype, padded vocab, format version
    CKPT/model/                megatron-core dist checkpoint (torch_dist), resharded on load
    CKPT/hf/                   config.json, generation_config.json, tokenizer files (if any)

The dist checkpoint is written from a model's ``sharded_state_dict()``, so megatron owns the
global-shape metadata and ``dist_checkpointing.load`` reshards to whatever TP/PP loads it. The
vocabulary padding does not depend on TP (see ``VOCAB_PAD_MULTIPLE``), so shapes always agree.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_spark import platform
from megatron_spark.errors import UserError
from megatron_spark.model.config import ModelArch, arch_from_hf_config

META_NAME = "megatron_spark.json"
FORMAT_VERSION = 1
DIST_CHECKPOINT_DEPRECATIONS = ("Please use DTensor instead", "`load_state_dict` is deprecated")
"""torch's FutureWarnings about the APIs megatron-core's torch_dist format still uses
(ShardedTensor, ``torch.distributed.checkpoint.load_state_dict``): megatron's to fix, not ours."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Contents of ``megatron_spark.json``."""

    hf_config: dict[str, Any]
    """The network's Hugging Face config."""
    params_dtype: str
    """dtype the parameters were saved in."""
    padded_vocab_size: int
    """Rows of the embedding/output layer in the dist checkpoint."""

    def arch(self, source: str) -> ModelArch:
        arch = arch_from_hf_config(self.hf_config, source=source)
        if arch.padded_vocab_size != self.padded_vocab_size:
            raise UserError(
                f"{source}: padded_vocab_size {self.padded_vocab_size} != {arch.padded_vocab_size}"
            )
        return arch


def is_megatron_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_NAME).is_file()


def write_meta(ckpt_dir: Path, meta: CheckpointMeta) -> None:
    doc = {"format_version": FORMAT_VERSION, **meta.__dict__}
    (ckpt_dir / META_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_meta(ckpt_dir: str | Path) -> CheckpointMeta:
    path = Path(ckpt_dir) / META_NAME
    if not path.is_file():
        raise UserError(f"{ckpt_dir}: not a megatron_spark checkpoint (no {META_NAME})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        version = doc.pop("format_version")
        meta = CheckpointMeta(**doc)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable checkpoint metadata ({e})") from None
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {version} unsupported (expected {FORMAT_VERSION})")
    if not (Path(ckpt_dir) / "model").is_dir():
        raise UserError(f"{ckpt_dir}: missing model/ (incomplete checkpoint)")
    verify_model_dir(Path(ckpt_dir) / "model")
    return meta


_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # every class of DCP's metadata module
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}
"""What a dist checkpoint's ``.metadata`` pickle may construct (and torch dtypes): DCP reads the
file with plain ``pickle.load``, which would run any function a crafted file names."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        import torch

        allowed = _METADATA_GLOBALS.get(module, set())
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module in _METADATA_GLOBALS and (allowed is None or name in allowed or is_dtype):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it would call {module}.{name}, which checkpoint metadata never holds")


def verify_model_dir(model_dir: str | Path) -> None:
    """Refuse a damaged or crafted dist checkpoint before megatron opens it: ``.metadata`` must
    unpickle with DCP's own classes only, and every ``.distcp`` file must hold the bytes the
    metadata says it holds (a truncated write or copy is caught here, not deep inside torch)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / ".metadata"
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: missing (incomplete checkpoint)")
    try:
        with meta_path.open("rb") as f:
            meta = _MetadataUnpickler(f).load()
        ends: dict[str, int] = {}
        for info in meta.storage_data.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    except pickle.UnpicklingError as e:
        raise UserError(f"{meta_path}: refused ({e})") from None
    except Exception as e:  # noqa: BLE001 (a damaged pickle raises many kinds)
        raise UserError(f"{meta_path}: damaged ({type(e).__name__}: {e})") from None
    for name, end in sorted(ends.items()):
        path = model_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"{meta_path}: names {name!r}, outside the checkpoint directory")
        if not path.is_file():
            raise UserError(f"{path}: missing (incomplete checkpoint)")
        size = path.stat().st_size
        if size < end:
            raise UserError(f"{path}: truncated ({size} bytes, the metadata needs {end})")


@platform.silenced(*DIST_CHECKPOINT_DEPRECATIONS)
def save_model(model, model_dir: Path) -> None:
    """Write ``model``'s sharded state (all ranks call this collectively)."""
    from megatron.core import dist_checkpointing

    from megatron_spark.mcore_compat import sync_save_strategy

    model_dir.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), str(model_dir), sharded_strategy=sync_save_strategy())


@platform.silenced(*DIST_CHECKPOINT_DEPRECATIONS)
def load_model(model, model_dir: Path) -> None:
    """Fill ``model`` (any TP/PP) in place from a dist checkpoint written at any TP/PP.

    megatron loads into the tensors that the sharded state dict carries, which are the parameters
    themselves. The one exception is a ShardedTensorFactory (SwiGLU's ``linear_fc1``): after
    loading its gate/up views in place, megatron concatenates them into a new tensor, which
    ``load_state_dict`` would then copy back; for all layers at once that is about half a model of
    extra memory. Applying the factories here first keeps the views and drops the merge.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.mapping import apply_factories

    verify_model_dir(model_dir)
    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    try:
        state = dist_checkpointing.load(sharded, str(model_dir))
    except CheckpointingException as e:
        raise UserError(f"{model_dir}: cannot load dist checkpoint ({e})") from None
    # Non-tensor state (Transformer Engine's FP8 ``_extra_state``) is returned, not loaded in place.
    extra = {k: v for k, v in state.items() if k.endswith("_extra_state")}
    if extra:
        model.load_state_dict(extra, strict=False)
