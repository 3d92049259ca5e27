"""Domain errors. The CLI turns each into one line and exit code 1 (``--debug`` shows the traceback)."""

from __future__ import annotations

import re
from typing import Any


class LcrError(Exception):
    """Base class: the message says what was given, what is valid and how to fix it."""


class InputError(LcrError, ValueError):
    """A bad image, array or argument from the caller."""


class DataError(LcrError):
    """A data set folder that is missing, empty or unreadable."""


class ModelError(LcrError):
    """A model file, checkpoint or manifest that is missing, corrupt or does not match."""


class MissingDependencyError(LcrError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class DeviceError(LcrError, RuntimeError):
    """The GPU, its driver or the CUDA libraries cannot run the request; the message says how to fix it."""


# Packages the platform may provide itself (JetPack: OpenCV with GStreamer, onnxruntime-gpu, TensorRT), so the
# runtime core does not depend on their PyPI wheels: how to get each, per platform.
PLATFORM_PACKAGES = {
    "cv2": (
        "OpenCV (cv2) is not importable ({err}). Desktop or CI: pip install 'lcr-sdk[cpu]' (or [gpu]), which "
        "brings opencv-python. Jetson: use JetPack's OpenCV with GStreamer (sudo apt install nvidia-opencv, or "
        "python3-opencv) from a venv made with --system-site-packages; see docs/JETSON.md"
    ),
    "onnxruntime": (
        "onnxruntime is not importable ({err}). Desktop or CI: pip install 'lcr-sdk[cpu]' (CPU) or 'lcr-sdk[gpu]' "
        "(onnxruntime-gpu, CUDA 12); never both. Jetson: install the onnxruntime-gpu wheel built for JetPack (see "
        "docs/JETSON.md); TensorRT engines (.engine) run without onnxruntime"
    ),
    "tensorrt": (
        "TensorRT is not importable ({err}). Jetson: it comes with JetPack (sudo apt install nvidia-jetpack); use "
        "the system python3 or a venv made with --system-site-packages (docs/JETSON.md). Desktop GPU: pip install "
        "'lcr-sdk[trt-cu12]' (CUDA 12 driver) or 'lcr-sdk[trt-cu13]' (CUDA 13 driver). The .onnx model runs "
        "anywhere without it"
    ),
}


# System libraries OpenCV's wheels load (opencv-python's GUI needs libGL and GLib; the headless wheel needs none of
# them) -> the Debian/Ubuntu package that provides each.
SYSTEM_LIBRARIES = {
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libgobject-2.0.so.0": "libglib2.0-0",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libXext.so.6": "libxext6",
    "libXrender.so.1": "libxrender1",
    "libX11.so.6": "libx11-6",
}
_MISSING_LIBRARY = re.compile(r"([\w.+-]+\.so(?:\.[\w.]+)?): cannot open shared object file")


def missing_library(text: str) -> str | None:
    """The shared library an import error says the system lacks (``libGL.so.1: cannot open shared object file``),
    or None when the error is about something else."""
    m = _MISSING_LIBRARY.search(text)
    return m.group(1) if m else None


def platform_message(module: str, error: str) -> str:
    """How to get a platform package (:data:`PLATFORM_PACKAGES`) that failed to import with ``error`` (its first
    line). When the package is installed but a system library it loads is missing (OpenCV's libGL or GLib), the
    message names that library and how to install it instead of the pip extra that is already there."""
    lib = missing_library(error) if module == "cv2" else None
    if lib is None:
        return PLATFORM_PACKAGES[module].format(err=error)
    apt = SYSTEM_LIBRARIES.get(lib)
    install = f"apt install {apt} (Debian/Ubuntu, as root)" if apt else f"install the system package that has {lib}"
    return (
        f"OpenCV (cv2) is installed but cannot load the system library {lib} ({error}). Install it: {install}; or "
        "use the headless OpenCV wheel, which needs no display libraries: pip uninstall -y opencv-python && pip "
        "install opencv-python-headless"
    )


def import_platform(module: str) -> Any:
    """Import a package the platform may provide (``cv2``, ``onnxruntime``, ``tensorrt``) or raise
    :class:`MissingDependencyError` naming the extra (desktop) or the system package (Jetson).

    A build against another numpy major (a numpy 1.x wheel under numpy 2), and an OpenCV whose system libraries
    are missing (libGL, GLib), are reported with their fixes too.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:  # OSError: a package whose shared libraries are missing (TensorRT)
        text = str(e)
        if "numpy" in text.lower() and ("1.x" in text or "_ARRAY_API" in text or "multiarray" in text):
            raise MissingDependencyError(
                f"{module} was built against numpy 1.x but numpy {_numpy_version()} is installed "
                f"({text.splitlines()[0]}); install numpy 1.x: pip install 'numpy<2' (the 'jetson' extra pins it)"
            ) from e
        raise MissingDependencyError(platform_message(module, text.splitlines()[0] if text else str(e))) from e


def _numpy_version() -> str:
    try:
        import numpy

        return str(numpy.__version__)
    except ImportError:
        return "?"


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional module or raise :class:`MissingDependencyError` naming the extra to install.

    Args:
        module: module to import, e.g. ``"torch"``.
        extra: pip extra of lcr-sdk that provides it, e.g. ``"train"``.
        purpose: what the caller wanted to do, for the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs '{module}', which is not installed ({e}). Install it with: pip install 'lcr-sdk[{extra}]'"
        ) from e
