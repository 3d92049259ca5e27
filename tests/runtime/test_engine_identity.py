"""What an engine is tied to, and the errors that name a Jetson's or a driver's fix.

TensorRT, CUDA and a Jetson cannot run here. The policy (:func:`check_engine`) is pure and tested directly; the
Jetson is a fake ``nv_tegra_release`` file, the driver a library name that does or does not load, and TensorRT and
cuda-python are small stand-in objects that answer the few calls made before the real library would be needed.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest

from lcr_sdk.backends import cuda
from lcr_sdk.backends.identity import EngineCheck, check_engine, engine_entry
from lcr_sdk.errors import DeviceError, ModelError

# Real module figures: AGX Orin 64GB 16 SMs, Orin Nano 8GB 8 SMs; both report "Orin", compute capability 8.7.
AGX = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "sm_count": 16, "memory_mib": 62841}
NANO = {**AGX, "sm_count": 8, "memory_mib": 7620}
RELEASE_36_4 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024\n"
RELEASE_36_3 = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 2024\n"


def test_the_same_machine_passes_and_build_numbers_may_differ():
    assert check_engine(dict(AGX), AGX).ok
    assert check_engine({**AGX, "version": "10.3.0.26", "hardware_compatibility": "none"}, AGX).ok


def test_agx_orin_engine_on_an_orin_nano_runs_with_a_warning():
    """Same name and compute capability, so TensorRT accepts it; the SM count and memory tell the modules apart."""
    verdict = check_engine(AGX, NANO)
    assert verdict.refuse == []
    text = " ".join(verdict.warn)
    assert "16 SMs" in text and "has 8" in text and "62841 MiB" in text and "7620 MiB" in text


def test_memory_alone_tells_two_modules_with_the_same_sm_count_apart():
    nx16 = {**AGX, "sm_count": 8, "memory_mib": 15656}
    verdict = check_engine(nx16, NANO)
    assert verdict.refuse == [] and len(verdict.warn) == 1 and "15656 MiB" in verdict.warn[0]
    assert check_engine(nx16, {**nx16, "memory_mib": 15400}).ok  # within the drivers' reserve: the same module


@pytest.mark.parametrize(
    "built, running, refused",
    [
        ({**AGX, "version": "11.4.0.106"}, AGX, "built with TensorRT 11.4.0.106, this is TensorRT 10.3.0"),
        ({**AGX, "gpu": "NVIDIA H100", "compute_capability": "9.0"}, AGX, "built for compute capability 9.0"),
        (  # Ampere+ hardware compatibility stops at Ampere: a Turing GPU cannot run it
            {**AGX, "compute_capability": "8.6", "hardware_compatibility": "ampere_plus"},
            {**AGX, "gpu": "Tesla T4", "compute_capability": "7.5"},
            "needs compute capability 8.0 or newer",
        ),
        (  # an engine built for the same compute capability only is refused on another one
            {**AGX, "compute_capability": "8.6", "hardware_compatibility": "same_compute_capability"},
            AGX,
            "built for compute capability 8.6",
        ),
        (None, AGX, "no 'tensorrt' entry"),
    ],
    ids=["tensorrt version", "compute capability", "ampere+ on turing", "same cc only", "no entry"],
)
def test_what_tensorrt_refuses_is_refused(built, running, refused):
    verdict = check_engine(built, running)
    assert any(refused in r for r in verdict.refuse), verdict


def test_hardware_compatible_engine_runs_on_another_ampere_with_a_warning():
    built = {**AGX, "gpu": "NVIDIA A100", "compute_capability": "8.0", "hardware_compatibility": "ampere_plus"}
    verdict = check_engine(built, AGX)
    assert verdict.refuse == [] and "Ampere+ hardware-compatible" in verdict.warn[0]


def test_another_l4t_release_and_an_older_manifest_are_warned_about():
    verdict = check_engine({**AGX, "l4t": "36.4.0"}, {**AGX, "l4t": "36.4.3"})
    assert verdict.refuse == [] and "built on L4T r36.4.0, this is L4T r36.4.3" in verdict.warn[0]
    old = {k: AGX[k] for k in ("version", "gpu", "compute_capability")}  # written before SMs and memory were kept
    verdict = check_engine(old, NANO)
    assert verdict.refuse == [] and "does not record the SM count" in verdict.warn[0]


def test_engine_entry_records_what_the_check_reads():
    level = types.SimpleNamespace(name="NONE")  # what TensorRT's HardwareCompatibilityLevel.NONE prints as
    entry = engine_entry({**NANO, "l4t": "36.4.0"}, level)
    assert entry == {**NANO, "l4t": "36.4.0", "hardware_compatibility": "none"}
    assert check_engine(entry, {**NANO, "l4t": "36.4.0"}) == EngineCheck()
    assert "l4t" not in engine_entry(AGX)


# -- Jetson detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, release",
    [(RELEASE_36_4, "36.4.0"), (RELEASE_36_3.replace("3.0", "4.3"), "36.4.3"), ("not a release file\n", None)],
)
def test_l4t_release_is_read_from_nv_tegra_release(text, release, tmp_path):
    path = tmp_path / "nv_tegra_release"
    path.write_text(text)
    assert cuda.l4t_release(path) == release
    assert cuda.l4t_release(tmp_path / "absent") is None


def _fake_jetson(monkeypatch, tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "nv_tegra_release"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(cuda, "NV_TEGRA_RELEASE", path)


@pytest.mark.parametrize("jetson", [True, False])
def test_a_missing_cuda_python_names_the_extra_for_the_platform(monkeypatch, tmp_path, jetson):
    """cuda-python blocked (as where it is not installed): a Jetson is told the jetson extra, never trt-cu12 (its
    PyPI TensorRT would shadow JetPack's); a desktop is told trt-cu12."""
    from lcr_sdk.errors import MissingDependencyError

    _fake_jetson(monkeypatch, tmp_path, RELEASE_36_4 if jetson else None)
    for name in ("cuda", "cuda.bindings", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError) as e:
        cuda.cudart()
    msg = str(e.value)
    if jetson:
        assert "lcr-sdk[jetson]" in msg and "never trt-cu12" in msg
    else:
        assert "trt-cu12" in msg and "jetson" not in msg


def test_old_tensorrt_on_a_jetson_names_the_jetpack_upgrade(monkeypatch, tmp_path):
    from lcr_sdk.export.trt import system_check

    _fake_jetson(monkeypatch, tmp_path, RELEASE_36_3)
    with pytest.raises(ModelError) as e:
        system_check(types.SimpleNamespace(__version__="8.6.2"))  # JetPack 6.0's TensorRT
    msg = str(e.value)
    assert "TensorRT 8.6.2 is too old" in msg and "L4T r36.3.0 (JetPack 6.0)" in msg
    assert "JetPack 6.1 or later (L4T r36.4, TensorRT 10.3)" in msg and "pip install" not in msg


def test_old_tensorrt_elsewhere_names_the_pip_extra(monkeypatch, tmp_path):
    from lcr_sdk.export.trt import system_check

    _fake_jetson(monkeypatch, tmp_path, None)
    with pytest.raises(ModelError, match=r"pip install 'lcr-sdk\[trt-cu12\]'") as e:
        system_check(types.SimpleNamespace(__version__="8.6.1"))
    assert "JetPack 6.1 or later" not in str(e.value)


# -- cudaErrorInsufficientDriver: an old driver, or none at all -----------------------------------------------------


class _Err(int):
    """A stand-in for cuda-python's cudaError_t (an int enum with a name)."""

    @property
    def name(self) -> str:
        return {0: "cudaSuccess", 35: "cudaErrorInsufficientDriver"}[int(self)]


def test_no_driver_at_all_says_so(monkeypatch, tmp_path):
    _fake_jetson(monkeypatch, tmp_path, None)
    monkeypatch.setattr(cuda, "LIBCUDA", ("libcuda-absent-for-this-test.so.1",))
    with pytest.raises(DeviceError) as e:
        cuda.check((_Err(35), 0), what="cudaGetDeviceCount")
    msg = str(e.value)
    assert msg.startswith("no NVIDIA driver") and "--gpus all" in msg and "cuda-python" not in msg


def test_no_driver_on_a_jetson_names_jetpack(monkeypatch, tmp_path):
    _fake_jetson(monkeypatch, tmp_path, RELEASE_36_4)
    monkeypatch.setattr(cuda, "LIBCUDA", ("libcuda-absent-for-this-test.so.1",))
    with pytest.raises(DeviceError, match="no NVIDIA driver.*nvidia-jetpack.*--runtime nvidia"):
        cuda.check((_Err(35), 0), what="cudaGetDeviceCount")


def test_a_driver_too_old_for_cuda_python_names_the_cuda_python_to_install(monkeypatch):
    # a library that loads everywhere stands in for the driver's libcuda
    monkeypatch.setattr(cuda, "LIBCUDA", ("libc.so.6",) if sys.platform.startswith("linux") else ("libSystem.dylib",))
    assert cuda.driver_library() is not None
    with pytest.raises(DeviceError, match=r"older than this cuda-python build.*pip install 'cuda-python>=12,<13'"):
        cuda.check((_Err(35), 0), what="cudaGetDeviceCount")


# -- the backend applies the policy ----------------------------------------------------------------------------------


def _stand_in_tensorrt(version: str) -> types.ModuleType:
    """Enough of `tensorrt` for TensorRTBackend.load up to deserializing, which returns None (not an engine)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, *a: object) -> None:
            pass

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> None:
            return None

    trt.Logger, trt.Runtime = Logger, Runtime  # type: ignore[attr-defined]
    return trt


def _stand_in_cudart(props: dict) -> types.SimpleNamespace:
    p = types.SimpleNamespace(
        name=props["gpu"].encode(),
        major=int(props["compute_capability"][0]),
        minor=int(props["compute_capability"][2]),
        multiProcessorCount=props["sm_count"],
        totalGlobalMem=props["memory_mib"] << 20,
    )
    return types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (_Err(0), 1),
        cudaSetDevice=lambda d: (_Err(0),),
        cudaGetDeviceProperties=lambda d: (_Err(0), p),
    )


def _load(monkeypatch, tmp_path: Path, built: dict, running: dict) -> None:
    from lcr_sdk.backends.tensorrt import TensorRTBackend
    from lcr_sdk.manifest import InputSpec, Manifest

    _fake_jetson(monkeypatch, tmp_path, None)
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in_tensorrt(running["version"]))
    monkeypatch.setattr(cuda, "cudart", lambda: _stand_in_cudart(running))
    engine = tmp_path / "lcr-fp16.engine"
    engine.write_bytes(b"not an engine")
    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64), precision="fp16", tensorrt=built)
    m.extra["onnx_file"] = "lcr-fp16.onnx"
    TensorRTBackend(engine, m, device="cuda").load()


REBUILD = "lcr-sdk export lcr-fp16.onnx --trt --precision fp16 --out lcr-fp16.engine"


def test_backend_warns_on_an_engine_tuned_for_another_module(monkeypatch, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match="could not deserialize"):  # the stand-in is no engine: load goes on
            _load(monkeypatch, tmp_path, AGX, NANO)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "16 SMs" in messages[0] and REBUILD in messages[0]


def test_backend_refuses_what_tensorrt_refuses(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="cannot run here: built with TensorRT 10.3.0") as e:
        _load(monkeypatch, tmp_path, AGX, {**NANO, "version": "11.4.0.106"})
    assert REBUILD in str(e.value)
