"""Which backends run on which device, why the others do not, and what "auto" picks."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "triton", "cpp")
# The compiled CUDA kernel ranks cells by counting, like the Triton kernel: grids up to this size.
CPP_CUDA_MAX_GRID = 64
MIN_TRITON = (3, 6)


@dataclass(frozen=True)
class BackendInfo:
    """Whether ``name`` runs on a device; ``reason`` says how it runs or why it cannot; ``max_grid`` is the
    largest R-Mix grid p it takes there (None: any)."""

    name: str
    available: bool
    reason: str
    max_grid: int | None = None

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _find_triton_problem() -> str | None:
    """Why the Triton kernels cannot be imported at all, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'triton>=3.6')"
    import triton

    version = tuple(int(v) for v in triton.__version__.split(".")[:2] if v.isdigit())
    if version < MIN_TRITON:
        return f"triton {triton.__version__} is too old; rmix_fast needs triton >= 3.6"
    try:  # every op's kernels (importing decorates them), found by listing the package: no list to keep
        import rmix_fast.ops._triton as kernels

        for module in pkgutil.iter_modules(kernels.__path__):
            importlib.import_module(f"{kernels.__name__}.{module.name}")
    except Exception as exc:  # an import failure must be reported, not crash the package
        return f"importing the Triton kernels failed: {type(exc).__name__}: {exc}"
    return None


# Checked once at import: a constant that torch.compile can trace through.
TRITON_PROBLEM = _find_triton_problem()


def _triton_info(device: torch.device) -> BackendInfo:
    if TRITON_PROBLEM is not None:
        return BackendInfo("triton", False, TRITON_PROBLEM)
    from rmix_fast.ops._triton._launch import INTERPRETED

    if device.type == "cuda":
        if INTERPRETED:
            return BackendInfo("triton", False, "TRITON_INTERPRET=1 was set at import: kernels run on CPU tensors only")
        if not torch.cuda.is_available():
            return BackendInfo("triton", False, "torch.cuda.is_available() is False")
        return BackendInfo("triton", True, "compiled Triton kernels on the GPU")
    if device.type == "cpu":
        if INTERPRETED:
            return BackendInfo("triton", True, "Triton interpreter (TRITON_INTERPRET=1): exact but slow, for testing")
        return BackendInfo(
            "triton", False, "Triton runs on CPU tensors only under TRITON_INTERPRET=1, set before importing rmix_fast"
        )
    return BackendInfo("triton", False, f"no Triton kernels for device type '{device.type}'")


def available_backends(device: torch.device | str | None = None) -> dict[str, BackendInfo]:
    """Every backend with whether it runs on ``device`` (default: current CUDA device, else CPU) and why.

    >>> print(rmix_fast.available_backends("cpu")["triton"])  # doctest: +SKIP
    triton: unavailable (Triton runs on CPU tensors only under TRITON_INTERPRET=1, set before importing rmix_fast)
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    infos = {name: _backend_info(name, device) for name in BACKENDS}
    return {
        name: dataclasses.replace(info, max_grid=_max_grid(name, device)) if info.available else info
        for name, info in infos.items()
    }


def _cpp_info(device: torch.device) -> BackendInfo:
    from rmix_fast.ops._extension import EXTENSION_PROBLEM, HAS_CPU_KERNEL, HAS_CUDA_KERNEL

    if EXTENSION_PROBLEM is not None:
        return BackendInfo("cpp", False, EXTENSION_PROBLEM)
    if device.type == "cpu" and HAS_CPU_KERNEL:
        return BackendInfo("cpp", True, "compiled C++ kernels (csrc/cpu/), parallel over the CPU's threads")
    if device.type == "cuda":
        if not HAS_CUDA_KERNEL:
            return BackendInfo(
                "cpp", False, "the extension was built without its CUDA kernel (no CUDA toolkit or CPU-only torch)"
            )
        if not torch.cuda.is_available():
            return BackendInfo("cpp", False, "torch.cuda.is_available() is False")
        return BackendInfo("cpp", True, "compiled CUDA kernels (csrc/cuda/)")
    return BackendInfo("cpp", False, f"no compiled kernel for device type '{device.type}'")


def _backend_info(name: str, device: torch.device) -> BackendInfo:
    if name == "triton":
        return _triton_info(device)
    if name == "cpp":
        return _cpp_info(device)
    return BackendInfo("reference", True, "pure PyTorch, runs on any device")


def resolve_backend(backend: object, device: torch.device, grid: int | None) -> str:
    """The backend to run: ``backend`` itself if it can run here, or the fastest one for "auto".

    ``grid`` is R-Mix's p, which some kernels bound; None for the region blend, which has no bound.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return _auto_backend(device, grid)
    info = _backend_info(backend, device)
    if not info.available:
        raise ValueError(f"backend {backend!r} is unavailable on {device}: {info.reason}")
    limit = _max_grid(backend, device)
    if limit is not None and grid is not None and grid > limit:
        raise ValueError(
            f"backend {backend!r} on {device.type} supports grid <= {limit}, got grid={grid}; use 'reference'"
        )
    return backend


def _auto_backend(device: torch.device, grid: int | None) -> str:
    """CPU: the compiled kernels. CUDA: Triton; the CUDA kernels of "cpp" run only when asked for by name
    (``backend="cpp"``), and join "auto" only where bench/ measures them faster than Triton on a GPU. The
    Triton interpreter is for testing only: never picked. Falls back to the reference."""
    order = ("triton",) if device.type == "cuda" else ("cpp",)
    for name in order:
        limit = _max_grid(name, device)
        if _backend_info(name, device).available and (limit is None or grid is None or grid <= limit):
            return name
    return "reference"


def _max_grid(backend: str, device: torch.device) -> int | None:
    """The largest grid a backend supports on ``device`` (None: any). Only valid once it is known available."""
    if backend == "triton":
        return _triton_max_grid()
    if backend == "cpp" and device.type == "cuda":
        return CPP_CUDA_MAX_GRID
    return None


def _triton_max_grid() -> int:
    """Only valid once the Triton backend is known to be available (it imports the kernels)."""
    from rmix_fast.ops._triton.rmix import MAX_GRID

    return MAX_GRID
