"""Exported ONNX -> TensorRT engine (docs/DESIGN.md section 3), for TensorRT 10 (JetPack 6.1+) and 11 alike.

Runs on the device that will use the engine, with TensorRT and the runtime core only: no torch, no onnx package,
no checkpoint. ``lcr-sdk export model.onnx --trt --out model.engine`` calls :func:`build_engine_from_onnx`;
``lcr-sdk export CKPT --trt`` exports the ONNX first and then builds the same way.

- The network is STRONGLY_TYPED: the precision comes from the ONNX graph (fp32, fp16, or int8 QDQ), not from
  builder flags (TensorRT 11 removed the FP16/INT8 flags and calibrators).
- One optimisation profile covers the manifest's batch range at the fixed H x W; the workspace is limited.
- The GPU is identified, and TensorRT's version checked, before the build starts (builds take minutes); on a Jetson
  a TensorRT too old names the JetPack upgrade (pip cannot install TensorRT there).
- The engine's manifest records what the engine is tied to (:mod:`lcr_sdk.backends.identity`): the TensorRT
  version, the hardware-compatibility level, the GPU's name, compute capability, SM count and memory, and on a
  Jetson the L4T release.
- A timing cache per TensorRT version and compute capability (``~/.cache/lcr-sdk/tensorrt-<version>-sm<cc>.cache``)
  is read before and rewritten after each build; a cache TensorRT rejects is reported and replaced.
- The engine file is raw serialized bytes (``trtexec --loadEngine`` opens it); metadata goes in the sidecar.
  An engine built with trtexec gets its ONNX's manifest with :func:`attach_manifest`.

TensorRT API names used, each present in both the TensorRT 10.3 and 11.4 Python bindings (checked in the .so and
``__init__.py`` of the tensorrt-cu12-bindings 10.3.0 and tensorrt-cu13-bindings 11.4.0.106 wheels):
``__version__``, ``Logger``, ``ILogger`` (``Severity.ERROR/INTERNAL_ERROR/WARNING``), ``Builder``
(``create_network``, ``create_builder_config``, ``create_optimization_profile``, ``build_serialized_network``),
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, ``OnnxParser`` (``parse_from_file``, ``num_errors``,
``get_error(i)`` with ``desc()``, ``node_name()``, ``node_operator()``), ``IBuilderConfig``
(``set_memory_pool_limit``, ``MemoryPoolType.WORKSPACE``, ``add_optimization_profile``, ``create_timing_cache``,
``set_timing_cache``, ``get_timing_cache``, ``progress_monitor``, ``hardware_compatibility_level``),
``HardwareCompatibilityLevel`` (``.name``: ``NONE``, ``AMPERE_PLUS``; 11.x adds ``SAME_COMPUTE_CAPABILITY``),
``ITimingCache.serialize``, ``IProgressMonitor`` (``phase_start``, ``step_complete``, ``phase_finish``),
``Runtime.deserialize_cuda_engine``, ``ICudaEngine`` (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``TensorIOMode``, ``get_tensor_profile_shape``, ``hardware_compatibility_level``).
cuda-python names: see :mod:`lcr_sdk.backends.cuda`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lcr_sdk.backends import cuda
from lcr_sdk.backends.base import ENGINE_SUFFIXES
from lcr_sdk.backends.identity import HW_NONE, engine_entry, running_identity
from lcr_sdk.errors import InputError, ModelError, import_platform
from lcr_sdk.fileio import sha256_file, staging_dir
from lcr_sdk.manifest import Manifest, install_model, read_manifest, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "lcr-sdk"
MIN_TENSORRT_MAJOR = 10  # STRONGLY_TYPED networks and name-based I/O
STAGING_PREFIX = ".lcr-engine-"


def import_tensorrt() -> Any:
    """Import tensorrt or raise :class:`MissingDependencyError` saying how to get it (per platform)."""
    return import_platform("tensorrt")


def timing_cache_path(version: str, compute_capability: str, folder: str | os.PathLike = CACHE_DIR) -> Path:
    """The timing cache file for a TensorRT version and a compute capability: timings from another GPU or
    TensorRT release are useless (TensorRT rejects them), so each pair has its own file."""
    return Path(folder) / f"tensorrt-{version}-sm{str(compute_capability).replace('.', '')}.cache"


def system_check(trt: Any, device: int = 0) -> dict[str, Any]:
    """TensorRT version and the GPU's identity (name, compute capability, SM count, memory; the L4T release on a
    Jetson), checked before a build.

    Raises:
        ModelError: a TensorRT older than 10 (on a Jetson: names the JetPack upgrade). DeviceError: no GPU, no
        NVIDIA driver, or a driver cuda-python cannot use.
    """
    version = str(trt.__version__)
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_TENSORRT_MAJOR:
        l4t = cuda.l4t_release()
        fix = (
            cuda.jetson_upgrade(l4t)
            if l4t is not None
            else "pip install 'lcr-sdk[trt-cu12]' (CUDA 12 driver) or 'lcr-sdk[trt-cu13]' (CUDA 13 driver), or use a "
            "TensorRT 10+ container"
        )
        raise ModelError(
            f"TensorRT {version} is too old: lcr-sdk builds strongly typed engines with TensorRT >= "
            f"{MIN_TENSORRT_MAJOR} (JetPack 6.1+ ships 10.3); {fix}"
        )
    return running_identity(version, device)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    manifest: Manifest,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = "default",
    progress: bool = True,
    device: int = 0,
) -> Manifest:
    """Build a TensorRT engine from an exported ONNX file and write it (raw) to ``engine_path``.

    Args:
        onnx_path: the ONNX graph of the chosen precision.
        engine_path: where to write the engine (a staging path; the caller installs it with its sidecar).
        manifest: the ONNX model's manifest (batch range, input size).
        workspace_gib: builder workspace limit in GiB.
        timing_cache: ``"default"`` (one file per TensorRT version and compute capability under
            ``~/.cache/lcr-sdk``), a folder (the same file name in it), a file, or None (no cache).
        progress: show the build phase and elapsed time (stderr).
        device: CUDA device index.

    Returns:
        The engine's manifest (TensorRT version, GPU, compute capability, engine sha256); the caller writes it.

    Raises:
        MissingDependencyError: TensorRT or cuda-python missing. DeviceError: no usable GPU. ModelError: TensorRT
        older than 10, the parser rejects the graph, or the build fails (out of memory says what to lower).
    """
    trt = import_tensorrt()
    system = system_check(trt, device)  # before the minutes-long build
    cache_path = _cache_file(timing_cache, system)
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
    cache = _load_timing_cache(config, cache_path)

    with _Progress(trt, config, enabled=progress):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        logged = " | ".join(logger.errors[-3:]) or "no error logged"
        if any("memory" in e.lower() for e in logger.errors):
            raise ModelError(
                f"TensorRT ran out of GPU memory building {engine_path} ({logged}); retry with a smaller "
                f"--workspace (now {workspace_gib} GiB) or a smaller max batch (now {manifest.batch_max})"
            )
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}: {logged}")

    data = bytes(serialized)
    Path(engine_path).write_bytes(data)  # a staging path: installed with its sidecar by the caller
    if cache_path is not None and cache is not None:
        _save_timing_cache(config, cache_path)
    level = getattr(config, "hardware_compatibility_level", HW_NONE)  # NONE: lcr-sdk builds for this GPU only
    return engine_manifest(manifest, Path(engine_path).name, hashlib.sha256(data).hexdigest(), system, onnx_path, level)


def engine_manifest(
    manifest: Manifest,
    engine_name: str,
    sha256: str,
    system: dict[str, Any],
    onnx_path: str | os.PathLike,
    hardware_compatibility: Any = HW_NONE,
) -> Manifest:
    """The sidecar manifest of an engine: the ONNX's, plus the system it was built on (see
    :mod:`lcr_sdk.backends.identity`) and its own hash."""
    return replace(
        manifest,
        model_file=engine_name,
        model_sha256=sha256,
        tensorrt=engine_entry(system, hardware_compatibility),
        extra={**manifest.extra, "onnx_file": Path(onnx_path).name, "onnx_sha256": manifest.model_sha256},
    )


def build_engine_from_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    precision: str | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = "default",
    progress: bool = True,
    device: int = 0,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The torch-free route: an exported ONNX (with its manifest) in, an engine and its sidecar out, installed as a
    pair (docs/DESIGN.md section 2).

    Args:
        onnx_path: an ONNX file written by ``lcr-sdk export`` (sidecar beside it, or the manifest inside).
        out_path: the engine (``.engine``/``.plan``/``.trt``); default the ONNX's name with ``.engine``.
        precision: if given, must equal the ONNX's precision (the precision lives in the graph).
        workspace_gib, timing_cache, progress, device: see :func:`build_engine`.
        say: where the final note goes (None: the module logger).

    Raises:
        InputError: a bad output path or a precision the ONNX does not have. ModelError: no manifest, a file that
        does not match it, or a failed build. MissingDependencyError / DeviceError: see :func:`build_engine`.
    """
    src = Path(onnx_path)
    out = Path(out_path) if out_path is not None else src.with_suffix(".engine")
    if out.suffix.lower() not in ENGINE_SUFFIXES:
        raise InputError(f"engine output {out} must end in {' or '.join(ENGINE_SUFFIXES)}")
    if not src.is_file():
        raise InputError(f"ONNX model {src} does not exist; export one with `lcr-sdk export CKPT --out {src.name}`")
    manifest = read_manifest(src)
    if manifest.tensorrt:
        raise InputError(f"{src} is described by an engine manifest; pass the exported .onnx")
    if manifest.model_sha256 and sha256_file(src) != manifest.model_sha256:
        raise ModelError(
            f"{src} does not match the sha256 in its manifest (truncated, corrupt or replaced); copy it again with "
            "its .json, or re-export it"
        )
    if manifest.model_sha256 == "":
        manifest = replace(manifest, model_sha256=sha256_file(src))  # the manifest inside the ONNX has no hash
    if precision is not None and precision != manifest.precision:
        raise InputError(
            f"{src} is a {manifest.precision} graph, so it builds a {manifest.precision} engine (the precision lives "
            f"in the graph); for {precision}, export that ONNX on a machine with the export extra: lcr-sdk export "
            f"CKPT --precision {precision}"
            + (" --calib IMAGES_DIR" if precision == "int8" else "")
            + f" --out {src.stem}-{precision}.onnx, copy it here with its .json and build from it"
        )
    with staging_dir(out.parent, STAGING_PREFIX) as stage:
        staged = stage / out.name
        built = build_engine(src, staged, manifest, workspace_gib, timing_cache, progress, device)
        write_sidecar(built, staged)
        install_model(staged, out)
    t = built.tensorrt or {}
    (say or log.info)(
        f"wrote {out} and {sidecar_path(out).name} (TensorRT {t.get('version')}, {t.get('gpu')}, "
        f"compute capability {t.get('compute_capability')})"
    )
    return out


