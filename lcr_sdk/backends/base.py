"""The one small interface every inference backend implements (after Polygraphy's ``backend/base/runner.py``).

    with get_backend("onnxruntime")(path, manifest) as b:   # load() on enter, close() on exit
        out = b.infer(batch)   # uint8 N x H x W x 3 BGR -> {"embedding": N x D, "attention": N x h x w, ...}

Backends are chosen by name or by the model file's suffix from two tables, never by a chain of if-branches.
A backend module imports its engine (onnxruntime, tensorrt, torch) only inside ``load``.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.manifest import Manifest, read_manifest

# backend name -> "module:class"
BACKENDS = {
    "onnxruntime": "lcr_sdk.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "lcr_sdk.backends.tensorrt:TensorRTBackend",
    "torch": "lcr_sdk.backends.torch:TorchBackend",
}
# model file suffix -> backend name
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")  # what export writes and the runtime opens as a TensorRT engine
SUFFIXES = {".onnx": "onnxruntime", **dict.fromkeys(ENGINE_SUFFIXES, "tensorrt"), ".pt": "torch", ".pth": "torch"}


class Backend(ABC):
    """Runs a deployed model on uint8 NHWC BGR batches.

    Attributes:
        name: backend name (a key of :data:`BACKENDS`).
        provider: what actually executes, e.g. ``"CPUExecutionProvider"``, ``"TensorRT 10.3 on NVIDIA H100"``,
            ``"torch cuda fp16 cudagraph"``; set by :meth:`load`.
    """

    name = "base"

    def __init__(self, path: str | os.PathLike, manifest: Manifest, device: str | None = None, **options: Any):
        self.path = Path(path)
        self.manifest = manifest
        self.device = device
        self.options = options
        self.provider = ""
        self.loaded = False

    @classmethod
    def read_manifest(cls, path: str | os.PathLike, **options: Any) -> Manifest:
        """The model's manifest (sidecar or ONNX metadata); a checkpoint backend builds it from the config."""
        return read_manifest(path)

    @abstractmethod
    def load(self) -> None:
        """Open the model (raise :class:`ModelError` if it cannot be run here)."""

    @abstractmethod
    def infer(self, feed: Any) -> dict[str, Any]:
        """uint8 N x H x W x 3 BGR batch -> ``{output name: array}`` in the manifest's output names."""

    def close(self) -> None:
        """Release the model; the backend cannot infer afterwards."""
        self.loaded = False

    def __enter__(self) -> Backend:
        if not self.loaded:
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_feed(self, feed: np.ndarray) -> np.ndarray:
        """Validate a host batch against the manifest's input spec and batch range; return it C-contiguous."""
        spec, m = self.manifest.input, self.manifest
        shape = (spec.height, spec.width, 3)
        if not isinstance(feed, np.ndarray) or feed.dtype != np.uint8 or feed.ndim != 4 or feed.shape[1:] != shape:
            got = f"{type(feed).__name__} {getattr(feed, 'dtype', '')} {getattr(feed, 'shape', '')}"
            raise InputError(
                f"backend input must be a uint8 N x {spec.height} x {spec.width} x 3 BGR array; "
                f"got {got}. Use Embedder.embed() to bring images to the model's size"
            )
        if not m.batch_min <= len(feed) <= m.batch_max:
            raise InputError(f"batch of {len(feed)} is outside the model's batch range {m.batch_min}..{m.batch_max}")
        return np.ascontiguousarray(feed)


def backend_for(path: str | os.PathLike, backend: str | None = None) -> type[Backend]:
    """The backend class for a model file: named explicitly, or from the suffix table."""
    path = Path(path)
    if backend is None:
        backend = SUFFIXES.get(path.suffix.lower())
        if backend is None:
            raise ModelError(
                f"cannot tell the backend of {path} from its suffix {path.suffix!r}; valid suffixes: "
                f"{', '.join(sorted(SUFFIXES))}, or pass backend= one of {', '.join(BACKENDS)}"
            )
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown; valid: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)
