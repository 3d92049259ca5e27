"""TensorRT backend: a serialized engine run with name-based I/O and ``execute_async_v3``, without torch.

Follows NVIDIA's documented Python API of TensorRT 10 and 11 (names checked against both bindings wheels):
``Runtime.deserialize_cuda_engine``, ``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``get_tensor_dtype``, ``get_tensor_shape``, ``get_tensor_profile_shape``, ``create_execution_context``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, ``nptype``; no binding indices. Device memory,
pinned host memory, copies and streams come from cuda-python's runtime bindings (:mod:`lcr_sdk.backends.cuda`;
``cudaMalloc``, ``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStreamCreate``/``Synchronize``/``Destroy``,
``cudaFree``, ``cudaFreeHost``; no pycuda).

- The engine runs on one GPU, ``device="cuda"`` or ``"cuda:N"``; ``device="cpu"`` is refused (use the .onnx).
- CUDA's current device is per host thread, so every call that touches buffers first makes the engine's GPU
  current in the calling thread. Each thread gets its own execution context, stream, device buffers and pinned
  host buffers (sized for the profile's largest batch), reused across calls: host <-> device copies go through
  pinned memory, which DMA can read directly.
- A caller holding torch CUDA tensors on the engine's GPU passes them directly: they are used in place, and outputs
  come back as torch CUDA tensors (no host round trip); a tensor on another device is refused.

- Optimisation profiles: an engine built with several (``--batch`` given more than once) runs each call on the
  profile that fits its batch (:func:`choose_profile`); a thread's context switches profile only when the batch
  needs another one (``set_optimization_profile_async``).
- ``cuda_graph=True``: a batch-1 call from numpy replays a CUDA graph of the engine's enqueue, captured on the first
  such call per thread and profile (batch 1 has one fixed shape, and the thread's buffers never move); the copies
  stay outside the graph. Other batches and torch tensors (whose addresses change) run ``execute_async_v3``. An
  engine TensorRT cannot capture is run without the graph, with a warning.

An engine only runs on the TensorRT version and GPU it was built for: :func:`~lcr_sdk.backends.identity.check_engine`
compares the manifest with the running system; the backend refuses what TensorRT refuses and warns on an engine
tuned for other hardware, both with the torch-free command that rebuilds it from the exported ONNX.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from typing import Any

import numpy as np

from lcr_sdk.backends import cuda
from lcr_sdk.backends.base import Backend, is_torch_tensor
from lcr_sdk.backends.identity import check_engine, running_identity
from lcr_sdk.errors import InputError, ModelError, import_platform


def engine_mismatch(built: dict[str, Any] | None, running: dict[str, Any]) -> list[str]:
    """What differs between the system an engine was built on (manifest ``tensorrt``) and the running one: what
    :func:`~lcr_sdk.backends.identity.check_engine` refuses, then what it warns about; empty when it runs as built.
    """
    verdict = check_engine(built, running)
    return [*verdict.refuse, *verdict.warn]


def rebuild_command(precision: str, out: str, onnx_file: str | None = None) -> str:
    """The torch-free command that rebuilds an engine on this machine from its exported ONNX (and its .json)."""
    source = onnx_file or (out.rsplit(".", 1)[0] + ".onnx")
    return f"lcr-sdk export {source} --trt --precision {precision} --out {out}"


def choose_profile(profiles: list[tuple[int, int, int]], batch: int) -> int:
    """Index of the optimisation profile a batch of ``batch`` runs on: of those whose min..max holds it, the one
    whose optimal batch is nearest (the first of equals).

    Raises:
        InputError: no profile holds the batch.
    """
    fits = [i for i, (lo, _, hi) in enumerate(profiles) if lo <= batch <= hi]
    if not fits:
        ranges = ", ".join(f"{lo}..{hi}" for lo, _, hi in profiles)
        raise InputError(f"batch of {batch} fits none of the engine's profiles ({ranges}); split the batch")
    return min(fits, key=lambda i: abs(profiles[i][1] - batch))


class _ThreadState:
    """One thread's execution context, stream, device buffers and pinned host buffers."""

    def __init__(self, engine: Any, sizes: dict[str, int], device: int):
        rt = cuda.cudart()
        cuda.set_device(device)
        self.device = device
        self.context = engine.create_execution_context()
        self.stream = cuda.check(rt.cudaStreamCreate(), device, "cudaStreamCreate")
        self.buffers = {n: cuda.check(rt.cudaMalloc(b), device, "cudaMalloc") for n, b in sizes.items()}
        self.pinned = {n: cuda.check(rt.cudaMallocHost(b), device, "cudaMallocHost") for n, b in sizes.items()}
        self.profile = 0  # a new context runs profile 0
        self.graphs: dict[int, tuple[Any, Any]] = {}  # profile -> (CUDA graph, its executable) of a batch-1 enqueue

    def host_view(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array over this thread's pinned buffer for ``name``."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_byte * nbytes).from_address(int(self.pinned[name]))
        view: np.ndarray = np.frombuffer(memoryview(raw).cast("B"), dtype=dtype, count=int(np.prod(shape)))
        return view.reshape(shape)

    def free(self) -> None:
        rt = cuda.cudart()
        cuda.set_device(self.device)
        for graph, executable in self.graphs.values():
            rt.cudaGraphExecDestroy(executable)
            rt.cudaGraphDestroy(graph)
        self.graphs = {}
        for ptr in self.buffers.values():
            rt.cudaFree(ptr)
        for ptr in self.pinned.values():
            rt.cudaFreeHost(ptr)
        rt.cudaStreamDestroy(self.stream)
        self.context = None


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (``.engine`` / ``.plan`` / ``.trt``).

    Options:
        force: run an engine whose manifest names another TensorRT version or GPU (a warning instead of an error).
        cuda_graph: replay a captured CUDA graph for batch-1 numpy calls (module docstring).
    """

    name = "tensorrt"
    OPTIONS = ("force", "cuda_graph")
    takes_tensors = True

    def load(self) -> None:
        if self.device is not None and not str(self.device).startswith("cuda"):
            raise InputError(
                f"device={self.device!r}: a TensorRT engine runs only on a CUDA GPU; pass device='cuda' or "
                "'cuda:N', or run the exported .onnx for the CPU: Embedder('model.onnx', device='cpu')"
            )
        self.device_id = cuda.device_index(self.device)
        trt = import_platform("tensorrt")
        self.trt = trt
        cuda.set_device(self.device_id)
        running = running_system(self.device_id)
        verdict = check_engine(self.manifest.tensorrt, running)
        rebuild = rebuild_command(self.manifest.precision, self.path.name, self.manifest.extra.get("onnx_file"))
        if verdict.refuse:
            msg = (
                f"TensorRT engine {self.path} cannot run here: {'; '.join(verdict.refuse)}. Engines are specific to "
                f"the TensorRT version and GPU; build one on this machine from the exported ONNX (no torch needed): "
                f"{rebuild}"
            )
            if not self.options.get("force"):
                raise ModelError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        elif verdict.warn:
            warnings.warn(
                f"TensorRT engine {self.path} was built for other hardware: {'; '.join(verdict.warn)}. For this "
                f"machine's best speed, build it here from the exported ONNX (no torch needed): {rebuild}",
                RuntimeWarning,
                stacklevel=3,
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(
                f"TensorRT could not deserialize {self.path} ({self.path.stat().st_size} bytes): it is "
                f"truncated or not an engine; rebuild it here: {rebuild}"
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
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype[Any]] = {}
        self.sizes: dict[str, int] = {}
        inputs: dict[str, tuple[str, list[Any]]] = {}
        outputs: dict[str, list[Any]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            dims = list(self.engine.get_tensor_shape(name))
            if is_input:
                inputs[name] = (self.dtypes[name].name, dims)
            else:
                outputs[name] = [d if d >= 0 else "N" for d in dims]
            shape = [m.batch_max if d < 0 else d for d in dims]
            self.sizes[name] = int(np.prod(shape)) * self.dtypes[name].itemsize
        self.check_io(inputs, outputs)
        count = getattr(self.engine, "num_optimization_profiles", 1)
        self.profiles: list[tuple[int, int, int]] = []
        for i in range(count):
            lo, opt, hi = (int(shape[0]) for shape in self.engine.get_tensor_profile_shape(m.input.name, i))
            self.profiles.append((lo, opt, hi))
        want = m.batch_profiles
        if len(self.profiles) != len(want) or any(e[0] > w[0] or e[2] < w[2] for e, w in zip(self.profiles, want)):
            found = ", ".join(f"{lo}..{hi}" for lo, _, hi in self.profiles)
            declared = ", ".join(f"{lo}..{hi}" for lo, _, hi in want)
            raise ModelError(
                f"{self.path}: engine profile batches {found} do not cover the manifest's {declared}; rebuild it: "
                f"{rebuild_command(m.precision, self.path.name, m.extra.get('onnx_file'))}"
            )
        self.cuda_graph = bool(self.options.get("cuda_graph"))

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState(self.engine, self.sizes, self.device_id)
            with self._lock:
                self._states.append(state)
        else:
            cuda.set_device(self.device_id)  # this thread may have switched GPU since
        return state

    def _infer(self, feed: Any) -> dict[str, Any]:
        """Numpy uint8 NHWC in -> numpy out; a torch CUDA uint8 tensor in -> torch CUDA tensors out."""
        if is_torch_tensor(feed):
            return self._infer_torch(feed)
        rt, st, name = cuda.cudart(), self._state(), self.inputs[0]
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._use_profile(st, len(feed), st.stream)
        st.context.set_input_shape(name, feed.shape)
        for n, ptr in st.buffers.items():
            st.context.set_tensor_address(n, int(ptr))
        st.host_view(name, feed.shape, feed.dtype)[...] = feed  # into pinned memory
        cuda.check(rt.cudaMemcpyAsync(st.buffers[name], st.pinned[name], feed.nbytes, h2d, st.stream))
        if self.cuda_graph and len(feed) == 1:
            self._replay(st)
        else:
            self._enqueue(st.context, st.stream)
        shapes = {n: tuple(st.context.get_tensor_shape(n)) for n in self.outputs}
        for n in self.outputs:
            nbytes = int(np.prod(shapes[n])) * self.dtypes[n].itemsize
            cuda.check(rt.cudaMemcpyAsync(st.pinned[n], st.buffers[n], nbytes, d2h, st.stream))
        cuda.check(rt.cudaStreamSynchronize(st.stream), self.device_id, "cudaStreamSynchronize")
        return {
            n: st.host_view(n, shapes[n], self.dtypes[n]).astype(np.float32, copy=True)
            for n in self.manifest.output_names
        }

    def _infer_torch(self, feed: Any) -> dict[str, Any]:
        import torch

        if not feed.is_cuda:
            raise InputError(
                f"tensor is on {feed.device} but a TensorRT engine reads GPU memory; move it with "
                f".to('cuda:{self.device_id}') or pass a numpy array"
            )
        if feed.device.index != self.device_id:
            raise InputError(
                f"tensor is on {feed.device} but the engine runs on cuda:{self.device_id}; move it with "
                f".to('cuda:{self.device_id}') or load the engine with device='{feed.device}'"
            )
        st, name = self._state(), self.inputs[0]
        stream = torch.cuda.current_stream(feed.device)
        self._use_profile(st, len(feed), stream.cuda_stream)
        st.context.set_input_shape(name, tuple(feed.shape))
        st.context.set_tensor_address(name, feed.data_ptr())
        out = {}
        for n in self.outputs:
            dtype = getattr(torch, str(self.dtypes[n]))
            out[n] = torch.empty(tuple(st.context.get_tensor_shape(n)), dtype=dtype, device=feed.device)
            st.context.set_tensor_address(n, out[n].data_ptr())
        self._enqueue(st.context, stream.cuda_stream)
        return {n: out[n].float() for n in self.manifest.output_names}

    def _use_profile(self, st: _ThreadState, batch: int, stream: Any) -> None:
        """Switch ``st``'s context to the profile for ``batch`` if it is on another one."""
        index = choose_profile(self.profiles, batch)
        if index != st.profile:
            if not st.context.set_optimization_profile_async(index, int(stream)):
                raise ModelError(f"TensorRT could not switch {self.path} to optimisation profile {index}")
            st.profile = index

    def _enqueue(self, context: Any, stream: Any) -> None:
        if not context.execute_async_v3(int(stream)):
            raise ModelError(f"TensorRT execute_async_v3 failed on {self.path}; see the TensorRT log above")

    def _replay(self, st: _ThreadState) -> None:
        """Launch the CUDA graph of a batch-1 enqueue on ``st``'s current profile, capturing it on first use."""
        rt = cuda.cudart()
        if st.profile not in st.graphs:
            self._enqueue(st.context, st.stream)  # TensorRT applies shape changes on an enqueue, never while captured
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda.check(rt.cudaStreamBeginCapture(st.stream, mode), self.device_id, "cudaStreamBeginCapture")
            captured = st.context.execute_async_v3(int(st.stream))
            graph = cuda.check(rt.cudaStreamEndCapture(st.stream), self.device_id, "cudaStreamEndCapture")
            if not captured or graph is None:
                warnings.warn(
                    f"TensorRT engine {self.path} cannot be captured in a CUDA graph; running it without "
                    "(cuda_graph=False hides this warning)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.cuda_graph = False
                return  # this call's results came from the enqueue above
            executable = cuda.check(rt.cudaGraphInstantiate(graph, 0), self.device_id, "cudaGraphInstantiate")
            st.graphs[st.profile] = (graph, executable)
        cuda.check(rt.cudaGraphLaunch(st.graphs[st.profile][1], st.stream), self.device_id, "cudaGraphLaunch")

    def close(self) -> None:
        if getattr(self, "_states", None):
            for st in self._states:
                st.free()
            self._states = []
        self.engine = None
        super().close()


def running_system(device: int = 0) -> dict[str, Any]:
    """TensorRT version, GPU identity and (Jetson) L4T release of this process (what an engine's manifest records;
    :mod:`lcr_sdk.backends.identity`)."""
    trt = import_platform("tensorrt")
    return running_identity(trt.__version__, device)
