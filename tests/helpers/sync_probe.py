"""``HostReadProbe``: a CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``, so that a machine
without a GPU can check that a training step never waits for the device.

What counts as a read. ``int(t)``, ``float(t)``, ``t.item()``, ``bool(t)`` and ``torch.equal`` reach the
dispatcher as ``aten._local_scalar_dense``, ``aten.is_nonzero`` and ``aten.equal``; the probe (a
``TorchDispatchMode``) watches those ops. ``Tensor.tolist()``, ``.numpy()`` and ``.cpu()`` read memory
without dispatching anything, so the probe wraps those three methods while it is active.

Which tensors count. Here every tensor is a CPU tensor, so the probe tells device values from host values
by where they come from, the way a GPU run would place them:

* host values: tensors the step computes from nothing but factory calls (``torch.randint(...,
  generator=g)``, ``torch.arange``, ``torch.tensor(data)``) and from other host values. The library draws
  every random choice on a CPU generator on purpose (a seed gives the same draws on every device), so on a
  GPU these tensors are CPU tensors and reading one is a memory read, not a sync;
* device values: everything else, i.e. every tensor that existed before the probe started (the batch,
  the labels, the model's weights) and every tensor computed from at least one device value. On a GPU
  these live on the GPU, and reading one waits for the stream.

Taint follows storage, so views and in-place writes carry it: writing a device value into a host buffer
makes the buffer a device value. A read of a device value is recorded in ``reads`` (op, shape, and the
innermost frames of the caller), or raised at once with ``raise_on_read=True``.

Blind spots, left to the GPU test under ``set_sync_debug_mode("error")``: blocking host-to-device copies
(a CPU-to-CPU ``.to()`` dispatches nothing), ``.to("cpu")`` of a device value, and a factory that would
make its tensor on the accelerator (``torch.zeros(..., device=x.device)`` is a host value here).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["HostRead", "HostReadError", "HostReadProbe"]

_aten = torch.ops.aten
READ_OPS = (_aten._local_scalar_dense, _aten.is_nonzero, _aten.equal)
# Python-level reads that never reach the dispatcher.
READ_METHODS = ("tolist", "numpy", "cpu")
# Ops whose tensor input is a constant torch.tensor(data) just built from Python data.
FRESH_OPS = (_aten.lift_fresh, _aten.lift_fresh_copy)
_HERE = Path(__file__).resolve()


class HostReadError(AssertionError):
    """A device value was read back on the host."""


@dataclass(frozen=True)
class HostRead:
    op: str  # "aten._local_scalar_dense" or "Tensor.tolist", ...
    shape: tuple[int, ...]
    where: tuple[str, ...]  # the innermost caller frames outside torch and this file, "file:line in function"

    def __str__(self) -> str:
        return f"{self.op} of a {self.shape} device value at {' <- '.join(self.where) or '?'}"


def _caller_frames(depth: int = 4) -> tuple[str, ...]:
    frames = []
    for f in reversed(traceback.extract_stack()):
        path = Path(f.filename)
        if path == _HERE or "torch" in path.parts:
            continue
        frames.append(f"{path.name}:{f.lineno} in {f.name}")
        if len(frames) == depth:
            break
    return tuple(frames)


def _storage_key(t: Tensor) -> int | None:
    if t.numel() == 0:
        return None  # nothing to read; empty tensors may all share address 0
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        return None


class HostReadProbe(TorchDispatchMode):
    """Records (or raises on) every host read of a device value made while it is active::

    with HostReadProbe() as probe:
        train_step()
    assert not probe.reads, "\\n".join(map(str, probe.reads))
    """

    def __init__(self, *, raise_on_read: bool = False) -> None:
        super().__init__()
        self.raise_on_read = raise_on_read
        self.reads: list[HostRead] = []
        # Storage address -> a tensor holding that storage: holding it keeps the address from being reused
        # by a later allocation while the probe is active, so an address never changes sides silently.
        self._host: dict[int, Tensor] = {}
        self._saved: dict[str, Any] = {}

    # -- taint ------------------------------------------------------------------------------------------
    def is_device_value(self, t: Tensor) -> bool:
        key = _storage_key(t)
        return key is not None and key not in self._host

    def declare_host(self, *tensors: Tensor) -> None:
        """Tensors made before the probe started that a GPU run keeps in host memory (e.g. the step counts
        of a non-capturable ``torch.optim.Adam``, which it creates as CPU tensors on any device)."""
        self._mark(list(tensors), host=True)

    def _mark(self, outputs: Any, host: bool) -> None:
        for t in tree_leaves(outputs):
            if isinstance(t, Tensor) and (key := _storage_key(t)) is not None:
                if host:
                    self._host[key] = t
                else:
                    self._host.pop(key, None)

    def _record(self, op: str, t: Tensor) -> None:
        read = HostRead(op, tuple(t.shape), _caller_frames())
        if self.raise_on_read:
            raise HostReadError(f"host read of a device value: {read}")
        self.reads.append(read)

    # -- the dispatcher's reads ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if func.overloadpacket in READ_OPS:
            for t in tensors:
                if self.is_device_value(t):
                    self._record(str(func.overloadpacket), t)
                    break
        out = func(*args, **kwargs)
        host = func.overloadpacket in FRESH_OPS or not any(self.is_device_value(t) for t in tensors)
        self._mark(out, host)
        return out

    # -- reads that bypass the dispatcher -------------------------------------------------------------------
    def __enter__(self) -> HostReadProbe:
        for name in READ_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from TensorBase
            setattr(torch.Tensor, name, self._watching(name, getattr(torch.Tensor, name)))
        try:
            return super().__enter__()
        except BaseException:
            self._restore()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._restore()

    def _restore(self) -> None:
        for name, own in self._saved.items():
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)
        self._saved.clear()
        self._host.clear()

    def _watching(self, name: str, original: Any) -> Any:
        probe = self

        def read(t: Tensor, *args: Any, **kwargs: Any) -> Any:
            if probe.is_device_value(t):
                probe._record(f"Tensor.{name}", t)
            return original(t, *args, **kwargs)

        read.__name__ = name
        return read
