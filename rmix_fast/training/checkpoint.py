"""Checkpoints that survive a kill at any moment.

A checkpoint is written to a temporary file in the destination's folder, flushed to disk, then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows), and the folder entry is
synced. A reader therefore sees either the previous complete checkpoint or the new complete one, never
a partial file; a leftover ``*.tmp`` from a killed writer is ignored and overwritten by the next save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "load_checkpoint", "load_run", "save_checkpoint"]


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk (POSIX); Windows cannot open folders.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically."""
    return _atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # weights_only=False: the state holds RNG states and the run's config besides tensors; only load
        # checkpoints you wrote yourself.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"{path} is not an rmix-train checkpoint (expected a dict with 'model' and 'epoch')")
    return state


def load_run(path: str | os.PathLike[str], prog: str, file_name: str) -> tuple[Path, dict[str, Any]]:
    """A run's checkpoint from its folder (its ``file_name`` there) or the file itself: (file, state). A
    missing or unreadable one exits with ``prog: <reason>``, as a command-line tool should."""
    file = Path(path)
    if file.is_dir():
        file = file / file_name
    try:
        return file, load_checkpoint(file)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{prog}: {e}") from e
