"""This CPU's feature flags, as /proc/cpuinfo lists them (empty where there is none)."""
from pathlib import Path
from typing import Set


def cpu_flags() -> Set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith("flags")), []))
