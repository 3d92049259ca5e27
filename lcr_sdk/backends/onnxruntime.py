"""ONNX Runtime backend: explicit execution providers, the one actually running is reported.

Provider choice (:func:`choose_providers`), by ``device``:

- ``None`` (auto) or ``"cuda[:N]"``: the TensorRT provider first, but only when onnxruntime offers it AND TensorRT
  itself is importable (onnxruntime-gpu lists ``TensorrtExecutionProvider`` whether or not TensorRT's libraries are
  installed), with its engine cache, timing cache and batch profile in a folder beside the model
  (``.<model>.ort-trt/``, or ``~/.cache/lcr-sdk/ort-trt/<sha>`` where that folder cannot be written), so a restarted
  process reuses the engine instead of rebuilding it for minutes; then the CUDA provider when offered; then CPU.
  ``"cuda"`` on an onnxruntime without the CUDA provider is an error.
- ``"cpu"``: CPU only.

When the session runs on another provider than the GPU provider wanted (CUDA or TensorRT asked for, CPU got), a
:class:`ProviderFallbackWarning` says so, or with ``strict=True`` a :class:`ModelError`: never a silent fallback.
TensorRT asked for only because it was importable, with CUDA running, is a warning, never a strict error: a working
CUDA provider is what ``strict`` protects. An explicit ``providers`` list is taken as given, its first entry being
the one wanted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.backends.base import Backend
from lcr_sdk.errors import InputError, ModelError, import_platform
from lcr_sdk.manifest import ONNX_METADATA_KEY, Manifest

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


class ProviderFallbackWarning(RuntimeWarning):
    """The session runs on another execution provider than the one requested."""


def tensorrt_importable() -> bool:
    """Whether the TensorRT Python package is installed (found without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def trt_cache_dir(model_path: str | os.PathLike[str]) -> Path:
    """Where the TensorRT provider keeps its engines and timing cache for a model: a hidden folder beside it, or,
    if that folder cannot be created, one under ``~/.cache/lcr-sdk/ort-trt`` named by the model's path."""
    path = Path(model_path).resolve()
    beside = path.parent / f".{path.name}.ort-trt"
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    folder = Path.home() / ".cache" / "lcr-sdk" / "ort-trt" / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def trt_options(manifest: Manifest, cache: str | os.PathLike[str], device_id: int = 0) -> dict[str, Any]:
    """TensorRT provider options: caches in ``cache``, one profile for the manifest's batch range, the precision's
    flag (the graph's types decide; the flags let TensorRT use fp16 / int8 kernels for them)."""
    spec = manifest.input

    def shape(n: int) -> str:
        return f"{spec.name}:{n}x{spec.height}x{spec.width}x3"

    return {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shape(manifest.batch_min),
        "trt_profile_opt_shapes": shape(manifest.batch_opt),
        "trt_profile_max_shapes": shape(manifest.batch_max),
        "trt_fp16_enable": manifest.precision == "fp16",
        "trt_int8_enable": manifest.precision == "int8",
    }


def choose_providers(
    available: list[str],
    device: str | None = None,
    providers: list[Any] | None = None,
    tensorrt: bool | None = None,
    trt_provider_options: dict[str, Any] | None = None,
) -> list[Any]:
    """The provider list to request (module docstring).

    Args:
        available: ``onnxruntime.get_available_providers()``.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        providers: an explicit list (names or ``(name, options)``), returned as given.
        tensorrt: whether TensorRT is importable (default: looked up).
        trt_provider_options: options for the TensorRT provider (see :func:`trt_options`), without ``device_id``.

    Raises:
        ModelError: ``device="cuda"`` on an onnxruntime without the CUDA provider.
        InputError: an unknown device.
    """
    if providers:
        return list(providers)
    if device in (None, "auto"):
        dev_id = 0
    elif device == "cpu":
        return [CPU_EP]
    elif str(device).startswith("cuda") and (device == "cuda" or str(device)[5:].isdigit()):
        if CUDA_EP not in available:
            raise ModelError(
                f"device={device!r} but this onnxruntime offers only {available}; install onnxruntime-gpu "
                "(pip uninstall onnxruntime && pip install 'lcr-sdk[gpu]'; on a Jetson, JetPack's wheel: "
                "docs/JETSON.md) or use device='cpu'"
            )
        dev_id = int(str(device).split(":")[1]) if ":" in str(device) else 0
    else:
        raise InputError(f"device {device!r} is not valid for onnxruntime; use 'cpu', 'cuda', 'cuda:N' or None (auto)")
    chosen: list[Any] = []
    if TRT_EP in available and (tensorrt_importable() if tensorrt is None else tensorrt):
        chosen.append((TRT_EP, {**(trt_provider_options or {}), "device_id": dev_id}))
    if CUDA_EP in available:
        chosen.append((CUDA_EP, {"device_id": dev_id}))
    return [*chosen, CPU_EP]


def _provider_name(p: Any) -> str:
    return p[0] if isinstance(p, tuple) else str(p)


def fallback(requested: list[Any], actual: list[str], explicit: bool) -> tuple[str | None, bool]:
    """``(message, is_error_under_strict)`` when the session did not get the provider that was wanted, else
    ``(None, False)``. See the module docstring for the rule."""
    names = [_provider_name(p) for p in requested]
    got = actual[0] if actual else CPU_EP
    if explicit:
        wanted = names[0]
        return (None, False) if got == wanted else (f"could not use {wanted} and runs on {got} instead", True)
    gpu = [n for n in names if n != CPU_EP]
    if not gpu or got in gpu[:1]:
        return None, False
    if got in gpu:  # TensorRT wanted, CUDA running: a working GPU provider
        return f"could not use {gpu[0]} and runs on {got} instead (check TensorRT's libraries)", False
    return f"could not use {gpu[0]} and runs on {got} instead", True


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` model with onnxruntime.

    Options:
        providers: explicit provider list (names or ``(name, options)`` tuples), first = wanted.
        strict: raise instead of warn when the session falls back from the wanted provider.
        intra_op_threads: onnxruntime intra-op thread count (0 = onnxruntime's default).
    """

    name = "onnxruntime"
    OPTIONS = ("providers", "intra_op_threads", "strict")

    def load(self) -> None:
        ort = import_platform("onnxruntime")
        available = ort.get_available_providers()
        explicit = bool(self.options.get("providers"))
        trt_opts = None
        if not explicit and TRT_EP in available and tensorrt_importable() and self.device != "cpu":
            trt_opts = {
                k: v for k, v in trt_options(self.manifest, trt_cache_dir(self.path)).items() if k != "device_id"
            }
        requested = choose_providers(available, self.device, self.options.get("providers"), None, trt_opts)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options.get("intra_op_threads", 0))
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=requested)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
            raise ModelError(
                f"onnxruntime cannot load {self.path} ({self.path.stat().st_size} bytes): {str(e).splitlines()[0]}. "
                "The file may be truncated or not an ONNX model: re-export it with "
                "`lcr-sdk export CKPT --out model.onnx`"
            ) from e
        actual = self.session.get_providers()
        self.provider = actual[0]
        problem, is_error = fallback(requested, actual, explicit)
        if problem:
            msg = (
                f"onnxruntime {problem} for {self.path.name} (available: {available}); check the CUDA/TensorRT "
                "libraries, or pass device='cpu' to choose CPU explicitly"
            )
            if self.options.get("strict") and is_error:
                raise ModelError(msg)
            warnings.warn(msg, ProviderFallbackWarning, stacklevel=3)
        self._check_io()
        embedded = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if embedded is not None:
            self.check_embedded(Manifest.from_json(embedded, source=f"{self.path} (metadata_props)"))
        self.loaded = True

    def _check_io(self) -> None:
        def dtype(t: str) -> str:  # ONNX Runtime's "tensor(float)" -> numpy's "float32"
            name = t[len("tensor(") : -1] if t.startswith("tensor(") else t
            return {"float": "float32", "double": "float64"}.get(name, name)

        inputs = {i.name: (dtype(i.type), list(i.shape)) for i in self.session.get_inputs()}
        outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        self.check_io(inputs, outputs)
        self._input = self.manifest.input.name
        self._outputs = self.manifest.output_names

    def _infer(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, {self._input: feed})
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        self.session = None
        super().close()
