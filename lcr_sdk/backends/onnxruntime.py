"""ONNX Runtime backend: explicit execution providers, the one actually running is reported.

Default provider order is TensorRT, CUDA, CPU, filtered to those this onnxruntime build offers
(``device="cpu"`` keeps only CPU, ``device="cuda"`` requires CUDA). When the session runs on another provider
than the first one requested, a :class:`ProviderFallbackWarning` says so (or, with ``strict=True``, a
:class:`ModelError`): never a silent fallback.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lcr_sdk.backends.base import Backend
from lcr_sdk.errors import InputError, ModelError

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ProviderFallbackWarning(RuntimeWarning):
    """The session runs on another execution provider than the one requested."""


def choose_providers(available: list[str], device: str | None = None, providers: list | None = None) -> list:
    """The provider list to request: explicit ``providers`` as given, else by ``device`` from :data:`PREFERRED`.

    Raises:
        ModelError: ``device="cuda"`` on an onnxruntime without the CUDA provider.
        InputError: an unknown device.
    """
    if providers:
        return list(providers)
    if device in (None, "auto"):
        return [p for p in PREFERRED if p in available] or ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"device='cuda' but this onnxruntime offers only {available}; install onnxruntime-gpu "
                "(pip uninstall onnxruntime && pip install onnxruntime-gpu) or use device='cpu'"
            )
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    raise InputError(f"device {device!r} is not valid for onnxruntime; use 'cpu', 'cuda', 'cuda:N' or None (auto)")


def _provider_name(p: Any) -> str:
    return p[0] if isinstance(p, tuple) else str(p)


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` model with onnxruntime.

    Options:
        providers: explicit provider list (names or ``(name, options)`` tuples), first = wanted.
        strict: raise instead of warn when the session falls back from the wanted provider.
        intra_op_threads: onnxruntime intra-op thread count (0 = onnxruntime's default).
    """

    name = "onnxruntime"

    def load(self) -> None:
        import onnxruntime as ort

        requested = choose_providers(ort.get_available_providers(), self.device, self.options.get("providers"))
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
        wanted = _provider_name(requested[0])
        if self.provider != wanted:
            msg = (
                f"onnxruntime could not use {wanted} for {self.path.name} and runs on {self.provider} instead "
                f"(available: {ort.get_available_providers()}); check the CUDA/TensorRT libraries or pass "
                "device='cpu' to choose CPU explicitly"
            )
            if self.options.get("strict"):
                raise ModelError(msg)
            warnings.warn(msg, ProviderFallbackWarning, stacklevel=3)
        self._check_io()
        self.loaded = True

    def _check_io(self) -> None:
        spec = self.manifest.input
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.manifest.output_names if n not in outputs]
        if spec.name not in inputs or inputs[spec.name].type != "tensor(uint8)" or missing:
            raise ModelError(
                f"{self.path} does not match its manifest: expected uint8 input {spec.name!r} and outputs "
                f"{self.manifest.output_names}, the graph has inputs "
                f"{[(i.name, i.type) for i in inputs.values()]} and outputs {sorted(outputs)}; re-export the model"
            )
        self._input = spec.name
        self._outputs = self.manifest.output_names

    def infer(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        feed = self.check_feed(feed)
        values = self.session.run(self._outputs, {self._input: feed})
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        self.session = None
        super().close()
