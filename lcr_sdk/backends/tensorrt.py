"""TensorRT backend: a serialized engine run with name-based I/O and ``execute_async_v3``, without torch.

Follows NVIDIA's documented Python API of TensorRT 10 and 11 (names checked against both bindings wheels):
``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``; no binding indices. Device memory, copies and streams come from cuda-python's runtime
bindings (``cuda.bindings.runtime``; no pycuda). Each thread gets its own execution context, CUDA stream and
device buffers sized for the profile's largest batch, reused across calls. A caller holding torch CUDA tensors
passes them directly: they are used in place, and outputs come back as torch CUDA tensors (no host round trip).

An engine only runs on the TensorRT version and GPU it was built for: :func:`engine_mismatch` compares the
manifest with the running system and the backend refuses a mismatch with the command that rebuilds it.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from lcr_sdk.backends.base import Backend
from lcr_sdk.errors import InputError, ModelError, require


def _version_key(version: str) -> tuple[str, ...]:
    """Engines are tied to major.minor.patch of TensorRT (build numbers may differ)."""
    return tuple(str(version).split(".")[:3])


def engine_mismatch(built: dict[str, Any] | None, running: dict[str, Any]) -> list[str]:
    """What differs between the system an engine was built on (manifest ``tensorrt``) and the running one.

    Args:
        built: the manifest's ``tensorrt`` entry: ``{"version", "gpu", "compute_capability"}``.
        running: the same keys for this process.

    Returns:
        One sentence per difference; empty when the engine can run here.
    """
    if not built:
        return ["the manifest has no 'tensorrt' entry (TensorRT version, GPU), so the engine cannot be checked"]
    problems = []
    if _version_key(built.get("version", "")) != _version_key(running["version"]):
        problems.append(f"built with TensorRT {built.get('version')}, this is TensorRT {running['version']}")
    if str(built.get("compute_capability")) != str(running["compute_capability"]):
        problems.append(
            f"built for compute capability {built.get('compute_capability')} ({built.get('gpu')}), "
            f"this GPU is {running['gpu']} with compute capability {running['compute_capability']}"
        )
    elif built.get("gpu") != running["gpu"]:
        problems.append(f"built on {built.get('gpu')}, this GPU is {running['gpu']}")
    return problems


def rebuild_command(precision: str, out: str) -> str:
    """The command that rebuilds an engine for this machine (int8 also needs calibration images)."""
    calib = " --calib IMAGES_DIR" if precision == "int8" else ""
    return f"lcr-sdk export CKPT --trt --precision {precision}{calib} --out {out}"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        cudart = require("cuda.cudart", "trt", "Running a TensorRT engine")  # older cuda-python
    return cudart


def _ck(result):
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else values


class _ThreadState:
    """One thread's execution context, stream and reusable device buffers."""

    def __init__(self, engine, cudart, sizes: dict[str, int]):
        self.context = engine.create_execution_context()
        self.stream = _ck(cudart.cudaStreamCreate())
        self.buffers = {name: _ck(cudart.cudaMalloc(n)) for name, n in sizes.items()}


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (``.engine`` / ``.plan``).

    Options:
        force: run an engine whose manifest names another TensorRT version or GPU (a warning instead of an error).
    """

    name = "tensorrt"

    def load(self) -> None:
        trt = require("tensorrt", "trt", "Running a TensorRT engine")
        cudart = _cudart()
        self.trt, self.cudart = trt, cudart
        dev = int(str(self.device).split(":")[1]) if self.device and ":" in str(self.device) else 0
        _ck(cudart.cudaSetDevice(dev))
        running = running_system(dev)
        problems = engine_mismatch(self.manifest.tensorrt, running)
        if problems:
            msg = (
                f"TensorRT engine {self.path} cannot run here: {'; '.join(problems)}. Engines are specific to the "
                f"TensorRT version and GPU; rebuild it on this machine: "
                f"{rebuild_command(self.manifest.precision, self.path.name)}"
            )
            if not self.options.get("force"):
                raise ModelError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(
                f"TensorRT could not deserialize {self.path} ({self.path.stat().st_size} bytes): it is "
                f"truncated or not an engine; rebuild it: "
                f"{rebuild_command(self.manifest.precision, self.path.name)}"
            )
        self._describe_io()
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self.provider = f"TensorRT {trt.__version__} on {running['gpu']}"
        self.loaded = True

    def _describe_io(self) -> None:
        """Names, modes, dtypes and max-batch byte sizes of the engine's I/O tensors; checked against the manifest."""
        trt, m = self.trt, self.manifest
        self.inputs, self.outputs, self.dtypes, self.sizes = [], [], {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = [m.batch_max if d < 0 else d for d in self.engine.get_tensor_shape(name)]
            self.sizes[name] = int(np.prod(shape)) * self.dtypes[name].itemsize
        if self.inputs != [m.input.name] or sorted(self.outputs) != sorted(m.output_names):
            raise ModelError(
                f"{self.path} has inputs {self.inputs} and outputs {self.outputs}; its manifest expects "
                f"{[m.input.name]} and {m.output_names}: rebuild it with lcr-sdk export"
            )
        lo, _, hi = self.engine.get_tensor_profile_shape(m.input.name, 0)
        if lo[0] > m.batch_min or hi[0] < m.batch_max:
            raise ModelError(
                f"{self.path}: engine profile batch {lo[0]}..{hi[0]} does not cover the manifest's "
                f"{m.batch_min}..{m.batch_max}; rebuild it with lcr-sdk export"
            )

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState(self.engine, self.cudart, self.sizes)
            with self._lock:
                self._states.append(state)
        return state

    def infer(self, feed: Any) -> dict[str, Any]:
        """Numpy uint8 NHWC in -> numpy out; a torch CUDA uint8 tensor in -> torch CUDA tensors out."""
        if type(feed).__module__.startswith("torch"):
            return self._infer_torch(feed)
        feed = self.check_feed(feed)
        cudart, st, name = self.cudart, self._state(), self.inputs[0]
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        st.context.set_input_shape(name, feed.shape)
        for n, ptr in st.buffers.items():
            st.context.set_tensor_address(n, int(ptr))
        _ck(cudart.cudaMemcpyAsync(st.buffers[name], feed.ctypes.data, feed.nbytes, h2d, st.stream))
        if not st.context.execute_async_v3(int(st.stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.path}")
        out = {}
        for n in self.outputs:
            arr = np.empty(tuple(st.context.get_tensor_shape(n)), dtype=self.dtypes[n])
            _ck(cudart.cudaMemcpyAsync(arr.ctypes.data, st.buffers[n], arr.nbytes, d2h, st.stream))
            out[n] = arr
        _ck(cudart.cudaStreamSynchronize(st.stream))
        return {n: out[n].astype(np.float32, copy=False) for n in self.manifest.output_names}

    def _infer_torch(self, feed) -> dict[str, Any]:
        import torch

        if not feed.is_cuda or feed.dtype != torch.uint8 or feed.ndim != 4:
            raise InputError(
                f"tensor input must be a uint8 N x H x W x 3 CUDA tensor; got {feed.dtype} "
                f"{tuple(feed.shape)} on {feed.device}"
            )
        feed = feed.contiguous()
        st, name = self._state(), self.inputs[0]
        st.context.set_input_shape(name, tuple(feed.shape))
        st.context.set_tensor_address(name, feed.data_ptr())
        out = {}
        for n in self.outputs:
            dtype = getattr(torch, str(self.dtypes[n]))
            out[n] = torch.empty(tuple(st.context.get_tensor_shape(n)), dtype=dtype, device=feed.device)
            st.context.set_tensor_address(n, out[n].data_ptr())
        stream = torch.cuda.current_stream(feed.device)
        if not st.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.path}")
        return {n: out[n].float() for n in self.manifest.output_names}

    def close(self) -> None:
        if getattr(self, "_states", None):
            for st in self._states:
                for ptr in st.buffers.values():
                    self.cudart.cudaFree(ptr)
                self.cudart.cudaStreamDestroy(st.stream)
                st.context = None
            self._states = []
        self.engine = None
        super().close()


def running_system(device: int = 0) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this process (what an engine's manifest records)."""
    trt = require("tensorrt", "trt", "Reading the TensorRT version")
    prop = _ck(_cudart().cudaGetDeviceProperties(device))
    gpu = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"version": trt.__version__, "gpu": gpu.strip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}
