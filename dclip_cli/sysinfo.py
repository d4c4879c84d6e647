"""What the machine is and how much memory a run took: device synchronisation, peak memory, CPU and device names,
and the CPU allocator setting of the CLI (re-exported by :mod:`dclip_cli.precision`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

#: CPU feature flags (``/proc/cpuinfo``) that mean native bfloat16 arithmetic: AVX512-BF16, AMX and Arm's BF16
CPU_BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags_have_bf16(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists a native bfloat16 feature (``flags`` on x86, ``Features`` on Arm)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work on ``device`` (a no-op on the CPU), so wall-clock timings are honest."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":  # pragma: no cover - no MPS on CI
        torch.mps.synchronize()


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident memory of this process in bytes (Linux ``VmRSS``), or ``None`` where unavailable."""
    kib = _read_status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window: CUDA allocator statistics, or the process's RSS high-water mark (Linux)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    with contextlib.suppress(OSError):
        with open(
            "/proc/self/clear_refs", "w", encoding="utf-8"
        ) as fh:  # "5" resets VmHWM to the current RSS
            fh.write("5")


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """Peak memory since :func:`reset_peak_memory`: CUDA ``max_memory_allocated``, or peak RSS (``VmHWM``) on CPU.

    The CPU figure is the whole process (Python, libraries, model), not only tensors; ``None`` where unavailable.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    kib = _read_status_kib("VmHWM")
    if kib is None:
        import resource

        kib = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if sys.platform == "darwin":  # pragma: no cover - bytes there
            kib //= 1024
    return kib * 1024


@contextlib.contextmanager
def track_peak_memory(device: torch.device | str) -> Iterator[dict[str, int | None]]:
    """Context that fills ``{"peak_bytes", "start_bytes"}`` for the enclosed block (see :func:`peak_memory_bytes`)."""
    dev = torch.device(device)
    synchronize(dev)
    result: dict[str, int | None] = {}
    result["start_bytes"] = (
        int(torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else current_rss_bytes()
    )
    reset_peak_memory(dev)
    try:
        yield result
    finally:
        synchronize(dev)
        result["peak_bytes"] = peak_memory_bytes(dev)


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` ``model name``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """Human name of ``device``: the GPU's name, or the CPU model with its core count and threads in use."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return str(torch.cuda.get_device_name(dev))
    if dev.type == "cpu":
        return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return dev.type


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS (Linux only).

    By default glibc serves each large tensor with its own ``mmap`` and unmaps it when freed, so every UNet call
    and every backward pass page-faults its activations in again (zero-filled by the kernel). On CPU fine-tuning
    this can cost more than the arithmetic. Raising the mmap and trim thresholds keeps the memory mapped and reuses
    it; the process's resident memory then stays at its peak until it exits, which suits a one-job CLI process.
    Call it once, early, before large allocations.

    Returns:
        Whether the setting was applied (``False`` on non-glibc systems).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    limit = ctypes.c_int(2**31 - 1)
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))
