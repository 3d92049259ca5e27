"""TensorRT engine building (runs wherever `import tensorrt` works and a CUDA GPU is present; skipped elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcr_sdk.errors import MissingDependencyError, ModelError

pytestmark = pytest.mark.torch


def _trt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_trt_importable(), reason="TensorRT is importable here")
def test_missing_tensorrt_says_how_to_get_it(lcr_checkpoint, tmp_path):
    from lcr_sdk.export.trt import build_engine
    from lcr_sdk.manifest import InputSpec, Manifest

    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64))
    with pytest.raises(MissingDependencyError, match=r"JetPack.*pip install 'lcr-sdk\[trt-cu12\]'"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", m)
    assert not (tmp_path / "m.engine").exists()


@pytest.fixture(scope="module")
def engine(lcr_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    from lcr_sdk.export import export_model

    folder = tmp_path_factory.mktemp("trt")
    cache = folder / "timing.cache"
    path = export_model(
        lcr_checkpoint,
        folder / "lcr.engine",
        trt=True,
        batch=(1, 4, 8),
        workspace_gib=1.0,
        timing_cache=cache,
        verify=False,
        progress=False,
        log=None,
    )
    return path, cache


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_engine_is_raw_with_sidecar_and_onnx_beside(engine):
    import tensorrt as trt

    path, cache = engine
    data = path.read_bytes()
    assert not data.startswith(b"{")  # raw serialized engine, no header
    manifest = json.loads((path.parent / "lcr.engine.json").read_text())
    assert manifest["tensorrt"]["version"] == trt.__version__
    assert manifest["tensorrt"]["gpu"] and manifest["tensorrt"]["compute_capability"]
    assert (path.parent / "lcr.onnx").is_file() and (path.parent / "lcr.onnx.json").is_file()
    assert cache.is_file() and cache.stat().st_size > 0
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    eng = runtime.deserialize_cuda_engine(data)
    names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
    assert names == ["images", "embedding", "attention", "parts"]
    assert tuple(eng.get_tensor_profile_shape("images", 0)[2]) == (8, 64, 64, 3)


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_engine_matches_pytorch(engine, lcr_checkpoint, synth_root):
    from lcr_sdk.export import verify_model

    report = verify_model(engine[0], lcr_checkpoint, synth_root / "test", progress=False)
    assert report["passed"], report


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_parser_error_names_the_failing_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from lcr_sdk.export.trt import build_engine
    from lcr_sdk.manifest import InputSpec, Manifest

    node = helper.make_node("NoSuchOp", ["images"], ["embedding"], name="bad_node", domain="lcr.test")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 64, 64, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("lcr.test", 1)]),
        str(tmp_path / "bad.onnx"),
    )
    m = Manifest("resnet18", "lcr", 512, 8, (2, 2), InputSpec(64, 64), batch_opt=1, batch_max=1)
    with pytest.raises(ModelError, match="bad_node"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.engine", m, timing_cache=None, progress=False)
    assert not (tmp_path / "bad.engine").exists()


# -- the torch-free engine build, with stand-in TensorRT and cuda-python modules -------------------------------------
# TensorRT and a GPU cannot run here, so these tests put small stand-ins for `tensorrt` and `cuda.bindings.runtime`
# first on the path of a child process in which torch and onnx cannot be imported. They record each call, so the
# tests see what the CLI does up to and around the TensorRT calls: the checks before the build, the profile, the
# timing cache file, the engine and its manifest. Real TensorRT runs in the `tensorrt`-marked tests above.

FAKE_TRT = """
import os
__version__ = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
def _log(event):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(event + "\\n")
class ILogger:
    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO = 0, 1, 2, 3
    WARNING = 2
    def __init__(self, *a):
        pass
Logger = ILogger
class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 3
class MemoryPoolType:
    WORKSPACE = 0
class TensorIOMode:
    INPUT, OUTPUT = 0, 1
class IProgressMonitor:
    def __init__(self):
        pass
class _Level:
    def __init__(self, name):
        self.name = name
class HardwareCompatibilityLevel:
    NONE, AMPERE_PLUS = _Level("NONE"), _Level("AMPERE_PLUS")
class _Profile:
    def set_shape(self, name, lo, opt, hi):
        _log(f"profile {name} {lo} {opt} {hi}")
class _Cache:
    def __init__(self, data):
        self.data = data
    def serialize(self):
        return b"CACHE" + self.data
class _Config:
    def __init__(self):
        self.cache, self.progress_monitor = None, None
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
    def set_memory_pool_limit(self, pool, size):
        _log(f"workspace {size}")
    def add_optimization_profile(self, profile):
        pass
    def create_timing_cache(self, data):
        _log(f"timing cache read {len(data)} bytes")
        return _Cache(bytes(data))
    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True
    def get_timing_cache(self):
        return self.cache
class OnnxParser:
    num_errors = 0
    def __init__(self, network, logger):
        pass
    def parse_from_file(self, path):
        _log("parse " + os.path.basename(path))
        return True
