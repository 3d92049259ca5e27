"""CUDA through cuda-python's runtime bindings: the one place that identifies the GPU and turns CUDA errors into
the SDK's errors (the TensorRT backend and the engine builder both use it; neither needs torch).

cuda-python's bindings are built per CUDA major: ``cuda-python`` 13.x needs a CUDA 13 driver, which JetPack 6.1+
(CUDA 12) does not have; there the first call fails with ``cudaErrorInsufficientDriver``, reported here with the
fix (``pip install 'cuda-python>=12,<13'``, which the ``jetson`` and ``trt-cu12`` extras pin). The same error comes
back when there is no NVIDIA driver at all (no ``libcuda``: a machine without a GPU driver, a container started
without ``--gpus`` / ``--runtime nvidia``), so the driver library is looked for before choosing the message.

A Jetson is recognised by L4T's release file, ``/etc/nv_tegra_release`` (:func:`l4t_release`): there TensorRT,
CUDA and the driver come with JetPack, so fixes name the JetPack release instead of pip packages.

API names used (present in cuda-bindings 12.x and 13.x, checked against both wheels): ``cudaGetDeviceCount``,
``cudaSetDevice``, ``cudaGetDeviceProperties`` (``.name``, ``.major``, ``.minor``, ``.multiProcessorCount``,
``.totalGlobalMem``; checked in cuda-bindings 12.9.1 and 13.0.0), ``cudaDriverGetVersion``,
``cudaGetErrorName``, ``cudaError_t``.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Any

from lcr_sdk.errors import DeviceError, MissingDependencyError, require

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # L4T's release file: present on a Jetson only
LIBCUDA = ("libcuda.so.1", "libcuda.so") if os.name != "nt" else ("nvcuda.dll",)  # the driver's CUDA library
# L4T release (major, minor) -> JetPack release, for messages (NVIDIA's JetPack archive). TensorRT 10.3, the
# oldest TensorRT lcr-sdk builds with, came with L4T r36.4 = JetPack 6.1; r36.3 = JetPack 6.0 has TensorRT 8.6.
JETPACK = {(35, 0): "JetPack 5", (36, 2): "JetPack 6.0 DP", (36, 3): "JetPack 6.0", (36, 4): "JetPack 6.1/6.2"}
MIN_JETPACK = "JetPack 6.1 or later (L4T r36.4, TensorRT 10.3)"

# cudaError_t values with a known fix (numbers from the CUDA runtime API, stable across 12.x and 13.x).
_FIXES = {
    35: (  # cudaErrorInsufficientDriver, with a driver present (see _no_driver for the other case)
        "the NVIDIA driver is older than this cuda-python build needs ({detail}); install the cuda-python of your "
        "driver's CUDA major: pip install 'cuda-python>=12,<13' on a Jetson (JetPack 6.1+) or with a CUDA 12 "
        "driver (the 'jetson' / 'trt-cu12' extras pin it), or update the driver"
    ),
    100: (  # cudaErrorNoDevice
        "no CUDA GPU is visible ({detail}); check nvidia-smi (or tegrastats on a Jetson), CUDA_VISIBLE_DEVICES and "
        "the container's --gpus / --runtime nvidia option"
    ),
    101: "CUDA device {device} does not exist ({detail}); pass device='cuda:N' with N below the GPU count",
    2: "the GPU is out of memory ({detail}); use a smaller batch or free GPU memory used by other processes",
    3: "CUDA failed to initialise ({detail}); check the driver install (nvidia-smi) and reboot after an update",
    999: "CUDA reported an unknown error ({detail}); the driver may need a reboot after an update",
}


def l4t_release(path: str | os.PathLike[str] | None = None) -> str | None:
    """The L4T release of a Jetson, e.g. ``"36.4.0"`` from ``# R36 (release), REVISION: 4.0, ...``; None where the
    file is absent or unreadable (not a Jetson).

    Args:
        path: the release file (default :data:`NV_TEGRA_RELEASE`).
    """
    try:
        text = Path(path if path is not None else NV_TEGRA_RELEASE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2).strip('.')}" if match else None


def jetpack_name(release: str) -> str | None:
    """``"JetPack 6.0"`` for L4T ``"36.3.0"``; None for a release not in :data:`JETPACK`."""
    parts = [int(p) for p in release.split(".")[:2] if p.isdigit()]
    if len(parts) < 2:
        return None
    return JETPACK.get((parts[0], parts[1])) or JETPACK.get((parts[0], 0))


def jetson_upgrade(release: str) -> str:
    """The fix for a Jetson whose JetPack is too old for lcr-sdk's engines."""
    name = jetpack_name(release)
    return (
        f"this Jetson runs L4T r{release}" + (f" ({name})" if name else "") + f": upgrade it to {MIN_JETPACK} "
        "with NVIDIA's SDK Manager or SD-card image, or over apt as docs/JETSON.md describes; pip cannot install "
        "TensorRT on a Jetson"
    )


