"""Instruments for `vqrt bench`: summaries of repeated timings, peak host and device memory,
the machine's read bandwidth, and a progress bar. numpy only; never torch.
"""
from __future__ import annotations

import ctypes
import re
import resource
import sys
import threading
import time
from typing import Dict, Optional, Sequence, TextIO

import numpy as np

def summarize(samples: Sequence[float]) -> Dict[str, float]:
    """Repeats of one figure -> {"median", "min", "max", "n"}: the median is the figure, min and
    max its spread."""
    values = np.asarray(samples, dtype=np.float64)
    assert values.size > 0, "nothing to summarize"
    return {"median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max()), "n": int(values.size)}


def latency_percentiles(samples: Sequence[float]) -> Dict[str, float]:
    """Per-token latencies pooled over repeats -> {"p50", "p90", "p99", "n"}."""
    values = np.asarray(samples, dtype=np.float64)
    assert values.size > 0, "no latencies"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "n": int(values.size)}


def read_bandwidth(threads: int, mebibytes: int = 256, repeats: int = 7) -> Dict[str, object]:
    """The machine's read bandwidth: bytes per second that `threads` parallel numpy sums read
    -> {"what", "threads", "bytes_per_s": summarize() of the passes}. The buffer is far larger
    than the caches, so every pass reads DRAM."""
    data = np.ones(mebibytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, max(threads, 1))
    rates = []
    for _ in range(repeats + 1):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rates.append(data.nbytes / (time.perf_counter() - start))
    return {"what": f"read: one numpy float32 sum per thread over disjoint slices of a "
                    f"{mebibytes} MiB buffer, in parallel (numpy releases the GIL); median of "
                    f"{repeats} passes after one warm-up",
            "threads": len(parts), "bytes_per_s": summarize(rates[1:])}


class HostMemoryPeak:
    """Peak resident memory of this process over a stretch of code.

    On Linux, VmHWM of /proc/self/status after writing 5 to /proc/self/clear_refs (which resets
    it to the current resident size). Elsewhere ru_maxrss, the peak since the process started:
    it only grows, so later figures include earlier ones (`resettable` says which).
    """

    def __init__(self):
        self.resettable = self._clear()

    @staticmethod
    def _clear() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._clear()

    def peak_bytes(self) -> int:
        if self.resettable:
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


class DeviceMemoryPeak:
    """Peak used memory of GPU `index` while a stretch of code runs: NVML's figure for the whole
    device (other processes included), polled every `interval_s` on a thread. open() returns
    None where NVML is missing (no NVIDIA driver)."""

    def __init__(self, nvml: ctypes.CDLL, handle: ctypes.c_void_p, interval_s: float):
        self._nvml, self._handle, self._interval = nvml, handle, interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def open(cls, index: int = 0, interval_s: float = 0.005) -> Optional["DeviceMemoryPeak"]:
        try:
            nvml = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
        handle = ctypes.c_void_p()
        if nvml.nvmlInit_v2() != 0 or nvml.nvmlDeviceGetHandleByIndex_v2(
                index, ctypes.byref(handle)) != 0:
            return None
        return cls(nvml, handle, interval_s)

    def used_bytes(self) -> int:
        memory = _NvmlMemory()
        if self._nvml.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(memory)) != 0:
            return 0
        return int(memory.used)

    def start(self) -> None:
        self._peak = self.used_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self.used_bytes())

    def stop(self) -> int:
        """Ends the stretch -> its peak used bytes."""
        self._stop.set()
        self._thread.join()
        return max(self._peak, self.used_bytes())


class ProgressBar:
    """One line on a terminal (redrawn), nothing when the stream is not one (logs, tests)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self.total, self.done = total, 0
        self._stream, self._width = stream, width
        self._live = stream.isatty()
        self._started = time.perf_counter()

    def advance(self, label: str) -> None:
        self.done += 1
        if not self._live:
            return
        filled = self._width * self.done // self.total
        elapsed = time.perf_counter() - self._started
        self._stream.write(f"\r[{'#' * filled}{'.' * (self._width - filled)}] "
                           f"{self.done}/{self.total} {elapsed:5.0f} s  {label[:40]:40s}")
        self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\r" + " " * (self._width + 60) + "\r")
            self._stream.flush()