class Builder:
    def __init__(self, logger):
        _log("builder")
    def create_network(self, flags):
        _log(f"network flags {flags}")
        return object()
    def create_builder_config(self):
        return _Config()
    def create_optimization_profile(self):
        return _Profile()
    def build_serialized_network(self, network, config):
        _log("build")
        return b"FAKE-ENGINE"
"""

FAKE_CUDART = """
import os
def _log(event):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(event + "\\n")
class _Err(int):
    @property
    def name(self):
        return {0: "cudaSuccess", 35: "cudaErrorInsufficientDriver", 100: "cudaErrorNoDevice"}[int(self)]
class _Props:
    name, major, minor = b"Orin", 8, 7
    multiProcessorCount = int(os.environ.get("FAKE_SM_COUNT", "16"))  # an AGX Orin; an Orin Nano has 8 or 4
    totalGlobalMem = int(os.environ.get("FAKE_MEMORY_MIB", "62841")) << 20
def cudaGetDeviceCount():
    _log("gpu query")
    err = int(os.environ.get("FAKE_CUDA_ERROR", "0"))
    return (_Err(err), 0 if err else 1)
def cudaGetDeviceProperties(device):
    return (_Err(0), _Props())
def cudaSetDevice(device):
    _log(f"set device {device}")
    return (_Err(int(os.environ.get("FAKE_CUDA_ERROR", "0"))),)
"""

NO_TORCH = (
    "import sys\n"
    "for m in ('torch', 'torchvision', 'onnx'):\n"
    "    sys.modules[m] = None  # importing them now fails: the command must not need them\n"
    "sys.argv = ['lcr-sdk'] + sys.argv[1:]\n"
    "from lcr_sdk.cli import main\n"
    "main()\n"
)


def _stand_ins(folder: Path) -> Path:
    site = folder / "stand-ins"
    (site / "tensorrt").mkdir(parents=True)
    (site / "tensorrt" / "__init__.py").write_text(FAKE_TRT)
    (site / "cuda" / "bindings").mkdir(parents=True)
    (site / "cuda" / "__init__.py").write_text("")
    (site / "cuda" / "bindings" / "__init__.py").write_text("")
    (site / "cuda" / "bindings" / "runtime.py").write_text(FAKE_CUDART)
    return site


def _cli(tmp_path: Path, *args, **env):
    import os
    import subprocess
    import sys

    site = _stand_ins(tmp_path) if not (tmp_path / "stand-ins").exists() else tmp_path / "stand-ins"
    log = tmp_path / "calls.log"
    full_env = {**os.environ, "PYTHONPATH": str(site), "FAKE_LOG": str(log), "HOME": str(tmp_path / "home"), **env}
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=300
    )
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return r, calls


@pytest.fixture(scope="module")
def fp16_onnx(lcr_checkpoint, tmp_path_factory) -> Path:
    from lcr_sdk.export import export_model

    return export_model(
        lcr_checkpoint,
        tmp_path_factory.mktemp("fp16") / "lcr-fp16.onnx",
        precision="fp16",
        batch=(1, 4, 8),
        verify=False,
        progress=False,
        log=None,
    )


def test_engine_from_onnx_without_torch(fp16_onnx, tmp_path):
    """`lcr-sdk export model.onnx --trt`: GPU identified before the build, profile from the manifest, the ONNX's
    manifest carried into the engine's sidecar with the TensorRT version, GPU and compute capability."""
    import shutil

    from lcr_sdk.manifest import read_manifest, sidecar_path

    onnx_path = tmp_path / fp16_onnx.name
    shutil.copy(fp16_onnx, onnx_path)
    shutil.copy(sidecar_path(fp16_onnx), sidecar_path(onnx_path))
    out = tmp_path / "lcr-fp16.engine"
    r, calls = _cli(tmp_path, "export", onnx_path, "--trt", "--precision", "fp16", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "TensorRT 10.3.0, Orin, compute capability 8.7" in r.stdout
    assert calls.index("gpu query") < calls.index("builder") < calls.index("build")
    assert "profile images (1, 64, 64, 3) (4, 64, 64, 3) (8, 64, 64, 3)" in calls
    assert "network flags 8" in calls  # 1 << STRONGLY_TYPED
    assert out.read_bytes() == b"FAKE-ENGINE"
    src, eng = read_manifest(onnx_path), read_manifest(out)
    assert eng.tensorrt == {
        "version": "10.3.0",
        "hardware_compatibility": "none",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "sm_count": 16,
        "memory_mib": 62841,
    }  # no "l4t": this machine has no /etc/nv_tegra_release
    assert (eng.precision, eng.input, eng.checkpoint_sha256, eng.batch_max) == (
        src.precision,
        src.input,
        src.checkpoint_sha256,
        src.batch_max,
    )
    assert eng.extra["onnx_file"] == onnx_path.name and eng.extra["onnx_sha256"] == src.model_sha256
    assert eng.model_file == out.name and "previous" not in sidecar_path(out).read_text()
    # the timing cache: one file per TensorRT version and compute capability, read back on the next build
    cache = tmp_path / "home" / ".cache" / "lcr-sdk" / "tensorrt-10.3.0-sm87.cache"
    assert cache.read_bytes() == b"CACHE"
    r, calls = _cli(tmp_path, "export", onnx_path, "--trt", "--out", out)
    assert r.returncode == 0 and "timing cache read 5 bytes" in calls
    r, calls = _cli(tmp_path, "export", onnx_path, "--trt", "--out", out, FAKE_TRT_VERSION="11.4.0.106")
    assert r.returncode == 0 and "timing cache read 0 bytes" in calls
    assert (cache.parent / "tensorrt-11.4.0.106-sm87.cache").is_file()


def test_engine_built_here_goes_into_a_triton_repository(fp16_onnx, tmp_path):
    """`lcr-sdk export model.onnx --trt --triton REPO/`: the engine built here becomes REPO/<name>/1/model.plan, and
    the entry records the TensorRT it was built with."""
    out, repo = tmp_path / "lcr-fp16.engine", tmp_path / "models"
    r, calls = _cli(tmp_path, "export", fp16_onnx, "--trt", "--out", out, "--triton", repo)
    assert r.returncode == 0 and "build" in calls, r.stderr
    entry = repo / "lcr-fp16"
    assert (entry / "1" / "model.plan").read_bytes() == out.read_bytes() == b"FAKE-ENGINE"
    config = (entry / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "# built with TensorRT 10.3.0 on Orin" in config
    assert json.loads((entry / "lcr-sdk.json").read_text())["tensorrt"]["version"] == "10.3.0"


REFUSED_BEFORE_TENSORRT = {
    "onnx without --trt": ([], "pass --trt"),
    "another precision than the graph's": (["--trt", "--precision", "int8"], "is a fp16 graph"),
    "engine output suffix": (["--trt", "--out", "x.onnx"], "must end in .engine"),
    "batch range": (["--trt", "--batch", "8,4,1"], "1 <= MIN <= OPT <= MAX"),
    "workspace": (["--trt", "--workspace", "0"], "workspace 0.0 GiB (--workspace) is not valid"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BEFORE_TENSORRT))
def test_engine_from_onnx_refuses_bad_input_before_tensorrt(case, fp16_onnx, tmp_path):
    args, message = REFUSED_BEFORE_TENSORRT[case]
    r, calls = _cli(tmp_path, "export", fp16_onnx, *args)
    assert r.returncode == 1 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert calls == [], "nothing of TensorRT or CUDA was touched"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FAKE_TRT_VERSION": "8.6.1"}, "TensorRT 8.6.1 is too old"),
        ({"FAKE_CUDA_ERROR": "100"}, "no CUDA GPU is visible"),
        ({"FAKE_CUDA_ERROR": "35"}, "no NVIDIA driver"),  # here libcuda is absent: 35 is what that gives
    ],
)
def test_system_check_fails_before_the_build(env, message, fp16_onnx, tmp_path):
    r, calls = _cli(tmp_path, "export", fp16_onnx, "--trt", "--out", tmp_path / "m.engine", **env)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "build" not in calls and not (tmp_path / "m.engine").exists()