def attach_manifest(engine_path: str | os.PathLike, manifest_source: str | os.PathLike, device: int = 0) -> Manifest:
    """Give an engine built elsewhere (e.g. ``trtexec --onnx=model.onnx --saveEngine=model.engine``) the manifest
    of the ONNX it was built from, after checking that this TensorRT opens it and that its I/O match.

    Args:
        engine_path: the engine file.
        manifest_source: the ONNX (its sidecar or embedded manifest is used) or the ``.json`` manifest itself.
        device: CUDA device index (the GPU the engine is recorded for).

    Returns:
        The engine manifest written beside it.
    """
    engine = Path(engine_path)
    source = Path(manifest_source)
    if engine.suffix.lower() not in ENGINE_SUFFIXES or not engine.is_file():
        raise InputError(f"{engine} is not an engine file ({' / '.join(ENGINE_SUFFIXES)}) that exists")
    if not source.is_file():
        raise InputError(f"manifest source {source} does not exist; pass the .onnx the engine was built from")
    if source.suffix.lower() == ".json":
        manifest = Manifest.from_json(source.read_text(encoding="utf-8"), source=str(source))
    else:
        manifest = read_manifest(source)
    if manifest.tensorrt:
        raise InputError(f"{source} is an engine's manifest; pass the ONNX (or its .json) the engine was built from")
    trt = import_tensorrt()
    system = system_check(trt, device)
    data = engine.read_bytes()
    runtime = trt.Runtime(_make_logger(trt))
    eng = runtime.deserialize_cuda_engine(data)
    if eng is None:
        raise ModelError(
            f"TensorRT {system['version']} cannot open {engine} ({len(data)} bytes): built with another TensorRT "
            f"version or GPU, or not an engine; build it here: lcr-sdk export {manifest.model_file or 'model.onnx'} "
            f"--trt --out {engine.name}"
        )
    names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
    inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if inputs != [manifest.input.name] or sorted(outputs) != sorted(manifest.output_names):
        raise ModelError(
            f"{engine} has inputs {inputs} and outputs {outputs}, the manifest of {source} declares "
            f"{[manifest.input.name]} and {manifest.output_names}: it was built from another model"
        )
    lo, _, hi = eng.get_tensor_profile_shape(manifest.input.name, 0)
    bmin, bmax = max(manifest.batch_min, int(lo[0])), min(manifest.batch_max, int(hi[0]))
    if bmin > bmax:
        raise ModelError(f"{engine}'s profile batch {lo[0]}..{hi[0]} does not overlap the model's batch range")
    manifest = replace(manifest, batch_min=bmin, batch_max=bmax, batch_opt=min(max(manifest.batch_opt, bmin), bmax))
    level = getattr(eng, "hardware_compatibility_level", HW_NONE)  # trtexec --hardwareCompatibilityLevel
    built = engine_manifest(manifest, engine.name, hashlib.sha256(data).hexdigest(), system, source, level)
    write_sidecar(built, engine)
    return built


