"""The one small interface every inference backend implements (after Polygraphy's ``backend/base/runner.py``).

    with backend_for(path)(path, manifest) as b:   # load() on enter, close() on exit
        out = b.infer(batch)   # uint8 N x H x W x 3 BGR -> {"embedding": N x D, "attention": N x h x w, ...}

``Backend.infer`` is a template: it checks the feed against the manifest (dtype, rank, H x W, batch range; numpy
arrays and torch tensors alike), calls the backend's own ``_infer``, and checks the outputs' shapes. A backend
implements ``load``, ``_infer`` and ``close`` and never re-checks what ``infer`` checked.

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
    takes_tensors = False  # whether _infer takes torch tensors (then it returns torch tensors)
    OPTIONS: tuple[str, ...] = ()  # the keyword options this backend takes (Embedder refuses any other)

    def __init__(self, path: str | os.PathLike[str], manifest: Manifest, device: str | None = None, **options: Any):
        self.path = Path(path)
        self.manifest = manifest
        self.device = device
        self.options = options
        self.provider = ""
        self.loaded = False

    @classmethod
    def read_manifest(cls, path: str | os.PathLike[str], **options: Any) -> Manifest:
        """The model's manifest (sidecar or ONNX metadata); a checkpoint backend builds it from the config."""
        return read_manifest(path)

    @abstractmethod
    def load(self) -> None:
        """Open the model (raise :class:`ModelError` if it cannot be run here)."""

    def infer(self, feed: Any) -> dict[str, Any]:
        """uint8 N x H x W x 3 BGR batch -> ``{output name: array}`` in the manifest's output names.

        Args:
            feed: a numpy array, or a torch tensor (for backends that take one: outputs are then torch tensors).

        Raises:
            InputError: the feed is not uint8 N x H x W x 3 at the manifest's H x W, or N is outside the manifest's
                batch range (:meth:`check_feed`); checked before the backend runs.
            ModelError: the outputs are not of the manifest's shapes.
        """
        if not self.loaded:
            raise ModelError(
                f"{self.path.name} was closed (Embedder.close(), or the end of its with block); create a new "
                "Embedder to run it again"
            )
        feed = self.check_feed(feed)
        return self.check_outputs(self._infer(feed), len(feed))

    @abstractmethod
    def _infer(self, feed: Any) -> dict[str, Any]:
        """Run one checked batch (C-contiguous, within the batch range) -> ``{output name: array or tensor}``."""

    def close(self) -> None:
        """Release the model; the backend cannot infer afterwards."""
        self.loaded = False

    def __enter__(self) -> Backend:
        if not self.loaded:
            self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_io(self, inputs: dict[str, tuple[str, list[Any]]], outputs: dict[str, list[Any]]) -> None:
        """Raise :class:`ModelError` if the graph's declared I/O does not match the manifest (at load)."""
        problems = io_mismatches(self.manifest, inputs, outputs)
        if problems:
            raise ModelError(
                f"{self.path} does not match its manifest: {'; '.join(problems)}. Re-export the model "
                "(lcr-sdk export) so that graph and manifest agree, or copy the model together with its own .json"
            )

    def check_embedded(self, embedded: Manifest) -> None:
        """Raise :class:`ModelError` if the manifest in use disagrees with the one stored inside the model file.

        An ONNX graph carries its manifest in ``metadata_props``; the sidecar beside it is what the runtime reads
        first. A sidecar edited to another resize rule or normalisation, or carrying another checkpoint's hash, would
        change every embedding (or let a model search a gallery of another) while the file hash still matches: the
        two must agree on every field but the model's own hash (which a file cannot hold).
        """
        problems = manifest_differences(self.manifest, embedded)
        if problems:
            side = self.path.with_name(self.path.name + ".json")
            raise ModelError(
                f"the manifest of {self.path} (sidecar {side}) disagrees with the manifest inside the graph: "
                f"{'; '.join(problems)}. The sidecar was edited or belongs to another model: restore it, delete it "
                "(the graph's own manifest is then used) or re-export the model (lcr-sdk export)"
            )

    def check_outputs(self, out: dict[str, Any], n: int) -> dict[str, Any]:
        """Raise :class:`ModelError` if one call's outputs are not of the manifest's shapes; return ``out``."""
        problems = output_mismatches(self.manifest, out, n)
        if problems:
            raise ModelError(
                f"{self.path} returned {'; '.join(problems)}: the graph does not compute what its manifest "
                "declares; re-export the model (lcr-sdk export)"
            )
        return out

    def check_feed(self, feed: Any) -> Any:
        """Validate a batch against the manifest's input spec and batch range; return it contiguous.

        A numpy array, or a torch tensor where the backend takes them (recognised without importing torch), must be
        uint8 N x H x W x 3 at the manifest's H x W with ``batch_min <= N <= batch_max``.

        Raises:
            InputError: anything else, naming what was given and what the model takes.
        """
        spec, m = self.manifest.input, self.manifest
        tensor = is_torch_tensor(feed)
        shape = (spec.height, spec.width, 3)
        dtype = str(getattr(feed, "dtype", "")).removeprefix("torch.")
        dims = tuple(int(d) for d in getattr(feed, "shape", ()))
        if not (isinstance(feed, np.ndarray) or tensor) or dtype != "uint8" or len(dims) != 4 or dims[1:] != shape:
            got = f"{type(feed).__name__} {dtype or '-'} {dims or ''}".rstrip()
            raise InputError(
                f"backend input must be a uint8 N x {spec.height} x {spec.width} x 3 BGR array or tensor; got {got}. "
                "Use Embedder.embed() to bring images to the model's size"
            )
        if tensor and not self.takes_tensors:
            raise InputError(
                f"the {self.name} backend takes numpy arrays, not torch tensors; pass feed.cpu().numpy(), or run the "
                "model with a backend that takes tensors (tensorrt, torch)"
            )
        if not m.batch_min <= dims[0] <= m.batch_max:
            raise InputError(
                f"batch of {dims[0]} is outside the model's batch range {m.batch_min}..{m.batch_max}; "
                "Embedder.infer() splits and pads batches to fit"
            )
        return feed.contiguous() if tensor else np.ascontiguousarray(feed)


