"""A run's output folder: ``train.log`` (one line per epoch), ``metrics.json``, ``checkpoint.pt`` and the
pictures. Only the main process writes; every write of a result file is atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmix_fast.training.checkpoint import atomic_write_json, save_checkpoint

__all__ = ["CHECKPOINT", "CURVES", "METRICS", "OUTPUT_FILES", "RELIABILITY", "RunDir"]

CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
METRICS = "metrics.json"
CURVES = "curves.png"
RELIABILITY = "reliability.png"
SAMPLE_PICTURE = "mixed_samples.png"
OUTPUT_FILES = (LOG, METRICS, CHECKPOINT, CURVES, RELIABILITY, SAMPLE_PICTURE)


class RunDir:
    """The files of one run in ``path``; on a process that is not the main one every write is a no-op."""

    def __init__(self, path: str | Path, *, is_main: bool) -> None:
        self.path = Path(path)
        self.is_main = is_main

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def sample_picture(self) -> Path:
        return self.path / SAMPLE_PICTURE

    def clear(self) -> None:
        """A fresh run in a folder that held one (--overwrite): its log and outputs go."""
        if self.is_main:
            for name in OUTPUT_FILES:
                (self.path / name).unlink(missing_ok=True)

    def log(self, message: str) -> None:
        """Print ``message`` and append it to the log."""
        if not self.is_main:
            return
        print(message, flush=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOG, "a") as f:
            f.write(message + "\n")

    def write_metrics(self, payload: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.path / METRICS, payload)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint, state)
