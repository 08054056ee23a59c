"""platform.tune_cpu_allocator: freed activation-sized buffers stay in the process (glibc)."""

import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter per case: glibc's thresholds are process-wide and cannot be read back, so
# the check is behavioural: bytes held in mmapped chunks (mallinfo2().hblkhd) while a 16 MiB
# tensor is alive. mmapped means the kernel maps (and zero-fills) it anew on every allocation.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from megatron_spark import platform

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    tuned = platform.tune_cpu_allocator() if sys.argv[1] == "tuned" else False
    before = libc.mallinfo2().hblkhd
    x = torch.ones(4 << 20)  # 16 MiB
    during = libc.mallinfo2().hblkhd
    print(int(tuned), during - before)
    """
)


def probe(mode: str, env: dict | None = None) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_keeps_large_buffers_on_the_heap():
    tuned, mapped = probe("tuned")
    assert tuned
    assert mapped == 0  # served from the heap
    untouched, mapped_default = probe("default")
    assert not untouched
    assert mapped_default >= 16 << 20  # glibc's default maps it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_opt_out_and_user_thresholds_are_respected():
    import os

    for extra in ({"MEGATRON_SPARK_CPU_MALLOC": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}):
        tuned, mapped = probe("tuned", {**os.environ, **extra})
        assert not tuned
        assert mapped >= 16 << 20
