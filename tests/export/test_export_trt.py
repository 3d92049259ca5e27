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
