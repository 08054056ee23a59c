"""Training checkpoints: written atomically, resumed exactly.

``RUN_DIR/checkpoints/step_000040/`` is a megatron_spark checkpoint (``megatron_spark.json``,
``model/``, ``hf/``: loadable by ``convert megatron-to-hf``, ``logprobs`` and ``model.init``) plus
``train_state/rank_NNNNN.{json,safetensors}`` per rank (optimizer, RNG states, data position, step,
counters; no pickle: :mod:`megatron_spark.checkpoint.safe_state`) and ``train_state/meta.json``
(the layout it was written with).

Atomicity: everything is written under ``.step_000040.tmp/``; after every rank has finished, rank 0
renames it to ``step_000040/`` and then replaces the ``latest`` file (write + ``os.replace``). A
process killed at any point leaves either the previous checkpoint as ``latest`` or the new one,
never a half-written directory that counts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_spark.checkpoint import dist as mckpt
from megatron_spark.checkpoint import safe_state
from megatron_spark.errors import UserError
from megatron_spark.model.config import ModelArch

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


def _state_stem(ckpt: Path, rank: int) -> Path:
    return Path(ckpt) / "train_state" / f"rank_{rank:05d}"


def _read_state(ckpt: Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s train state (None if the checkpoint has none), never unpickling code."""
    stem = _state_stem(ckpt, rank)
    legacy = stem.with_name(stem.name + ".pt")
    if legacy.is_file() and not safe_state.paths(stem)[0].exists():
        state = safe_state.load_legacy(legacy)  # written before the JSON + safetensors format
    elif safe_state.paths(stem)[0].exists() or safe_state.paths(stem)[1].exists():
        state = safe_state.load(stem)
    else:
        return None
    if not isinstance(state, dict):
        raise UserError(f"{stem}: not a train state (a {type(state).__name__})")
    return state


def save(
    root: Path,
    step: int,
    model,
    arch: ModelArch,
    params_dtype: str,
    train_state: dict[str, Any],
    layout: dict[str, int],
    keep: int,
    tokenizer_files: list[Path] = (),
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` (collective over all ranks)."""
    rank = dist.get_rank()
    final = root / _step_name(step)
    tmp = root / f".{_step_name(step)}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "train_state").mkdir(parents=True)
    dist.barrier()
    mckpt.save_model(model, tmp / "model")
    safe_state.save({**train_state, "rng": rng_state()}, _state_stem(tmp, rank))
    if rank == 0:
        mckpt.write_meta(tmp, mckpt.CheckpointMeta(arch.hf_config, params_dtype, arch.padded_vocab_size))
        (tmp / "hf").mkdir()
        (tmp / "hf" / "config.json").write_text(json.dumps(arch.hf_config, indent=2, sort_keys=True) + "\n")
        for f in tokenizer_files:
            shutil.copy2(f, tmp / "hf" / Path(f).name)
        meta = {"step": step, "world_size": dist.get_world_size(), **layout, **(extra_meta or {})}
        (tmp / "train_state" / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    dist.barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST)
        steps = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in steps[: max(0, len(steps) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


LAYOUT_DEFAULTS = {"distributed_optimizer": 0}
"""Layout keys added after the first checkpoints were written, with the value those had."""


def load_train_state(ckpt: Path, layout: dict[str, int]) -> dict[str, Any]:
    """This rank's train state; the run must use the layout the checkpoint was written with."""
    meta_path = ckpt / "train_state" / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{ckpt}: not a training checkpoint (no train_state/meta.json)")
    meta = {**LAYOUT_DEFAULTS, **_read_json(meta_path)}
    want = {"world_size": dist.get_world_size(), **layout}
    for key, value in want.items():
        if meta.get(key) != value:
            raise UserError(
                f"{ckpt}: written with {key}={meta.get(key)}, this run has {key}={value}; resume with "
                f"the same layout (or start a new run with model.init={ckpt})"
            )
    state = _read_state(ckpt, dist.get_rank())
    if state is None:
        raise UserError(f"{_state_stem(ckpt, dist.get_rank())}: missing (incomplete checkpoint)")
    return state


def read_meta(ckpt: Path) -> dict[str, Any]:
    """A training checkpoint's ``train_state/meta.json`` ({} for other checkpoints)."""
    path = Path(ckpt) / "train_state" / "meta.json"
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: damaged (expected a JSON object)")
    return doc


def read_rank0_state(ckpt: Path) -> dict[str, Any] | None:
    """Rank 0's train state of a training checkpoint (None for other checkpoints)."""
    return _read_state(Path(ckpt), 0)
