"""Domain errors. The CLI turns each into one line and exit code 1 (``--debug`` shows the traceback)."""

from __future__ import annotations

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


def import_platform(module: str) -> Any:
    """Import a package the platform may provide (``cv2``, ``onnxruntime``, ``tensorrt``) or raise
    :class:`MissingDependencyError` naming the extra (desktop) or the system package (Jetson).

    A build against another numpy major (a numpy 1.x wheel under numpy 2) is reported with its fix too.
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
        raise MissingDependencyError(PLATFORM_PACKAGES[module].format(err=text.splitlines()[0] if text else e)) from e


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