def _cache_file(timing_cache: str | os.PathLike | None, system: dict[str, Any]) -> Path | None:
    if timing_cache is None:
        return None
    if str(timing_cache) == "default":
        return timing_cache_path(system["version"], system["compute_capability"])
    path = Path(timing_cache)
    if path.is_dir():
        return timing_cache_path(system["version"], system["compute_capability"], path)
    return path


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    """Attach a timing cache (the file's, or a new one); a cache TensorRT refuses is reported and replaced."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT rejected the timing cache %s (another TensorRT or GPU?); starting a new one", path)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("TensorRT could not create a timing cache; building without one")
            return None
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    from lcr_sdk.fileio import atomic_write_bytes

    cache = config.get_timing_cache()
    if cache is None:  # the builder kept none: nothing to write
        log.warning("TensorRT returned no timing cache after the build; %s was not updated", path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, bytes(cache.serialize()))
    except (OSError, InputError) as e:  # a cache that cannot be written only costs time next build
        log.warning("could not write the timing cache %s (%s)", path, e)


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards warnings to :mod:`logging` and keeps errors (for the one-line error)."""

    class Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)

    return Logger()


class _Progress:
    """While building, a progress line (stderr) with the current builder phase and the elapsed time."""

    def __init__(self, trt: Any, config: Any, enabled: bool = True):
        self.enabled, self.phase, self.start = enabled, "building", time.monotonic()
        self._stop = threading.Event()
        if enabled:
            progress = self

            class Monitor(trt.IProgressMonitor):  # type: ignore[misc]
                def __init__(self) -> None:
                    trt.IProgressMonitor.__init__(self)

                def phase_start(self, phase_name: str, parent_phase: Any, num_steps: int) -> None:
                    progress.phase = phase_name

                def step_complete(self, phase_name: str, step: int) -> bool:
                    return True  # never cancel

                def phase_finish(self, phase_name: str) -> None:
                    pass

            self.monitor = Monitor()  # keep a reference: TensorRT does not own it
            config.progress_monitor = self.monitor

    def _tick(self) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        with tqdm(desc="TensorRT build", bar_format="{desc}: {postfix} {elapsed}", leave=False) as bar:
            while not self._stop.wait(1.0):
                bar.set_postfix_str(self.phase[:50])
                bar.update(0)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.thread = threading.Thread(target=self._tick, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.enabled:
            self.thread.join()
            log.info("TensorRT build finished in %.0f s", time.monotonic() - self.start)