def driver_library(names: tuple[str, ...] | None = None) -> str | None:
    """The NVIDIA driver's CUDA library that loads in this process, or None when there is none (no driver)."""
    for name in names if names is not None else LIBCUDA:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


def _no_driver(detail: str) -> str:
    where = (
        "on a Jetson it comes with JetPack (sudo apt install nvidia-jetpack); in a container pass --runtime nvidia"
        if l4t_release() is not None
        else "install it (nvidia-smi must work); in a container pass --gpus all (NVIDIA Container Toolkit)"
    )
    return f"no NVIDIA driver: {' / '.join(LIBCUDA)} cannot be loaded ({detail}); {where}"


def cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        if l4t_release() is not None:  # the trt-cu12 extra's PyPI TensorRT would shadow JetPack's
            try:
                from cuda import cudart as runtime
            except ImportError as e:
                raise MissingDependencyError(
                    f"cuda-python is not importable ({e}); on a Jetson install the jetson extra (pip install "
                    "'lcr-sdk[jetson]', which brings cuda-python 12.x for JetPack 6.1+'s CUDA 12), never trt-cu12, "
                    "whose TensorRT wheel would shadow JetPack's (docs/JETSON.md)"
                ) from e
        else:
            runtime = require("cuda.cudart", "trt-cu12", "Using a CUDA GPU through cuda-python")
    return runtime


def error_name(err: Any) -> str:
    """``cudaErrorNoDevice (100)``-style name of a cudaError_t."""
    name = getattr(err, "name", None) or str(err)
    return f"{name} ({int(err)})"


def check(result: Any, device: int = 0, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise :class:`DeviceError` with the fix on an error.

    Returns:
        The single value, a list of values, or None.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        detail = f"{what} returned {error_name(err)}"
        if int(err) == 35 and driver_library() is None:  # what a missing libcuda reports, too
            raise DeviceError(_no_driver(detail))
        fix = _FIXES.get(int(err), "{detail}; check the driver and the GPU (nvidia-smi)")
        raise DeviceError(fix.format(detail=detail, device=device))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_identity(device: int = 0) -> dict[str, Any]:
    """Name, compute capability, SM count and memory of a CUDA device: what an engine manifest records and what the
    runtime compares it with (:mod:`lcr_sdk.backends.identity`).

    Returns:
        ``{"gpu": name, "compute_capability": "major.minor", "sm_count": int, "memory_mib": int}``.

    Raises:
        MissingDependencyError: cuda-python is not installed. DeviceError: no such GPU, or the driver is too old
        (or missing).
    """
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), device, "cudaGetDeviceCount")
    if not 0 <= device < int(count):
        raise DeviceError(f"CUDA device {device} does not exist: this machine has {count} GPU(s); use cuda:0..")
    props = check(rt.cudaGetDeviceProperties(device), device, "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {
        "gpu": name.strip("\x00").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": int(props.multiProcessorCount),
        "memory_mib": int(props.totalGlobalMem) >> 20,
    }


def set_device(device: int) -> None:
    """Make ``device`` current for the calling thread (CUDA's current device is per host thread)."""
    check(cudart().cudaSetDevice(device), device, "cudaSetDevice")


def device_index(device: str | None) -> int:
    """``None``/``"cuda"`` -> 0, ``"cuda:N"`` -> N.

    Raises:
        InputError: anything else (e.g. ``"cpu"``).
    """
    from lcr_sdk.errors import InputError

    if device in (None, "cuda", "auto"):
        return 0
    text = str(device)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise InputError(f"device {device!r} is not a CUDA device; use 'cuda' or 'cuda:N'")
