"""Where a number was measured: hardware (with the CPU model name), software versions, git commit.

Every record lipzoo writes (training runs, evaluations, benchmarks) takes its provenance from
here, so the same machine is always described the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from ._version import __version__

__all__ = ["git_commit", "cpu_model", "hardware", "fingerprint"]

MIB = 1 << 20


def git_commit() -> str | None:
    """The commit of the lipzoo checkout this code runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor or machine string."""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict:
    """The short record kept with every run: platform, CPU model, torch threads, torch, device (GPU name)."""
    info = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_model": cpu_model(),
            "cpu_threads": torch.get_num_threads(), "torch": str(torch.__version__), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def fingerprint(device: str = "cpu") -> dict:
    """:func:`hardware` plus core count, memory, Python/lipzoo/numpy/CUDA versions and the commit."""
    info = hardware(device)
    info.update({
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "lipzoo": __version__,
        "commit": git_commit(), "numpy": _version("numpy"), "cuda": torch.version.cuda,
    })
    try:
        with open("/proc/meminfo") as f:
            info["memory_total_mib"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu_memory_mib"] = props.total_memory // MIB
        info["cudnn"] = torch.backends.cudnn.version()
    return info