def test_missing_tensorrt_names_jetpack_and_the_extra(fp16_onnx, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "export", str(fp16_onnx), "--trt", "--out", str(tmp_path / "m.engine")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 1 and "JetPack" in r.stderr and "lcr-sdk[trt-cu12]" in r.stderr, r.stderr


def test_foreign_engine_is_refused_with_the_torch_free_rebuild(fp16_onnx, tmp_path):
    """An engine built with TensorRT 10.3 opened under 11.4: refused, naming the build from the ONNX beside it."""
    r, _ = _cli(tmp_path, "export", fp16_onnx, "--trt", "--out", tmp_path / "lcr-fp16.engine")
    assert r.returncode == 0, r.stderr
    r, calls = _cli(tmp_path, "embed", tmp_path / "lcr-fp16.engine", fp16_onnx, FAKE_TRT_VERSION="11.4.0.106")
    assert r.returncode == 1
    assert "built with TensorRT 10.3.0, this is TensorRT 11.4.0.106" in r.stderr
    assert "lcr-sdk export lcr-fp16.onnx --trt --precision fp16 --out lcr-fp16.engine" in r.stderr
    r, _ = _cli(tmp_path, "info", tmp_path / "lcr-fp16.engine", FAKE_TRT_VERSION="11.4.0.106")
    assert r.returncode == 0 and "engine: TensorRT 10.3.0, GPU Orin, compute capability 8.7" in r.stdout
    assert "this machine: TensorRT 11.4.0.106 on Orin (8.7): built with TensorRT 10.3.0" in r.stdout
    # an Orin Nano reports the same name and compute capability: the SM count and memory tell it apart
    r, _ = _cli(tmp_path, "info", tmp_path / "lcr-fp16.engine", FAKE_SM_COUNT="8", FAKE_MEMORY_MIB="7620")
    assert r.returncode == 0 and "tuned on Orin with 16 SMs, this Orin has 8" in r.stdout, r.stdout
