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

import errno
import json
import os
import random
import shutil
import threading
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


def step_name(step: int) -> str:
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
    """Write checkpoint ``step`` under ``root`` (collective over all ranks).

    A write that fails on any rank (a full disk, a quota) fails the save on every rank, with that
    rank's own error: the partial ``.step_N.tmp`` is removed and ``latest`` still names the
    previous checkpoint. The ``keep`` newest checkpoints stay, and never fewer than this one.
    """
    rank = dist.get_rank()
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp"

    def prepare() -> None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "train_state").mkdir(parents=True)

    def write() -> None:
        mckpt.save_model(model, tmp / "model")  # collective: every rank reaches it or none
        safe_state.save({**train_state, "rng": rng_state()}, _state_stem(tmp, rank))
        if rank == 0:
            mckpt.write_meta(tmp, mckpt.CheckpointMeta(arch.hf_config, params_dtype, arch.padded_vocab_size))
            (tmp / "hf").mkdir()
            (tmp / "hf" / "config.json").write_text(
                json.dumps(arch.hf_config, indent=2, sort_keys=True) + "\n"
            )
            for f in tokenizer_files:
                shutil.copy2(f, tmp / "hf" / Path(f).name)
            meta = {"step": step, "world_size": dist.get_world_size(), **layout, **(extra_meta or {})}
            (tmp / "train_state" / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    def commit() -> None:
        if rank != 0:
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST)
        prune(root, final, keep)

    for stage in (prepare, write, commit):
        _together(stage, lambda: shutil.rmtree(tmp, ignore_errors=True) if rank == 0 else None, step, tmp)
    return final


def _together(stage, cleanup, step: int, where: Path) -> None:
    """Run ``stage`` on every rank; if it raised on any, run ``cleanup`` and raise on all.

    The first failing rank's error is the one reported (a full disk names the file and ENOSPC),
    as a :class:`UserError` when it is the environment's (an ``OSError``), else re-raised as is
    on that rank (a bug keeps its traceback) and summarised on the others."""
    error: BaseException | None = None
    thread_errors: list[BaseException] = []
    previous_hook = threading.excepthook
    # torch's checkpoint writer threads die on a full disk with their own traceback and leave
    # the main thread a vaguer error ("unexpected pos ..."): keep theirs, print none.
    threading.excepthook = lambda args: thread_errors.append(args.exc_value)
    try:
        stage()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 (torch's CheckpointException is a BaseException)
        error = e
    finally:
        threading.excepthook = previous_hook
    cause = None
    if error is not None:
        cause = _os_error(error) or next(filter(None, map(_os_error, thread_errors)), None)
        if cause is None and _disk_full(where):
            # torch's zip writer reports a failed write as "unexpected pos N vs M", errno lost.
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    message = None
    if cause is not None:
        message = f"{cause.filename or where}: {cause.strerror or cause}"
    elif error is not None:
        message = f"{type(error).__name__}: {error}"
    messages = [message]
    if dist.get_world_size() > 1:
        messages = [None] * dist.get_world_size()
        dist.all_gather_object(messages, message)  # each rank's failure, if any, to every rank
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    cleanup()
    if error is not None and cause is None:
        raise error
    r, m = failed[0]
    where = f" (rank {r})" if dist.get_world_size() > 1 else ""
    raise UserError(
        f"{m}{where}: checkpoint step {step} not written; its partial directory was removed and "
        f"'latest' still names the previous checkpoint"
    ) from None


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left for this process."""
    for p in (path, *path.parents):
        if p.exists():
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize < 1 << 20
    return False


def _os_error(error: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``error`` (megatron and torch's checkpoint writers wrap it)."""
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        stack += [e.__cause__, e.__context__]
        # torch.distributed.checkpoint's CheckpointException: {rank: (exception, traceback)}
        failures = getattr(e, "failures", None)
        for v in [*(failures.values() if isinstance(failures, dict) else ()), *getattr(e, "args", ())]:
            v = v[0] if isinstance(v, tuple) and v else v
            if isinstance(v, BaseException):
                stack.append(v)
    return None


def step_of(path: Path) -> int | None:
    """N of a ``step_N`` directory name (None for any other name)."""
    name = Path(path).name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def prune(root: Path, final: Path, keep: int) -> None:
    """Delete checkpoints older than ``final`` beyond the ``keep`` newest; ``final`` stays."""
    older = sorted(
        (
            p
            for p in root.glob("step_*")
            if p.is_dir() and (n := step_of(p)) is not None and n < step_of(final)
        ),
        key=step_of,
    )
    for old in older[: max(0, len(older) - (max(1, keep) - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, if that directory exists (None otherwise)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if step_of(Path(name)) is None or Path(name).name != name:
        return None  # a pointer never leaves its directory
    path = root / name
    return path if path.is_dir() else None


def damage(ckpt: Path) -> str | None:
    """What is wrong with training checkpoint ``ckpt`` (None when it is intact): every file a
    resume reads is present and parses, and no dist-checkpoint file is shorter than its
    metadata says. Reads headers and metadata only, not the tensors."""
    try:
        mckpt.read_meta(ckpt)  # megatron_spark.json and model/ (.metadata, .distcp sizes)
        meta_path = ckpt / "train_state" / "meta.json"
        if not meta_path.is_file():
            return f"{meta_path}: missing"
        meta = _read_json(meta_path)
        world = meta.get("world_size")
        if not isinstance(world, int) or world < 1:
            return f"{meta_path}: damaged (world_size {world!r})"
        for rank in range(world):
            js, st = safe_state.paths(_state_stem(ckpt, rank))
            legacy = _state_stem(ckpt, rank).with_name(f"rank_{rank:05d}.pt")
            if legacy.is_file() and not js.exists():
                continue
            safe_state.check(_state_stem(ckpt, rank))
    except UserError as e:
        return str(e)
    return None


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint a resume starts from: the one ``latest`` names, or else the newest intact
    one before it; also one line per checkpoint skipped, saying why."""
    pointed = latest(root)
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and step_of(p) is not None), key=step_of)
    skipped = []
    if pointed is None:
        if steps:
            skipped.append(f"{root / LATEST}: missing or names no checkpoint directory")
        candidates = list(reversed(steps))
    else:
        candidates = [pointed] + [p for p in reversed(steps) if step_of(p) < step_of(pointed)]
    for path in candidates:
        reason = damage(path)
        if reason is None:
            return path, skipped
        skipped.append(f"skipped {path.name}: {reason}")
    return None, skipped


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


def judge_trained(path: str | Path) -> bool:
    """Whether the weights at ``path`` were written by a run that trained on judge prompts (a
    SPARK run or a judge warm start); False for anything that is not such a training checkpoint."""
    return Path(path).is_dir() and bool(read_meta(path).get("judge_trained", False))


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
