"""CUDA through cuda-python's runtime bindings: the one place that identifies the GPU and turns CUDA errors into
the SDK's errors (the TensorRT backend and the engine builder both use it; neither needs torch).

cuda-python's bindings are built per CUDA major: ``cuda-python`` 13.x needs a CUDA 13 driver, which JetPack 6
(CUDA 12) does not have; there the first call fails with ``cudaErrorInsufficientDriver``, reported here with the
fix (``pip install 'cuda-python>=12,<13'``, which the ``jetson`` and ``trt-cu12`` extras pin).

API names used (present in cuda-bindings 12.x and 13.x, checked against both wheels): ``cudaGetDeviceCount``,
``cudaSetDevice``, ``cudaGetDeviceProperties`` (``.name``, ``.major``, ``.minor``), ``cudaDriverGetVersion``,
``cudaGetErrorName``, ``cudaError_t``.
"""

from __future__ import annotations

from typing import Any

from lcr_sdk.errors import DeviceError, require

# cudaError_t values with a known fix (numbers from the CUDA runtime API, stable across 12.x and 13.x).
_FIXES = {
    35: (  # cudaErrorInsufficientDriver
        "the NVIDIA driver is older than this cuda-python build needs ({detail}); install the cuda-python of your "
        "driver's CUDA major: pip install 'cuda-python>=12,<13' on JetPack 6 or a CUDA 12 driver "
        "(the 'jetson' / 'trt-cu12' extras pin it), or update the driver"
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


def cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
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
        fix = _FIXES.get(int(err), "{detail}; check the driver and the GPU (nvidia-smi)")
        raise DeviceError(fix.format(detail=detail, device=device))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_identity(device: int = 0) -> dict[str, str]:
    """``{"gpu": name, "compute_capability": "major.minor"}`` of a CUDA device: what an engine manifest records
    and what the runtime compares it with.

    Raises:
        MissingDependencyError: cuda-python is not installed. DeviceError: no such GPU, or the driver is too old.
    """
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), device, "cudaGetDeviceCount")
    if not 0 <= device < int(count):
        raise DeviceError(f"CUDA device {device} does not exist: this machine has {count} GPU(s); use cuda:0..")
    props = check(rt.cudaGetDeviceProperties(device), device, "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


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