def is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, found without importing torch."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "data_ptr")


def io_mismatches(
    manifest: Manifest, inputs: dict[str, tuple[str, list[Any]]], outputs: dict[str, list[Any]]
) -> list[str]:
    """How a graph's declared I/O differs from its manifest; [] when they agree.

    Args:
        manifest: the model's manifest.
        inputs: input name -> (dtype name, e.g. ``"uint8"``, shape with a str/None/-1 for a dynamic axis).
        outputs: output name -> shape, likewise.
    """
    m, spec = manifest, manifest.input

    def static(d: Any) -> bool:
        return isinstance(d, int) and d >= 0

    problems = []
    if list(inputs) != [spec.name]:
        problems.append(f"inputs {list(inputs)} instead of [{spec.name!r}]")
    else:
        dtype, shape = inputs[spec.name]
        if dtype != spec.dtype:
            problems.append(f"input {spec.name!r} is {dtype}, the manifest says {spec.dtype}")
        if len(shape) != 4 or [d if static(d) else "?" for d in shape[1:]] != list(spec.dims):
            problems.append(
                f"input {spec.name!r} has shape {list(shape)}, the manifest says [N, {', '.join(map(str, spec.dims))}]"
            )
    want = m.output_shapes
    if sorted(outputs) != sorted(want):
        problems.append(
            f"outputs {sorted(outputs)}, the manifest ({m.method}, num_parts={m.num_parts}) says {sorted(want)}"
        )
    for name, shape in outputs.items():
        if name not in want:
            continue
        expected = want[name]
        if len(shape) != len(expected) or any(
            static(d) and e != "N" and d != e for d, e in zip(shape, expected, strict=False)
        ):
            problems.append(f"output {name!r} has shape {list(shape)}, the manifest says {expected}")
    return problems


def manifest_differences(given: Manifest, embedded: Manifest) -> list[str]:
    """``field: value (sidecar) vs value (graph)`` for each field two manifests disagree on; [] when they agree.

    The model file's sha256 is left out (empty inside a graph), and so is ``outputs`` (derived from other fields).
    """

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "extra":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
        return out

    a, b = flat(given.to_dict()), flat(embedded.to_dict())
    keys = sorted((set(a) | set(b)) - {"model_sha256"})
    return [
        f"{k} {a.get(k)!r} (sidecar) vs {b.get(k)!r} (graph)"
        for k in keys
        if not k.startswith("outputs") and a.get(k) != b.get(k)
    ]


def output_mismatches(manifest: Manifest, out: dict[str, Any], n: int) -> list[str]:
    """How one call's outputs differ from the shapes the manifest promises for a batch of ``n``."""
    problems = []
    for name, expected in manifest.output_shapes.items():
        if name not in out:
            problems.append(f"no {name!r} output")
            continue
        shape = tuple(int(d) for d in out[name].shape)
        want = tuple(n if e == "N" else e for e in expected)
        if shape != want:
            problems.append(f"{name!r} of shape {shape} for a batch of {n} (expected {want})")
    return problems


def backend_for(path: str | os.PathLike[str], backend: str | None = None) -> type[Backend]:
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
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found
