"""Where and how a process runs: its device, autocast, and the versions a run records."""

from __future__ import annotations

import platform
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

import rmix_fast
from rmix_fast.training.distributed import DistEnv

__all__ = ["AMP_MODES", "amp_autocast", "default_device", "place_device", "versions"]

AMP_MODES = ("none", "bf16", "fp16")


def default_device(name: str | None) -> torch.device:
    """``name``, or cuda when it is available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def place_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device this process runs on: under torchrun, CUDA means this rank's local GPU."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"rmix-train: --device {device} asked for, but CUDA is not available")
        if env.active:
            device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def amp_autocast(amp: str, device: torch.device) -> Any:
    """The autocast context of ``--amp none|bf16|fp16`` on ``device``."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def versions() -> dict[str, str | None]:
    """rmix_fast, torch, triton and Python versions, and the git commit of the checkout (None outside one)."""
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "rmix_fast": rmix_fast.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit,
    }
