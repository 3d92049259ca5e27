"""ONNX -> TensorRT engine (docs/DESIGN.md section 3), for TensorRT 10 (JetPack 6) and 11 alike.

The network is STRONGLY_TYPED: the precision comes from the ONNX graph (fp32, fp16, or int8 QDQ), not from builder
flags (TensorRT 11 removed FP16/INT8 flags and calibrators). One optimisation profile covers the manifest's batch
range; the workspace is limited; a timing cache file is read before and written after each build so rebuilds are
fast. The engine file is raw serialized bytes (``trtexec --loadEngine`` opens it); metadata goes in the sidecar.

Only API names present in both TensorRT 10.3 and 11.4 are used (checked against both bindings wheels):
NetworkDefinitionCreationFlag.STRONGLY_TYPED, MemoryPoolType.WORKSPACE, create_optimization_profile,
set_memory_pool_limit, build_serialized_network, create_timing_cache, set_timing_cache, get_timing_cache,
IProgressMonitor, OnnxParser.parse_from_file, get_error(i).desc()/node_name()/node_operator().
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from lcr_sdk.errors import MissingDependencyError, ModelError
from lcr_sdk.fileio import atomic_write_bytes
from lcr_sdk.manifest import Manifest

DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "lcr-sdk" / "tensorrt-timing.cache"
HOW_TO_GET_TRT = (
    "TensorRT is not importable here ({err}). On a Jetson it comes with JetPack (sudo apt install "
    "nvidia-jetpack, then use the system python3 or a venv made with --system-site-packages); on a desktop GPU: "
    "pip install 'lcr-sdk[trt]'. The ONNX model (--onnx) runs anywhere without it."
)


def import_tensorrt():
    """Import tensorrt or raise :class:`MissingDependencyError` saying how to get it."""
    try:
        import tensorrt
    except Exception as e:  # ImportError, or OSError when NVIDIA's shared libraries are missing
        raise MissingDependencyError(HOW_TO_GET_TRT.format(err=e)) from e
    return tensorrt


def gpu_info() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0, from torch or cuda-python."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(0)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except Exception as e:  # cuda-python missing or no device
        raise ModelError(
            f"cannot read the GPU name and compute capability ({e}); "
            "install torch with CUDA or cuda-python (pip install 'lcr-sdk[trt]')"
        ) from e


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    manifest: Manifest,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = DEFAULT_TIMING_CACHE,
    progress: bool = True,
) -> Manifest:
    """Build a TensorRT engine from an exported ONNX file and write it (raw) atomically.

    Args:
        onnx_path: the ONNX graph of the chosen precision.
        engine_path: where to write the engine.
        manifest: the ONNX model's manifest (batch range, input size).
        workspace_gib: builder workspace limit in GiB.
        timing_cache: timing cache file, read if present and rewritten after the build; None disables it.
        progress: print the build phase and elapsed time while building.

    Returns:
        The engine's manifest (TensorRT version, GPU, compute capability, engine sha256); the caller writes it.
    """
    trt = import_tensorrt()
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        detail = "; ".join(f"node {e.node_name()!r} ({e.node_operator()}): {e.desc()}" for e in errors)
        raise ModelError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {detail or 'no detail'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    h, w = manifest.input.height, manifest.input.width
    profile.set_shape(
        manifest.input.name, (manifest.batch_min, h, w, 3), (manifest.batch_opt, h, w, 3), (manifest.batch_max, h, w, 3)
    )
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)

    with _Progress(trt, config, enabled=progress):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        log = " | ".join(logger.errors[-3:]) or "no error logged"
        if any("memory" in e.lower() for e in logger.errors):
            raise ModelError(
                f"TensorRT ran out of GPU memory building {engine_path} ({log}); retry with a smaller "
                f"--workspace (now {workspace_gib} GiB) or a smaller max batch (now {manifest.batch_max})"
            )
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}: {log}")

    data = bytes(serialized)
    atomic_write_bytes(engine_path, data)
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    gpu, cc = gpu_info()
    return replace(
        manifest,
        model_file=Path(engine_path).name,
        model_sha256=hashlib.sha256(data).hexdigest(),
        tensorrt={"version": trt.__version__, "gpu": gpu, "compute_capability": cc},
        extra={**manifest.extra, "onnx_file": Path(onnx_path).name, "workspace_gib": workspace_gib},
    )


def _make_logger(trt):
    """A TensorRT logger that prints warnings and keeps error messages (for the one-line error)."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                print(f"[TensorRT] {msg}")

    return Logger()


class _Progress:
    """While building, one line that shows the current builder phase and the elapsed time (builds take minutes)."""

    def __init__(self, trt, config, enabled: bool = True):
        self.enabled, self.phase, self.start = enabled, "building", time.monotonic()
        self._stop = threading.Event()
        if enabled:
            progress = self

            class Monitor(trt.IProgressMonitor):
                def __init__(self):
                    trt.IProgressMonitor.__init__(self)

                def phase_start(self, phase_name, parent_phase, num_steps):
                    progress.phase = phase_name

                def step_complete(self, phase_name, step):
                    return True  # never cancel

                def phase_finish(self, phase_name):
                    pass

            self.monitor = Monitor()  # keep a reference: TensorRT does not own it
            config.progress_monitor = self.monitor

    def _tick(self):
        while not self._stop.wait(1.0):
            print(f"\rTensorRT build: {self.phase[:50]:<50} {time.monotonic() - self.start:6.0f} s", end="", flush=True)

    def __enter__(self):
        if self.enabled:
            self.thread = threading.Thread(target=self._tick, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self.thread.join()
            print(f"\rTensorRT build finished in {time.monotonic() - self.start:.0f} s".ljust(80))
